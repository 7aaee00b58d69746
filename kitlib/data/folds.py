"""Video-level cross-validation folds over Train+Validation, balanced by class histogram
(seed 000 sec. 4.1: 5 folds, all tracks of one video in one fold), or read from a CSV.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from kitlib import CLASSES
from kitlib.data.release import DataError, Track, read_labels

log = logging.getLogger(__name__)


def label_histograms(tracks: list[Track]) -> pd.DataFrame:
    """Frames per class of each annotated track (columns txtid, videoid, split, valid, invalid, class_0..7)."""

    rows = []
    for t in tracks:
        if t.labels_path is None:
            continue
        labels = read_labels(t.labels_path)
        hist = np.bincount(labels[labels >= 0], minlength=len(CLASSES))
        rows.append({"txtid": t.txtid, "videoid": t.videoid, "split": t.split, "valid": int(hist.sum()),
                     "invalid": int((labels < 0).sum()), **{f"class_{c}": int(h) for c, h in enumerate(hist)}})
    return pd.DataFrame(rows)


def make_folds(hist: pd.DataFrame, *, n_folds: int = 5, seed: int = 0, trials: int = 2000) -> dict[str, int]:
    """Video-level K-fold assignment (folds 1..K), balanced by class histogram, reproducible from a seed.

    All tracks of one video (``_left`` / ``_right``) share a fold. Among ``trials`` random
    assignments of videos to folds (round-robin over a shuffled order, so fold sizes differ by at most
    one video), the one whose folds' class ratios are closest (max L2) to the global ratio wins; ties
    go to the more even frame counts.
    """
    classes = [f"class_{c}" for c in range(len(CLASSES))]
    per_video = hist.groupby("videoid")[classes].sum()
    n_videos = len(per_video)
    if n_videos < n_folds:
        raise DataError(f"{n_videos} videos cannot fill {n_folds} folds")
    counts = per_video.to_numpy(dtype=np.float64)             # videos x classes
    global_ratio = counts.sum(0) / counts.sum()
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((trials, n_videos)), axis=1)  # a shuffled video order per trial
    fold_of = np.empty_like(order)
    np.put_along_axis(fold_of, order, np.arange(n_videos) % n_folds, axis=1)  # trials x videos
    onehot = np.eye(n_folds)[fold_of]                          # trials x videos x folds
    fold_counts = np.einsum("tvf,vc->tfc", onehot, counts)     # trials x folds x classes
    totals = fold_counts.sum(-1, keepdims=True)
    ratios = np.divide(fold_counts, totals, out=np.zeros_like(fold_counts), where=totals > 0)
    divergence = np.linalg.norm(ratios - global_ratio, axis=-1).max(-1)
    size_spread = totals[..., 0].std(-1) / max(totals[0].sum() / n_folds, 1.0)
    best = int(np.lexsort((size_spread, divergence))[0])
    video_fold = dict(zip(per_video.index, fold_of[best] + 1))
    return {txtid: int(video_fold[vid]) for txtid, vid in zip(hist["txtid"], hist["videoid"])}


def read_folds(path: Path) -> dict[str, int]:
    """Folds from a CSV with columns txtid and fold (e.g. published folds)."""

    table = pd.read_csv(path)
    if not {"txtid", "fold"} <= set(table.columns):
        raise DataError(f"{path}: needs columns txtid and fold, has {list(table.columns)}")
    return dict(zip(table["txtid"].astype(str), table["fold"].astype(int)))
