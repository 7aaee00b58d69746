"""A finished run in miniature, built from small generated files: a release (empty video files, annotation files,
test names and template), its probed video table, visual and audio feature stores with manifests and a trained
final head. Tests of stage 07 and the run folder break it in one way each and check what the kit says."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kitlib import CLASSES, config
from kitlib.store import FeatureStore

TRAIN, VAL, TEST = ("trainA", "trainB", "trainC"), ("valA",), ("testA", "testB")
FRAMES = 40
DIM_V, DIM_A = 6, 4


def make_release(root: Path, rng: np.random.Generator) -> None:
    """Videos (empty files: their facts come from the run's reports/videos.csv), annotations, names, template."""
    (root / "videos").mkdir(parents=True)
    for name in TRAIN + VAL + TEST:
        (root / "videos" / f"{name}.mp4").write_bytes(b"")
    for split, names in (("Train_Set", TRAIN), ("Validation_Set", VAL)):
        folder = root / "annotations" / split
        folder.mkdir(parents=True)
        for name in names:
            labels = rng.integers(0, len(CLASSES), FRAMES)
            (folder / f"{name}.txt").write_text(",".join(CLASSES) + "\n" + "\n".join(map(str, labels)) + "\n")
    (root / "test").mkdir()
    (root / "test" / "names.txt").write_text("\n".join(TEST) + "\n")
    rows = [f"{t}/{f:05d}.jpg" for t in TEST for f in range(1, FRAMES + 1)]
    (root / "test" / "template.txt").write_text("image_location," + ",".join(CLASSES) + "\n" + "\n".join(rows) + "\n")


def run_items(tmp_path: Path, *overrides: str) -> list[str]:
    """The miniature's params as ``python -m kitlib.run`` items (a params file and overrides)."""
    return ["params/tiny.yaml", f"run.outputs_root={tmp_path / 'outputs'}", f"data.root={tmp_path / 'data'}",
            "data.generate_demo=false", "data.cropped_aligned_dir=null", "data.n_folds=2", "data.fold_trials=10",
            "run.device=cpu", "fusion.final_head=gated", "fusion.hidden=8", "fusion.epochs=1",
            "fusion.batch_size=64", "smoothing.final_window=5", *overrides]


def make_run(tmp_path: Path, *overrides: str) -> config.Config:
    """The miniature finished run (stages 01-05 done by hand); ``overrides`` are params overrides."""
    rng = np.random.default_rng(0)
    make_release(tmp_path / "data", rng)
    items = run_items(tmp_path, *overrides)
    cfg = config.load(items[0], overrides=items[1:])
    root = cfg.path(cfg.data.root)
    reports = cfg.run_dir / "reports"
    reports.mkdir(parents=True)
    pd.DataFrame([{"videoid": n, "video": str(root / "videos" / f"{n}.mp4"), "n_frames": FRAMES, "fps": 30.0,
                   "width": 64, "height": 64, "duration_s": FRAMES / 30, "error": ""}
                  for n in TRAIN + VAL + TEST]).to_csv(reports / "videos.csv", index=False)
    for kind, dim in (("visual", DIM_V), ("audio", DIM_A)):
        store = FeatureStore(cfg.run_dir / "features", kind)
        for name in TRAIN + VAL + TEST:
            store.save(name, frame_index=np.arange(1, FRAMES + 1), features=rng.standard_normal((FRAMES, dim)),
                       mask=np.ones(FRAMES, bool))
        store.write_manifest({"feature_dim": dim})
    save_final_head(cfg)
    return cfg


def save_final_head(cfg: config.Config) -> None:
    """A gated head trained one epoch on the miniature's train tracks, saved as stage 05 saves it."""
    from kitlib.fusion import train_head
    from kitlib.stages import common

    index = common.data_index(cfg)
    labels = common.frame_labels(cfg, index)
    table = common.frame_table(cfg, [t for t in index.tracks if t.split == "Train_Set"], labels)
    trained = train_head("gated", table, None, hidden=8, epochs=1, batch_size=64)
    path = cfg.run_dir / "fusion" / "final_head.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"name": "gated", "config": trained.config, "state_dict": trained.module.state_dict(),
                "best_epoch": 1, "best_val_f1": 0.5, "visual_dim": table.visual_dim, "audio_dim": table.audio_dim},
               path)
