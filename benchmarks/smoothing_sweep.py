"""Time the temporal-smoothing sweep of Fig. 4 (seed 000, sec. 4.7) at the real Aff-Wild2 EXPR size.

Random logits with the real per-video frame counts (``expr_cv5_folds.csv``, ~1.56 M frames in 317
annotation files), labels drawn in runs with each video's real class histogram (and its invalid
frames as -1), then ``kitlib.smoothing.sweep`` over 4 strategies x 102 windows (3..205). Prints the
frame and video counts, the numba compile / cache-load time (a warm-up call, reported apart),
seconds per strategy and the total, with the load average. Target: under a minute on 2 CPU cores.

Side by side, the straightforward baseline: per-frame Python (for every window and frame, slice
the window, ``np.mean`` / ``np.median`` / Gaussian-weighted sum / ``np.bincount`` of the argmaxes,
then argmax) on the first ``--baseline-videos`` videos and ``--baseline-windows``; the kit's sweep
is timed on the same subset, the two predictions are compared, and the baseline's time for the
full sweep is extrapolated (it is linear in frames x windows).

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
from kitlib.smoothing import STRATEGIES, gaussian_weights, half_width, smooth_logits, sweep  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakMemory, machine_line  # noqa: E402

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


def per_frame_predictions(logits: np.ndarray, window: int, strategy: str) -> np.ndarray:
    """The straightforward baseline: one Python iteration per frame, the window sliced and reduced."""
    k = half_width(window)
    weights = gaussian_weights(window)
    out = np.empty(len(logits), dtype=np.int64)
    for t in range(len(logits)):
        lo, hi = max(0, t - k), min(len(logits), t + k + 1)
        part = logits[lo:hi]
        if strategy == "mean":
            out[t] = part.mean(axis=0).argmax()
        elif strategy == "median":
            out[t] = np.median(part, axis=0).argmax()
        elif strategy == "gaussian":
            out[t] = (weights[lo - t + k:hi - t + k, None] * part).sum(axis=0).argmax()
        else:
            out[t] = np.bincount(part.argmax(axis=1), minlength=logits.shape[1]).argmax()
    return out


def baseline_rows(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], *, windows: list[int],
                  strategies: tuple[str, ...], full_frame_windows: int, full_seconds: dict[str, float]) -> None:
    """Per strategy: per-frame Python vs the kit on the same subset, agreement, extrapolated full sweep."""
    frames = sum(len(x) for x in logits.values())
    kit = sweep(logits, labels, windows=windows, strategies=strategies, progress=False)
    for strategy in strategies:
        tic = time.perf_counter()
        base = {(t, w): per_frame_predictions(x, w, strategy) for t, x in logits.items() for w in windows}
        base_s = time.perf_counter() - tic
        kit_s = float(kit.loc[kit["strategy"] == strategy, "seconds"].sum())
        same = np.mean([np.mean(base[t, w] == smooth_logits(x, w, strategy).argmax(1))
                        for t, x in logits.items() for w in windows])
        per_fw = base_s / (frames * len(windows))
        print(f"{strategy:>9}: per-frame Python {base_s:7.2f} s vs kit {kit_s:6.3f} s on {frames:,} frames x "
              f"{len(windows)} windows (x{base_s / max(kit_s, 1e-9):,.0f}); same argmax on {same:.2%} of frames; "
              f"full sweep extrapolated {per_fw * full_frame_windows / 3600:6.2f} h vs kit {full_seconds[strategy]:.1f} s "
              f"(x{per_fw * full_frame_windows / max(full_seconds[strategy], 1e-9):,.0f})", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metadata", type=Path, default=DEFAULT_METADATA, help="folder with expr_cv5_folds.csv")
    parser.add_argument("--windows", default="3:206:2", help="start:stop:step of the odd window sizes")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--rho", type=float, default=0.0,
                        help="lag-1 correlation of the logit noise (0: i.i.d., the median's worst case)")
    parser.add_argument("--limit-videos", type=int, default=None, help="only the first N videos (quick runs)")
    parser.add_argument("--baseline-videos", type=int, default=3, help="videos of the per-frame baseline (0: none)")
    parser.add_argument("--baseline-windows", default="3,51,101,205", help="windows of the per-frame baseline")
    args = parser.parse_args(argv)
    print(machine_line())
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
    with PeakMemory() as peak:
        table = sweep(logits, labels, windows=windows, strategies=strategies)
    total = time.perf_counter() - start
    per_strategy = table.groupby("strategy", sort=False)["seconds"].sum()
    for strategy, seconds in per_strategy.items():
        best = table[table["strategy"] == strategy].sort_values("f1").iloc[-1]
        print(f"{strategy:>9}: {seconds:6.2f} s   best window {int(best['window']):3d}  F1 {best['f1']:.4f}")
    print(f"total sweep {total:.2f} s wall, {time.process_time() - cpu:.1f} s CPU (all threads), incl. packing; "
          f"load average after {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {peak.summary()}")
    if args.baseline_videos:
        subset = list(logits)[: args.baseline_videos]
        base_windows = [int(w) for w in args.baseline_windows.split(",")]
        print(f"per-frame Python baseline on {len(subset)} videos, windows {base_windows}:")
        baseline_rows({t: logits[t] for t in subset}, {t: labels[t] for t in subset}, windows=base_windows,
                      strategies=strategies, full_frame_windows=frames * len(windows),
                      full_seconds=per_strategy.to_dict())


if __name__ == "__main__":
    main()
