"""Time the temporal-smoothing sweep of Fig. 4 (seed 000, sec. 4.7) at the real Aff-Wild2 EXPR size.

Random logits with the real per-video frame counts (``expr_cv5_folds.csv``, ~1.56 M frames in 317
annotation files), labels drawn in runs with each video's real class histogram (and its invalid
frames as -1), then ``kitlib.smoothing.sweep`` over 4 strategies x 102 windows (3..205). Prints the
frame and video counts, the numba compile / cache-load time (a warm-up call, reported apart),
seconds per strategy and the total, with the load average. Target: under a minute on 2 CPU cores.

    python benchmarks/smoothing_sweep.py [--metadata DIR] [--windows 3:206:2] [--limit-videos N]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import scipy.signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kitlib import NUM_CLASSES  # noqa: E402
from kitlib.runtime import setup_logging  # noqa: E402
from kitlib.smoothing import STRATEGIES, sweep  # noqa: E402

DEFAULT_METADATA = Path(__file__).resolve().parents[2] / "shared" / "abaw10-metadata"


def synthetic_tracks(meta: pd.DataFrame, *, seed: int = 0, mean_run: int = 60, signal: float = 1.0,
                     rho: float = 0.0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per video: labels in runs (mean length ``mean_run`` frames) drawn with the video's class
    histogram (invalid frames included as -1); logits = unit-variance noise + ``signal`` on the true
    class. ``rho`` = 0 gives i.i.d. noise (the median's worst case); ``rho`` > 0 gives AR(1) noise
    with that lag-1 correlation, closer to a real model's logits on consecutive frames."""
    rng = np.random.default_rng(seed)
    class_cols = [f"class_{c}" for c in range(NUM_CLASSES)]
    logits, labels = {}, {}
    for row in meta.itertuples(index=False):
        n = int(row.total_frames_in_txt)
        counts = np.array([row.invalid_frames, *(getattr(row, c) for c in class_cols)], dtype=np.float64)
        probs = counts / counts.sum() if counts.sum() > 0 else np.full(len(counts), 1 / len(counts))
        n_runs = max(1, n // mean_run)
        cuts = np.sort(rng.choice(np.arange(1, n), size=min(n_runs - 1, n - 1), replace=False)) if n > 1 else []
        run_class = rng.choice(np.arange(-1, NUM_CLASSES), size=len(cuts) + 1, p=probs)
        y = np.repeat(run_class, np.diff(np.r_[0, cuts, n]))
        x = rng.standard_normal((n, NUM_CLASSES), dtype=np.float32)
        if rho > 0:
            x = scipy.signal.lfilter([np.sqrt(1 - rho**2)], [1, -rho], x, axis=0).astype(np.float32)
        x[y >= 0, y[y >= 0]] += signal
        logits[row.txtid], labels[row.txtid] = x, y
    return logits, labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metadata", type=Path, default=DEFAULT_METADATA, help="folder with expr_cv5_folds.csv")
    parser.add_argument("--windows", default="3:206:2", help="start:stop:step of the odd window sizes")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--rho", type=float, default=0.0,
                        help="lag-1 correlation of the logit noise (0: i.i.d., the median's worst case)")
    parser.add_argument("--limit-videos", type=int, default=None, help="only the first N videos (quick runs)")
    args = parser.parse_args(argv)
    setup_logging()
    logging.getLogger("kitlib.smoothing").setLevel(logging.WARNING)

    meta = pd.read_csv(args.metadata / "expr_cv5_folds.csv")
    if args.limit_videos:
        meta = meta.head(args.limit_videos)
    logits, labels = synthetic_tracks(meta, rho=args.rho)
    windows = range(*(int(v) for v in args.windows.split(":")))
    strategies = tuple(s for s in args.strategies.split(",") if s)
    frames = sum(len(v) for v in logits.values())
    print(f"frames {frames:,}  videos {len(logits)}  noise rho {args.rho}  windows {len(windows)} ({windows.start}..{windows.stop - 1})")

    print(f"numba threads {numba.get_num_threads()} (layer {numba.config.THREADING_LAYER}), "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    start = time.perf_counter()
    few = list(logits)[:2]  # first call compiles the kernels (or loads them from numba's cache)
    sweep({t: logits[t] for t in few}, {t: labels[t] for t in few}, windows=[1, 3, 5], strategies=strategies,
          progress=False)
    print(f"compile / cache load {time.perf_counter() - start:.2f} s (not in the figures below)")

    start, cpu = time.perf_counter(), time.process_time()
    table = sweep(logits, labels, windows=windows, strategies=strategies)
    total = time.perf_counter() - start
    per_strategy = table.groupby("strategy", sort=False)["seconds"].sum()
    for strategy, seconds in per_strategy.items():
        best = table[table["strategy"] == strategy].sort_values("f1").iloc[-1]
        print(f"{strategy:>9}: {seconds:6.2f} s   best window {int(best['window']):3d}  F1 {best['f1']:.4f}")
    print(f"total sweep {total:.2f} s wall, {time.process_time() - cpu:.1f} s CPU (all threads), incl. packing; "
          f"load average after {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
