"""``abaw-kit export <run folder> --out <bundle>``: a finished run's system as a model bundle.

    python -m kitlib.tools.export outputs/demo --out bundles/demo                  # the final head (gated)
    python -m kitlib.tools.export outputs/abaw10 --out bundles/abaw10 --include-base   # base models copied in

The bundle (``kitlib.inference.bundle``) holds the adapted backbone, the final head with its input
normalisation statistics, and the settings of every step as the run's params gave them; the audio encoder
and the detector's weights are referred to by hub id / file and checksum (``--include-base`` copies them
in; an encoder that is a local folder rather than a hub id is always copied). ``abaw-kit predict`` uses it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from kitlib import config, hub
from kitlib.config import Config
from kitlib.inference.bundle import BASE, FORMAT_VERSION, BundleError, encoder_files, folder_checksums, sha256, write_bundle

SMOOTHING_STRATEGIES = ("mean", "median", "gaussian", "vote")


def run_config(run_dir: Path) -> Config:
    """The params a run folder was made with (its ``params.yaml``)."""
    path = run_dir / "params.yaml"
    if not path.is_file():
        raise BundleError(f"{run_dir}: no params.yaml (not a run folder of kitlib.run)")
    return config.notebook_config(yaml.safe_load(path.read_text()))


def _final_head(run_dir: Path, head: str) -> dict[str, Any]:
    """The run's kept final head (``fusion/final_head.pt``, written by stage 05), checked against ``--head``."""
    path = run_dir / "fusion" / "final_head.pt"
    if not path.is_file():
        raise BundleError(f"{path}: missing (run 05_fusion_ablation first)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if head not in (saved["name"], "final"):
        raise BundleError(f"--head {head}: this run kept only its final head, {saved['name']!r} (fusion.final_head); "
                          f"export that one (--head {saved['name']}) or run stage 05 with fusion.final_head={head}")
    return saved


def _prior_class(cfg: Config, run_dir: Path) -> int:
    """The most frequent valid label of the annotated frames (stage 07's ``prior_class``, the no-evidence
    fallback), read from the release's annotation files fitted to the run's decoded frame counts; nothing is
    written into the run folder."""
    import numpy as np
    import pandas as pd

    from kitlib import NUM_CLASSES, data

    videos = run_dir / "reports" / "videos.csv"
    if not videos.is_file():
        raise BundleError(f"{videos}: missing (the run's probed video table)")
    n_frames = pd.read_csv(videos, keep_default_na=False).set_index("videoid")["n_frames"].to_dict()
    index = data.discover(cfg.path(cfg.data.root), videos_dir=cfg.data.videos_dir,
                          annotations_dir=cfg.data.annotations_dir, test_names=cfg.test_names_path())
    counts = np.zeros(NUM_CLASSES, np.int64)
    for t in index.tracks:
        if t.labels_path is not None and n_frames.get(t.videoid):
            labels, _ = data.align_labels(data.read_labels(t.labels_path), int(n_frames[t.videoid]),
                                          policy=cfg.data.length_policy, name=str(t.labels_path))
            counts += np.bincount(labels[labels >= 0], minlength=NUM_CLASSES)
    if not counts.any():
        raise BundleError(f"no annotated frames under {cfg.path(cfg.data.root)}: the run's release is needed to "
                          f"record the training prior")
    return int(counts.argmax())


def _encoder(cfg: Config, include_base: bool) -> tuple[dict[str, Any], Path | None]:
    """The audio encoder's manifest entry and the folder to copy in (None: referred to by hub id)."""
    value = str(cfg.audio.encoder)
    folder = cfg.path(value)
    if not (folder / "config.json").is_file():
        raise BundleError(f"audio.encoder {value}: no encoder folder at {folder} on this machine")
    hub_id = value if hub.is_hub_id(value) and hub.cached_snapshot(value) is not None else None
    entry = {"hub_id": hub_id, "source": value, "files": folder_checksums(folder, encoder_files(folder)),
             "included": include_base or hub_id is None, "folder": f"{BASE}/audio_encoder",
             "licence": (hub.known(hub_id).licence if hub_id and hub.known(hub_id) else None)}
    return entry, folder if entry["included"] else None


def _detector(cfg: Config, include_base: bool) -> tuple[dict[str, Any], Path | None]:
    """The face detector's manifest entry and the weights file to copy in (None: found where the kit finds it)."""
    f = cfg.faces
    if f.detector == "boxes":
        raise BundleError("faces.detector is 'boxes' (precomputed boxes of the release's videos): a bundle must "
                          "detect faces in new videos; export a run that used a detector")
    weights: Path | None = cfg.path(f.detector_weights) if f.detector_weights else None
    if weights is None and f.detector == "centerface":
        from kitlib.faces.detectors.centerface import centerface_weights

        weights = centerface_weights()
    entry: dict[str, Any] = {"name": f.detector, "max_side": f.detect_max_side, "options": dict(f.detector_options),
                             "licence": {"centerface": "MIT", "opencv-haar": "BSD-3-Clause (OpenCV)",
                                         "scrfd": "InsightFace: non-commercial research",
                                         "face-alignment": "BSD-3-Clause"}.get(f.detector), "included": False}
    if weights is not None and weights.is_file():
        entry |= {"weights": str(weights), "sha256": sha256(weights), "included": include_base,
                  "file": f"{BASE}/detector/{weights.name}"}
    return entry, weights if entry["included"] else None


def manifest_of(cfg: Config, run_dir: Path, saved: dict[str, Any], *, backbone_record: dict[str, Any],
                include_base: bool) -> tuple[dict[str, Any], Path | None, Path | None]:
    """``bundle.json`` (but the checksums and class names) from the run's params and records."""
    from kitlib.stages.s03_crop_extract import _face_args
    from kitlib.stages.s04_audio_align import alignment_windows

    f, v, a, s = cfg.faces, cfg.visual, cfg.audio, cfg.smoothing
    face_args = _face_args(cfg)
    encoder, encoder_source = _encoder(cfg, include_base)
    detector, detector_source = _detector(cfg, include_base)
    provenance = json.loads((run_dir / "provenance.json").read_text()) if (run_dir / "provenance.json").is_file() else {}
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    follow = face_args["follow"]
    config_ = {k: v for k, v in saved["config"].items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}
    manifest = {
        "kit_version": __import__("kitlib").__version__,
        "run": {"name": run_dir.name, "params_digest": cfg.digest(), "commit": provenance.get("git_commit"),
                "dirty": provenance.get("git_dirty"), "headline": summary.get("headline", {})},
        "visual": {"arch": backbone_record.get("arch"), "image_size": cfg.stage1.image_size,
                   "crop_scales": list(face_args["crop_scales"]), "crop_scales_param": list(f.crop_scales),
                   "crop_centre_fraction": f.crop_centre_fraction, "batch_size": v.batch_size, "amp": v.amp,
                   "base_weights": cfg.stage1.weights, "adapted": bool(backbone_record.get("adapted", True))},
        "faces": {"detector": detector, "detect_every": f.detect_every, "max_gap": f.max_gap,
                  "follow": None if follow is None else vars(follow), "decode_batch": f.decode_batch,
                  "default_strategy": f.default_strategy},
        "audio": {"encoder": encoder, "sample_rate": a.sample_rate, "chunk_s": a.chunk_s, "overlap_s": a.overlap_s,
                  "layers": a.layers, "align": a.align, "align_window_s": alignment_windows(cfg)[0],
                  "align_empty": a.align_empty, "frame_time": a.frame_time,
                  "normalize_waveform": a.normalize_waveform, "amp": a.amp},
        "head": {"name": saved["name"], "config": config_, "visual_dim": int(saved["visual_dim"]),
                 "audio_dim": int(saved["audio_dim"]), "best_epoch": int(saved["best_epoch"]),
                 "best_val_f1": float(saved["best_val_f1"]), "missing_frames": cfg.fusion.missing_frames},
        "smoothing": {"strategy": s.final_strategy, "window": s.final_window, "edge": s.final_edge,
                      "sigma_divisor": s.gaussian_sigma_divisor},
        "prior_class": _prior_class(cfg, run_dir),
    }
    if cfg.submission.ensemble_folds:
        manifest["note"] = ("the run's submission averaged fold models (submission.ensemble_folds); stage 07 does "
                            "not keep them, so this bundle holds the final head alone")
    return manifest, encoder_source, detector_source


def model_card(manifest: dict[str, Any], cfg: Config) -> str:
    """The bundle's README.md: what it is, what it was trained on, its scores, its models' licences, how to use it."""
    h = manifest["run"]["headline"]
    enc, det, vis = manifest["audio"]["encoder"], manifest["faces"]["detector"], manifest["visual"]

    def score(key: str) -> str:
        value = h.get(key)
        return "-" if value is None else f"{value:.3f}"

    base = vis["base_weights"] or f"random init ({vis['arch']}, the demo's stand-in)"
    base_licence = hub.known(vis["base_weights"]).licence if vis["base_weights"] and hub.known(vis["base_weights"]) \
        else ("-" if not vis["base_weights"] else "see the model's page")
    return f"""# {manifest['run']['name']}: frame-level expression recognition (ABAW EXPR, 8 classes)

Exported by `abaw-kit export` (bundle format {FORMAT_VERSION}, kit {manifest['kit_version']}) from run
`{manifest['run']['name']}` (params digest `{manifest['run']['params_digest']}`, commit `{manifest['run']['commit']}`).

Classes: {', '.join(__import__('kitlib').CLASSES)}.

## What it is
- faces: {det['name']} (detect_every {manifest['faces']['detect_every']}: the frames between are tracked), crops at scales
  {vis['crop_scales']} of the box, {vis['image_size']} px
- visual backbone: {vis['arch']} from {base}, {'adapted by Stage I' if vis['adapted'] else 'not adapted'}
- audio: {enc['hub_id'] or enc['source']} (layers {manifest['audio']['layers']}), aligned to frames by
  {manifest['audio']['align']} ({manifest['audio']['align_window_s']} s)
- fusion head: {manifest['head']['name']}; smoothing: {manifest['smoothing']['strategy']} over
  {manifest['smoothing']['window']} frames
- trained on: the data of `data.root` = `{cfg.data.root}` ({'the embedded demo' if cfg.data.generate_demo else 'Aff-Wild2 EXPR'}){'' if not manifest.get('note') else chr(10) + '- note: ' + manifest['note']}

## Scores (from the run's summary)
| | macro F1 |
| --- | --- |
| official validation, single frame | {score('official_val_f1')} |
| official validation, after {h.get('smoothing', '-')} smoothing | {score('smoothed_official_val_f1')} |
| {cfg.data.n_folds}-fold cross-validation (mean ± std) | {score('cv_mean_f1')} ± {score('cv_std_f1')} |
| {cfg.data.n_folds}-fold, after smoothing | {score('smoothed_cv_mean_f1')} |

## Models inside, and their licences
| part | from | licence | in the bundle |
| --- | --- | --- | --- |
| visual backbone | {base} | {base_licence} | backbone.safetensors (adapted weights) |
| audio encoder | {enc['hub_id'] or enc['source']} | {enc['licence'] or '-'} | {'base/audio_encoder/' if enc['included'] else 'no: found in the Hugging Face cache by hub id, checked by checksum'} |
| face detector | {det['name']} | {det['licence'] or '-'} | {det.get('file') if det['included'] else 'no: found where the kit finds it, checked by checksum'} |
| fusion head | this run | as the kit | head.safetensors |

## Predict
```bash
abaw-kit predict <this folder> video.mp4 more_videos/ --out predictions/ [--overlay] [--face largest]
```
```python
from kitlib.inference import Predictor
frames = Predictor.from_bundle("<this folder>").predict("video.mp4")   # a pandas DataFrame, one row per frame
```
"""


def export(run_dir: Path, out: Path, *, head: str = "final", include_base: bool = False) -> Path:
    """Write the bundle of ``run_dir`` into ``out``; returns ``out``."""
    from kitlib.stages.s02_stage1_train import pretrained_backbone
    from kitlib.visual.backbones import load_backbone

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    saved = _final_head(run_dir, head)
    checkpoint = cfg.path(cfg.stage1.checkpoint) if cfg.stage1.checkpoint else run_dir / "stage1" / "backbone.safetensors"
    if checkpoint.is_file():
        backbone, record = load_backbone(checkpoint, device="cpu")
    elif cfg.stage1.train:
        raise BundleError(f"{checkpoint}: missing (run 02_stage1_train first)")
    else:
        backbone, record = pretrained_backbone(cfg), {"arch": cfg.stage1.arch, "weights": cfg.stage1.weights,
                                                      "adapted": False}
    manifest, encoder_source, detector_source = manifest_of(cfg, run_dir, saved, backbone_record=record,
                                                            include_base=include_base)
    return write_bundle(out, manifest, backbone=backbone, backbone_record={**record, "exported_from": str(run_dir)},
                        head_state=saved["state_dict"], encoder_source=encoder_source,
                        detector_source=detector_source, card=model_card(manifest, cfg))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="abaw-kit export", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run folder (outputs/<run.name>)")
    parser.add_argument("--out", type=Path, required=True, help="the bundle folder to write (must not exist)")
    parser.add_argument("--head", default="final", help="the head to export: the run's final head "
                                                        "(fusion.final_head, e.g. gated; 'final' = whichever it is)")
    parser.add_argument("--include-base", action="store_true",
                        help="copy the audio encoder and the detector's weights in (for an offline machine)")
    args = parser.parse_args(argv)
    try:
        out = export(args.run_dir, args.out, head=args.head, include_base=args.include_base)
    except (BundleError, config.ConfigError, FileNotFoundError) as err:
        print(f"export: {err}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"bundle written: {out} ({size / 1e6:.1f} MB); predict with: abaw-kit predict {out} <videos...> --out <dir>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
