"""Sharded extraction (kitlib.tools.distributed): shard assignment, manifest merging, and two gloo ranks
extracting the tiny demo into one store, re-run, resumed after a killed writer."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kitlib import config, data
from kitlib.stages import common
from kitlib.stages.s02_stage1_train import backbone_path
from kitlib.tools import distributed
from kitlib.tools.distributed import RankInfo, merge_manifests, rank_from_env, shard_videos

REPO = Path(__file__).resolve().parents[1]


def _track(txtid: str) -> data.Track:
    videoid, side = data.videoid_of(txtid)
    return data.Track(txtid=txtid, videoid=videoid, split="Train_Set", video_path=Path(f"{videoid}.mp4"),
                      labels_path=None, side=side)


def test_shard_videos_keeps_videos_whole_balanced_and_deterministic():
    frames = {"a": 900, "b": 800, "c": 500, "d": 400, "e": 300, "f": 100, "g": 0}
    tracks = [_track(t) for t in ("a", "b_left", "b_right", "c", "d", "e", "f", "g")]
    shards = shard_videos(tracks, frames, world_size=2)
    assert sorted(t.txtid for s in shards for t in s) == sorted(t.txtid for t in tracks)   # each track once
    where = {t.txtid: r for r, s in enumerate(shards) for t in s}
    assert where["b_left"] == where["b_right"]                                                # one video, one shard
    load = [sum(frames[v] for v in {t.videoid for t in s}) for s in shards]
    assert load == [1600, 1400]                          # greedy LPT: a 900 | b 800, c 500 -> 1300 | d 400, e 300 ...
    assert max(load) <= 4 / 3 * sum(frames.values()) / 2                                    # LPT bound
    again = shard_videos(tracks[::-1], frames, world_size=2)                                 # input order irrelevant
    assert [sorted(t.txtid for t in s) for s in again] == [sorted(t.txtid for t in s) for s in shards]
    assert shard_videos(tracks, frames, world_size=1) == [tracks]
    assert sum(len(s) == 0 for s in shard_videos(tracks[:1], frames, world_size=3)) == 2     # more ranks than videos
    with pytest.raises(ValueError, match="world_size"):
        shard_videos(tracks, frames, world_size=0)


def test_rank_from_env_torchrun_slurm_and_single():
    assert rank_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == RankInfo(3, 8, 1)
    assert rank_from_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5"}) == RankInfo(5, 16, 5)
    assert rank_from_env({}) == RankInfo(0, 1, 0)
    with pytest.raises(ValueError, match="rank must lie"):
        rank_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_merge_manifests_keeps_common_sums_counts_lists_the_rest():
    ranks = [{"dim": 8, "audio": {"device": "cuda:0", "sr": 16000}, "audio_status_counts": {"ok": 3}},
             {"dim": 8, "audio": {"device": "cuda:1", "sr": 16000}, "audio_status_counts": {"ok": 2, "no audio": 1}}]
    merged = merge_manifests(ranks)
    assert merged["dim"] == 8 and merged["audio"]["sr"] == 16000
    assert merged["audio"]["device"] == {"per_rank": ["cuda:0", "cuda:1"]}
    assert merged["audio_status_counts"] == {"ok": 5, "no audio": 1}


def _overrides(tmp_path: Path) -> list[str]:
    """The tiny demo, smaller still, with the demo's true face boxes as the detector (fast on 2 cores)."""
    return [f"data.root={tmp_path / 'data'}", f"run.outputs_root={tmp_path / 'out'}", "stage1.train=false",
            f"audio.encoder={tmp_path / 'data' / 'models' / 'wav2vec2-tiny'}", "demo.n_train=2", "demo.n_val=1",
            "demo.n_test=1", "demo.seconds=[2.0, 3.0]", "audio.ablation_windows_total_s=[]",
            "faces.detector=boxes", f"faces.boxes_file={tmp_path / 'boxes.csv'}"]


def _demo_with_boxes(cfg: config.Config, tmp_path: Path) -> None:
    """Generate the demo and write its true face boxes in the ``boxes`` detector's CSV format."""
    common.ensure_demo(cfg)
    parts = []
    for path in sorted(cfg.data_path("truth").glob("*.npz")):
        with np.load(path) as truth:
            boxes = truth["boxes"]
        seen = np.flatnonzero(np.isfinite(boxes[:, 0]))
        parts.append(pd.DataFrame({"videoid": data.videoid_of(path.stem)[0], "frame": seen + 1, "x1": boxes[seen, 0],
                                   "y1": boxes[seen, 1], "x2": boxes[seen, 2], "y2": boxes[seen, 3], "score": 1.0}))
    pd.concat(parts).to_csv(tmp_path / "boxes.csv", index=False)


def _launch_two_ranks(tmp_path: Path, port: int) -> None:
    """Two ranks of ``python -m kitlib.tools.distributed extract`` with the variables any launcher sets."""
    args = [sys.executable, "-m", "kitlib.tools.distributed", "extract", "params/demo.yaml", "params/tiny.yaml",
            *_overrides(tmp_path), "--kind", "visual", "audio"]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{out[-3000:]}"


@pytest.mark.slow
def test_two_gloo_ranks_extract_each_track_once_rerun_skips_and_partial_files_are_redone(tmp_path):
    port = 29600 + os.getpid() % 300
    cfg = config.load("params/demo.yaml", "params/tiny.yaml", overrides=_overrides(tmp_path))
    _demo_with_boxes(cfg, tmp_path)
    _launch_two_ranks(tmp_path, port)
    index = data.discover(cfg.path(cfg.data.root), videos_dir=cfg.data.videos_dir,
                          annotations_dir=cfg.data.annotations_dir, test_names=cfg.data.test_names)
    txtids = sorted(t.txtid for t in index.tracks)
    assert any(t.side for t in index.tracks)                              # the two-person video is in there
    for kind in ("visual", "audio"):
        store = common.feature_store(cfg, kind)
        assert store.keys() == txtids
        merged = pd.read_csv(cfg.run_dir / "reports" / f"{kind}_extraction.csv")
        assert sorted(merged["txtid"]) == txtids                          # each track done exactly once
        assert not merged["status"].str.startswith("error").any()
        assert not merged["status"].isin(common.RESUMED_STATUSES).any()
        manifest = store.read_manifest()
        assert manifest["shards"] == 2 and manifest["params_digest"] == cfg.digest()
        assert not list(store.root.glob("manifest.rank*")) and not list(cfg.run_dir.glob("reports/*.rank*"))
    audio_manifest = common.feature_store(cfg, "audio").read_manifest()
    assert sum(audio_manifest["audio_status_counts"].values()) == len(txtids)

    stamps = {p: p.stat().st_mtime_ns for p in (cfg.run_dir / "features").rglob("*.npz")}
    _launch_two_ranks(tmp_path, port + 1)                                  # a re-run writes no feature file
    assert {p: p.stat().st_mtime_ns for p in (cfg.run_dir / "features").rglob("*.npz")} == stamps

    # a rank killed while writing leaves only a partial file: not done, redone by the next run
    # (here a single process: re-sharding to another world size resumes the same store)
    store = common.feature_store(cfg, "visual")
    victim = txtids[0]
    store.path(victim).unlink()
    (store.root / f".{victim}.npz.k1ll3d.partial").write_bytes(b"PK\x03\x04 truncated")
    assert not store.done(victim) and victim not in store.keys()
    tables = distributed.extract(cfg, kinds=["visual"], info=RankInfo(0, 1, 0), argv=["test"])
    assert store.done(victim) and not store.partial_files()
    assert {p: p.stat().st_mtime_ns for p in store.root.glob("*.npz") if p.stem != victim} == \
        {p: t for p, t in stamps.items() if p.parent == store.root and p.stem != victim}
    table = tables["visual"].set_index("txtid")
    assert table.loc[victim, "status"] in ("ok", "no face")
    # what notebook 03 shows afterwards: every row with its frame counts, none lost to the skips
    assert table["frames"].notna().all() and (table["frames"] > 0).all()
    np.testing.assert_array_equal(store.load(victim)["frame_index"], np.arange(1, int(table.loc[victim, "frames"]) + 1))


@pytest.mark.slow
def test_two_gloo_ranks_train_stage1_and_only_rank0_saves(tmp_path):
    """``python -m kitlib.tools.distributed stage1`` as torchrun would start it: one DDP run over two ranks."""
    from kitlib.visual.backbones import read_record

    port = 29900 + os.getpid() % 90
    overrides = [f"data.root={tmp_path / 'data'}", f"run.outputs_root={tmp_path / 'out'}", "stage1.epochs=1",
                 "stage1.batch_size=8", "stage1.max_steps_per_epoch=2", "demo.n_train=2", "demo.n_val=1",
                 "demo.n_test=1", "demo.seconds=[2.0, 3.0]"]
    cfg = config.load("params/demo.yaml", "params/tiny.yaml", overrides=overrides)
    common.ensure_demo(cfg)                      # as a job script would, before the ranks start
    args = [sys.executable, "-m", "kitlib.tools.distributed", "stage1", "params/demo.yaml", "params/tiny.yaml", *overrides]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{out[-3000:]}"
    backbone = backbone_path(cfg)
    record = read_record(backbone)
    assert record["params"]["world_size"] == 2 and record["best_epoch"] == 1
    assert sorted(p.name for p in backbone.parent.iterdir()) == ["backbone.safetensors", "backbone.safetensors.json"]
    assert "saved" in outputs[0] and "saved" not in outputs[1]                  # rank 0 alone writes
    assert (cfg.run_dir / "params.yaml").is_file()                              # the run folder is recorded
