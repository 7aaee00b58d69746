"""Scaling out: feature extraction sharded by video, and Stage I under DDP, from one entry point.

    torchrun --nproc-per-node 8 -m kitlib.tools.distributed extract params/abaw10.yaml params/local.yaml --kind visual
    torchrun --nproc-per-node 8 -m kitlib.tools.distributed stage1 params/abaw10.yaml params/local.yaml

Any launcher works that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` (torchrun does; under SLURM ``srun`` the ``SLURM_PROCID`` / ``SLURM_NTASKS`` /
``SLURM_LOCALID`` variables are read when ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` are absent,
and ``MASTER_ADDR`` / ``MASTER_PORT`` must be exported by the job script). Without these variables
the command runs as a single process. Each rank works on ``cuda:LOCAL_RANK`` when CUDA is there.

Extraction (Stage II features, sec. 3.2.1-3.2.2): the videos are split into ``WORLD_SIZE`` shards
by ``shard_videos``: by VIDEO (the ``_left`` / ``_right`` tracks of a video share one decode, so
they stay together), balanced by decoded frame count, deterministic. Rank 0 prepares the run
(params recorded, demo data, video probe, stale partial files of killed writers removed); after a
barrier every rank extracts its shard into the run's one feature store, skipping finished tracks
(files appear only when complete), so a re-run, or a run with another world size, resumes. Each
rank writes its own report and manifest; after a second barrier rank 0 merges them into
``reports/<kind>_extraction.csv`` and ``features/<kind>/manifest.json``. Notebooks 03/04 run
afterwards find every track done and show the merged report.

Stage I (sec. 3.1.2-3.1.3): ``kitlib.visual.stage1.train_stage1`` already runs under DDP when a process
group exists; this entry point creates it (``env://``, nccl on CUDA, gloo on CPU) on every node,
and rank 0 alone writes the backbone.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from kitlib import config, data, runfolder, runtime
from kitlib.stages import common
from kitlib.stages.s02_stage1_train import run_stage1
from kitlib.stages.s03_crop_extract import extract_visual
from kitlib.stages.s04_audio_align import audio_encoder_path, extract_audio
from kitlib.config import Config

log = logging.getLogger(__name__)


KINDS = ("visual", "audio")
EXTRACT_TIMEOUT = timedelta(days=2)  # ranks wait at the barrier while the slowest shard finishes


@dataclasses.dataclass(frozen=True)
class RankInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_from_env(environ: Mapping[str, str] | None = None) -> RankInfo:
    """``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (torchrun and most launchers), else SLURM's
    ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID``, else a single process."""
    env = os.environ if environ is None else environ
    names = [("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")]
    for rank_key, world_key, local_key in names:
        if rank_key in env and world_key in env:
            info = RankInfo(rank=int(env[rank_key]), world_size=int(env[world_key]),
                            local_rank=int(env.get(local_key, env[rank_key])))
            if not 0 <= info.rank < info.world_size or info.local_rank < 0:
                raise ValueError(f"{rank_key}={info.rank}, {world_key}={info.world_size}, "
                                 f"{local_key}={info.local_rank}: the rank must lie in [0, world size)")
            return info
    return RankInfo(rank=0, world_size=1, local_rank=0)


def rank_device(requested: str, info: RankInfo) -> torch.device:
    """``auto`` / ``cuda`` -> ``cuda:LOCAL_RANK`` when CUDA exists (``auto`` falls back to CPU);
    ``cpu`` and an explicit ``cuda:N`` are taken as given."""
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return runtime.pick_device(requested)


def init_group(info: RankInfo, *, backend: str, timeout: timedelta | None = None) -> bool:
    """Join the job's process group (``env://``); False (nothing to do) for a single process."""
    if info.world_size == 1 or (dist.is_available() and dist.is_initialized()):
        return info.world_size > 1
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"world size {info.world_size} but {', '.join(missing)} not set: export the address "
                           f"and a free port of rank 0's node (torchrun sets them; see README, Scaling up)")
    kwargs = {"timeout": timeout} if timeout else {}
    dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size,
                            **kwargs)
    return True


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------------------- sharding
def shard_videos(tracks: Sequence[data.Track], frames_per_video: Mapping[str, int], *,
                 world_size: int) -> list[list[data.Track]]:
    """Split ``tracks`` into ``world_size`` shards of whole videos with balanced frame counts.

    Greedy longest-processing-time: videos by decreasing frame count (video id breaks ties) each go
    to the shard with the fewest frames so far (lowest rank breaks ties). All tracks of a video land
    in one shard, so a two-person video is decoded once. The result depends only on the inputs.
    Frame counts missing from ``frames_per_video`` (an undecodable video) count as 1.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    by_video: dict[str, list[data.Track]] = {}
    for track in tracks:
        by_video.setdefault(track.videoid, []).append(track)
    order = sorted(by_video, key=lambda v: (-max(int(frames_per_video.get(v, 1)), 1), v))
    load = np.zeros(world_size, dtype=np.int64)
    shards: list[list[data.Track]] = [[] for _ in range(world_size)]
    for videoid in order:
        target = int(np.argmin(load))  # first minimum = lowest rank
        shards[target].extend(by_video[videoid])
        load[target] += max(int(frames_per_video.get(videoid, 1)), 1)
    return shards


def shard_table(shards: Sequence[Sequence[data.Track]], frames_per_video: Mapping[str, int]) -> pd.DataFrame:
    """Per rank: videos, tracks and decoded frames of its shard."""
    return pd.DataFrame([{"rank": r, "videos": len({t.videoid for t in shard}), "tracks": len(shard),
                          "frames": sum(int(frames_per_video.get(v, 0)) for v in {t.videoid for t in shard})}
                         for r, shard in enumerate(shards)])


# ---------------------------------------------------------------------------- merging
def merge_manifests(manifests: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One store manifest from the ranks' own: values equal on every rank are kept, per-rank counts
    (dicts of numbers, e.g. status counts) are summed, anything else (the device) is listed per rank."""
    if not manifests:
        raise ValueError("no rank manifests to merge")
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for m in manifests for k in m):
        values = [m.get(key) for m in manifests]
        if all(v == values[0] for v in values):
            merged[key] = values[0]
        elif all(isinstance(v, dict) for v in values):
            numbers = all(isinstance(x, (int, float)) for v in values for x in v.values())
            merged[key] = ({k: sum(v.get(k, 0) for v in values) for k in dict.fromkeys(k for v in values for k in v)}
                           if numbers else merge_manifests(values))
        else:
            merged[key] = {"per_rank": values}
    return merged


def merge_rank_outputs(cfg: Config, kind: str, *, world_size: int) -> pd.DataFrame:
    """Rank 0, after every rank finished: the ranks' reports -> ``reports/<kind>_extraction.csv`` and
    their manifests -> ``features/<kind>/manifest.json``; the per-rank files are then removed."""
    reports = cfg.run_dir / "reports"
    store = common.feature_store(cfg, kind)
    report_paths = [reports / f"{kind}_extraction.rank{r:05d}.csv" for r in range(world_size)]
    manifest_paths = [store.root / f"manifest.rank{r:05d}.json" for r in range(world_size)]
    missing = [str(p) for p in report_paths + manifest_paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{kind} extraction: rank output(s) missing, a rank failed: {', '.join(missing)}")
    table = pd.concat([pd.read_csv(p) for p in report_paths], ignore_index=True)
    merged = common.extraction_report(cfg, f"{kind}_extraction", table)
    manifest = merge_manifests([json.loads(p.read_text()) for p in manifest_paths])
    store.write_manifest({**manifest, "shards": world_size})
    for path in report_paths + manifest_paths:
        path.unlink()
    return merged


# ---------------------------------------------------------------------------- commands
def _prepare_run(cfg: Config, argv: list[str], kinds: Sequence[str]) -> None:
    """Rank 0 before the others start: params, demo data, video probe, encoder, stale partial files."""
    runfolder.prepare_run_dir(cfg, argv=argv)
    common.start(cfg)
    index = common.data_index(cfg)
    common.video_table(cfg, index)
    if "audio" in kinds:
        audio_encoder_path(cfg)
    for kind in kinds:
        removed = common.feature_store(cfg, kind).remove_partial_files()
        if removed:
            log.warning("%s store: removed %d unfinished file(s) left by a killed writer", kind, removed)


def extract(cfg: Config, *, kinds: Sequence[str], info: RankInfo, argv: list[str]) -> dict[str, pd.DataFrame]:
    """This rank's share of the feature extraction; on rank 0 the merged reports (else this rank's)."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown --kind {unknown}; valid: {', '.join(KINDS)}")
    runtime.setup_logging()
    dev = rank_device(cfg.run.device, info)
    init_group(info, backend="gloo", timeout=EXTRACT_TIMEOUT)  # CPU barriers only: no GPU collectives here
    if info.is_main:
        _prepare_run(cfg, argv, kinds)
    barrier()
    runtime.seed_everything(cfg.run.seed)  # same random-init models (demo) on every rank
    index = data.discover(cfg.path(cfg.data.root), videos_dir=cfg.data.videos_dir,
                          annotations_dir=cfg.data.annotations_dir, test_names=cfg.test_names_path())
    videos = common.video_table(cfg, index)  # written by rank 0 above: read here
    frames = dict(zip(videos["videoid"], videos["n_frames"].astype(int)))
    shards = shard_videos(index.tracks, frames, world_size=info.world_size)
    mine = shards[info.rank]
    if info.is_main:
        log.info("shards by video (frames balanced):\n%s", shard_table(shards, frames).to_string(index=False))
    log.info("rank %d/%d on %s: %d tracks of %d videos", info.rank, info.world_size, dev, len(mine),
             len({t.videoid for t in mine}))
    sharded = info.world_size > 1
    extractors = {"visual": extract_visual, "audio": extract_audio}
    out = {}
    for kind in kinds:
        out[kind] = extractors[kind](cfg, index, tracks=mine, rank=info.rank if sharded else None, dev=dev)
        barrier()
        if sharded and info.is_main:
            out[kind] = merge_rank_outputs(cfg, kind, world_size=info.world_size)
    return out


def stage1(cfg: Config, *, info: RankInfo, argv: list[str]) -> dict:
    """Stage I on every rank under DDP (``kitlib.visual.stage1``); rank 0 records the params and saves."""
    runtime.setup_logging()
    dev = rank_device(cfg.run.device, info)
    init_group(info, backend="nccl" if dev.type == "cuda" else "gloo")
    if info.is_main:
        runfolder.prepare_run_dir(cfg, argv=argv)
        common.start(cfg)
    barrier()
    rank_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, device=str(dev)))
    return run_stage1(rank_cfg)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m kitlib.tools.distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("extract", "stage1"))
    parser.add_argument("items", nargs="*", help="params files (layered on params/base.yaml) and key=value overrides")
    parser.add_argument("--kind", nargs="+", default=list(KINDS), choices=KINDS, help="extract: which features")
    args = parser.parse_args(argv)
    cfg = config.load_command_line(args.items)
    if cfg is None:
        return 2
    info = rank_from_env()
    command = ["python", "-m", "kitlib.tools.distributed", *argv]
    try:
        if args.command == "extract":
            extract(cfg, kinds=args.kind, info=info, argv=command)
        else:
            stage1(cfg, info=info, argv=command)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
