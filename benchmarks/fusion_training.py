"""Stage II fusion at the release's size: feature loading in RAM vs memory-mapped, and one epoch of the gated head.

Seed 000 sec. 3.2.3 (gated fusion, eqs. 9-12). A synthetic feature store with the REAL track names
and lengths of the Train+Validation annotation files (``expr_cv5_folds.csv``: 317 tracks,
~1.56 M frames) and the real feature sizes (visual 1024 + audio 1024, float16; 6.4 GB) is written
once to ``--workdir`` (reused by later runs). Then, each in a fresh process so that peaks are its own:

* ``ram`` (the straightforward baseline): ``load_frame_table`` stacks every file into RAM
* ``memmap`` (the kit's default, ``fusion.memmap_features``): one memory-mapped ``.npy`` per modality
  (``kitlib.store.consolidate``, built once per store contents: its build time is printed apart)
  and row views for the tables and their batches

each loading the Train_Set and Validation_Set tables as ``pipeline.fusion_ablation`` does (plus the
Train+Validation pool for cross-validation with ``--pool``) and training the gated head for
``--epochs`` epoch(s) with validation after each. Printed per mode: load seconds, seconds per epoch,
frames/s, and peak host memory (anonymous = arrays held; mapped files = page cache of the memory
map, reclaimable) and peak GPU memory on CUDA. Labels are drawn with each track's real class
histogram; features are noise (speed and memory do not depend on their values).

    .venv/bin/python benchmarks/fusion_training.py                    # --size small: every track at 1/10 length
    .venv/bin/python benchmarks/fusion_training.py --size real        # ~13 GB of disk in --workdir
    .venv/bin/python benchmarks/fusion_training.py --size real --device cuda --pool
"""
from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import PeakMemory, machine_line  # noqa: E402

from kitlib import NUM_CLASSES  # noqa: E402
from kitlib.data import Track  # noqa: E402
from kitlib.fusion import load_frame_table, train_head  # noqa: E402
from kitlib.runtime import pick_device  # noqa: E402
from kitlib.store import FeatureStore, consolidate  # noqa: E402

DEFAULT_METADATA = Path(__file__).resolve().parents[2] / "shared" / "abaw10-metadata"
SIZES = {"small": 10, "real": 1}  # every track's length is divided by this


def write_store(root: Path, meta: pd.DataFrame, *, shrink: int, dim: int, seed: int = 0) -> None:
    """Synthetic visual + audio stores and labels with the real tracks; skipped when complete."""
    done = root / "complete.txt"
    if done.is_file():
        return
    rng = np.random.default_rng(seed)
    stores = [FeatureStore(root, "visual"), FeatureStore(root, "audio")]
    labels = {}
    for row in tqdm(list(meta.itertuples(index=False)), desc="write synthetic store", unit="track"):
        n = max(int(row.total_frames_in_txt) // shrink, 1)
        counts = np.array([row.invalid_frames, *(getattr(row, f"class_{c}") for c in range(NUM_CLASSES))], float)
        labels[row.txtid] = rng.choice(np.arange(-1, NUM_CLASSES), size=n, p=counts / counts.sum()).astype(np.int8)
        for store in stores:
            if not store.done(row.txtid):
                store.save(row.txtid, frame_index=np.arange(1, n + 1), mask=rng.random(n) > 0.1,
                           features=rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16))
    np.savez(root / "labels.npz", **labels)
    done.write_text("ok\n")


def tracks_of(meta: pd.DataFrame, split: str) -> list[Track]:
    rows = meta[meta["source_dir"] == split]
    return [Track(txtid=t, videoid=v, split=split, video_path=Path(f"{v}.mp4"), labels_path=Path(f"{t}.txt"),
                  side=None) for t, v in zip(rows["txtid"], rows["videoid"])]


def run_mode(args: argparse.Namespace, meta: pd.DataFrame, root: Path) -> None:
    """One mode in this (fresh) process: load the tables, train, print the figures."""
    device = pick_device(args.device)
    with np.load(root / "labels.npz") as f:
        labels = {k: f[k].astype(np.int64) for k in f.files}
    stores = dict(visual_store=FeatureStore(root, "visual"), audio_store=FeatureStore(root, "audio"))
    memmap = args.mode == "memmap"
    if memmap:  # the one-off cache build, timed apart (a real run builds it once per extraction)
        tic = time.perf_counter()
        for store in stores.values():
            consolidate(store)
        print(f"  memmap: consolidated cache ready in {time.perf_counter() - tic:.1f} s "
              f"({sum(p.stat().st_size for p in root.rglob('consolidated/*.npy')) / 2**30:.2f} GiB on disk)")
    with PeakMemory(device=device) as peak:
        tic = time.perf_counter()
        train = load_frame_table(tracks_of(meta, "Train_Set"), labels=labels, memmap=memmap, **stores)
        val = load_frame_table(tracks_of(meta, "Validation_Set"), labels=labels, memmap=memmap, **stores)
        pool = load_frame_table(tracks_of(meta, "Train_Set") + tracks_of(meta, "Validation_Set"), labels=labels,
                                memmap=memmap, **stores) if args.pool else None
        load_s = time.perf_counter() - tic
        tic = time.perf_counter()
        trained = train_head("gated", train, val, hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
                             patience=args.epochs, device=device)
        train_s = time.perf_counter() - tic
    n_train = int((train.labels >= 0).sum())
    tables = f"train {len(train):,} + val {len(val):,}" + (f" + pool {len(pool):,}" if pool is not None else "")
    print(f"  {args.mode:6s}: load {load_s:6.1f} s ({tables} frames); gated head (hidden {args.hidden}, batch "
          f"{args.batch_size}, {device}): {train_s / args.epochs:6.1f} s/epoch incl. validation = "
          f"{n_train * args.epochs / train_s:,.0f} labelled frames/s; val F1 {trained.best_val_f1:.3f} (noise)")
    print(f"  {args.mode:6s}: {peak.summary()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="real = the full release length")
    parser.add_argument("--dim", type=int, default=1024, help="feature size of each modality")
    parser.add_argument("--workdir", type=Path, default=None, help="default /tmp/fusion_bench_<size>")
    parser.add_argument("--metadata", type=Path, default=DEFAULT_METADATA)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--pool", action="store_true", help="also load the Train+Validation CV pool table")
    parser.add_argument("--mode", choices=("both", "ram", "memmap"), default="both")
    parser.add_argument("--clean", action="store_true", help="delete --workdir at the end")
    args, _ = parser.parse_known_args()
    logging.basicConfig(level=logging.WARNING)

    meta = pd.read_csv(args.metadata / "expr_cv5_folds.csv")
    root = args.workdir or Path(f"/tmp/fusion_bench_{args.size}_{args.dim}")
    if args.mode != "both":
        run_mode(args, meta, root)
        return
    print(machine_line(args.device if args.device != "cpu" else None))
    frames = int((meta["total_frames_in_txt"] // SIZES[args.size]).clip(lower=1).sum())
    gib = frames * args.dim * 2 * 2 / 2**30
    print(f"size {args.size}: {len(meta)} tracks, {frames:,} frames x (visual {args.dim} + audio {args.dim}) "
          f"float16 = {gib:.2f} GiB of features; store in {root}")
    tic = time.perf_counter()
    write_store(root, meta, shrink=SIZES[args.size], dim=args.dim)
    print(f"synthetic store ready ({time.perf_counter() - tic:.0f} s)")
    for mode in ("ram", "memmap"):  # the baseline first, each in a fresh process
        command = [sys.executable, __file__, *sys.argv[1:], "--mode", mode, "--workdir", str(root)]
        subprocess.run(command, check=True)
    if args.clean:
        shutil.rmtree(root)


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
