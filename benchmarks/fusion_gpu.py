"""Stage II fusion epochs with the features resident on the device vs batches gathered on the host.

Seed 000 sec. 3.2.3 (gated fusion, eqs. 9-12), ``kitlib.fusion.train_head`` on a synthetic frame table
held in RAM: ``--frames`` training rows (default: the release's Train_Set frames from the metadata,
``expr_cv5_folds.csv``) and a validation table of ``--val-frames`` rows, 1024 + 1024 float16 features,
labels drawn with the release's class mix. Two runs of ``--epochs`` epoch(s), same seed, same batches:

* host batches (the straightforward baseline): every batch gathered from the host table and copied over
* resident (``fusion.resident_features``): the tables copied onto the GPU once, batches indexed there

Printed: seconds per epoch (validation included), labelled frames/s, the ratio, the one-off upload
time, peak GPU and host memory, and the epoch time projected to the release's Train_Set size.
``--json`` writes the figures. On the CPU both runs use host batches (resident copies are for CUDA).

    .venv/bin/python benchmarks/fusion_gpu.py --frames 20000                 # CPU, toy size
    .venv/bin/python benchmarks/fusion_gpu.py --device cuda                  # the release's size
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kitlib.fusion import FrameTable, train_head  # noqa: E402
from kitlib.fusion.train import resident_table  # noqa: E402
from kitlib.runtime import pick_device, seed_everything  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakMemory, machine_line, metadata_dir  # noqa: E402

FOLDS = metadata_dir() / "expr_cv5_folds.csv"


def synthetic_table(n: int, *, dim: int, class_mix: np.ndarray, seed: int,
                    device: torch.device = torch.device("cpu")) -> FrameTable:
    """One track of ``n`` rows of float16 noise features, labels drawn from ``class_mix`` (first entry: -1).
    The noise is drawn on ``device`` (a GPU draws a release-sized table in a second; the CPU's float16
    ``randn`` takes minutes) and held in host memory, as a real table is."""
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)

    def noise() -> np.ndarray:
        return torch.randn(n, dim, generator=gen, device=device, dtype=torch.float16).cpu().numpy()

    return FrameTable(txtids=("synthetic",), offsets=np.array([0, n]), frame_index=np.arange(1, n + 1, dtype=np.int32),
                      visual=noise(),
                      visual_mask=rng.random(n) > 0.1,
                      audio=noise(),
                      audio_mask=rng.random(n) > 0.02,
                      labels=rng.choice(np.arange(-1, 8), size=n, p=class_mix).astype(np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=None, help="training rows (default: the release's Train_Set)")
    parser.add_argument("--val-frames", type=int, default=None, help="validation rows (default: frames / 3)")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--head", default="gated")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_grad_enabled(True)
    seed_everything(0)
    device = pick_device(args.device)
    print(machine_line(device), flush=True)
    real_train = None
    class_mix = np.array([0.25] + [0.75 / 8] * 8)
    if FOLDS.is_file():
        folds = pd.read_csv(FOLDS)
        real_train = int(folds.loc[folds["source_dir"] == "Train_Set", "total_frames_in_txt"].sum())
        counts = folds[["invalid_frames", *(f"class_{c}" for c in range(8))]].sum().to_numpy(float)
        class_mix = counts / counts.sum()
    frames = args.frames or real_train or 1_000_000
    val_frames = args.val_frames or max(frames // 3, 1000)
    tic = time.perf_counter()
    train = synthetic_table(frames, dim=args.dim, class_mix=class_mix, seed=0, device=device)
    val = synthetic_table(val_frames, dim=args.dim, class_mix=class_mix, seed=1, device=device)
    print(f"tables: train {frames:,} + val {val_frames:,} rows x ({args.dim} + {args.dim}) float16 "
          f"({(frames + val_frames) * args.dim * 4 / 2**30:.2f} GiB) built in {time.perf_counter() - tic:.1f} s", flush=True)
    figures = {"machine": machine_line(device), "device": str(device), "frames": frames, "val_frames": val_frames,
               "release_train_frames": real_train, "runs": {}}
    if device.type == "cuda":
        tic = time.perf_counter()
        resident_table(train, device)
        torch.cuda.synchronize()
        figures["upload_s"] = time.perf_counter() - tic
        print(f"upload of the training table to {device}: {figures['upload_s']:.1f} s (once per table)")
    n_labelled = int((train.labels >= 0).sum())
    for name, resident in (("host batches", False), ("resident", True)):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with PeakMemory(device=device) as peak:
            tic = time.perf_counter()
            trained = train_head(args.head, train, val, hidden=args.hidden, epochs=args.epochs,
                                 batch_size=args.batch_size, patience=args.epochs, device=device,
                                 resident_features=resident)
            wall = time.perf_counter() - tic
        epoch_s = float(np.mean([r["seconds"] for r in trained.history]))
        run = {"epoch_s": epoch_s, "total_s": wall, "labelled_frames_per_s": n_labelled / epoch_s,
               "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
               "peak_host_anon_gib": peak.gib("RssAnon"), "val_f1": trained.best_val_f1}
        if real_train:
            run["projected_release_epoch_s"] = epoch_s * real_train / frames
        figures["runs"][name] = run
        print(f"{name:13s} {epoch_s:8.2f} s/epoch incl. validation = {n_labelled / epoch_s:,.0f} labelled frames/s "
              f"({args.head}, hidden {args.hidden}, batch {args.batch_size}, {device}; total {wall:.1f} s incl. uploads)"
              + (f"; at the release's Train_Set size {run['projected_release_epoch_s']:.1f} s/epoch" if real_train else "")
              + f"; {peak.summary()}", flush=True)
    ratio = figures["runs"]["host batches"]["epoch_s"] / figures["runs"]["resident"]["epoch_s"]
    figures["resident_speedup"] = ratio
    print(f"resident / host batches: x{ratio:.2f} per epoch" + ("" if device.type == "cuda" else
                                                                 " (CPU: both use host batches, so ~x1)"))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
