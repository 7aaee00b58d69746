"""Notebook 01: the release (tracks, length mismatches, folds) and the PadAug preview (Fig. 3).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kitlib import data
from kitlib.config import Config, notebook_config
from kitlib.stages.common import (data_problems_note, data_index, folds, frame_labels, padaug, read_report, report, stage1_items, start,
                                  video_table)

log = logging.getLogger(__name__)

# what the notebook calls: the shared first steps, then this stage's own functions
__all__ = ['notebook_config', 'start', 'data_index', 'data_problems_note', 'read_report', 'frame_labels', 'track_table',
           'fold_table', 'preview_images', 'padaug_grid']


def track_table(cfg: Config, index: data.DataIndex) -> pd.DataFrame:
    """One row per track: split, video, decoded frames, valid/invalid labelled frames and class counts."""
    videos = video_table(cfg, index).set_index("videoid")
    hist = data.label_histograms([t for t in index.tracks if t.labels_path is not None])
    test = pd.DataFrame([{"txtid": t.txtid, "videoid": t.videoid, "split": t.split} for t in index.tracks
                         if t.labels_path is None])
    table = pd.concat([hist, test], ignore_index=True)
    table["frames"] = table["videoid"].map(videos["n_frames"]).fillna(0).astype(int)
    counts = [c for c in table.columns if c.startswith("class_") or c in ("valid", "invalid")]
    table[counts] = table[counts].fillna(0).astype(int)
    return table


def fold_table(cfg: Config, index: data.DataIndex) -> pd.DataFrame:
    """Per fold: tracks, videos, valid frames and class shares; the assignment goes to ``reports/folds.csv``."""
    from kitlib import CLASSES

    assignment = folds(cfg, index)
    hist = data.label_histograms([t for t in index.tracks if t.txtid in assignment])
    hist["fold"] = hist["txtid"].map(assignment)
    report(cfg, "folds", hist[["txtid", "videoid", "split", "fold"]])
    classes = [f"class_{c}" for c in range(len(CLASSES))]
    per_fold = hist.groupby("fold").agg(tracks=("txtid", "count"), videos=("videoid", "nunique"), valid=("valid", "sum"))
    shares = hist.groupby("fold")[classes].sum()
    shares = (shares.div(shares.sum(1), axis=0)).round(3).rename(columns=dict(zip(classes, CLASSES)))
    return per_fold.join(shares)


def preview_images(cfg: Config, *, n: int = 6, folder: str | None = None, size: int = 112) -> torch.Tensor:
    """``n`` face images (uint8, n x 3 x size x size) from ``folder`` or the Stage-I training set, one per class first."""
    from PIL import Image

    if folder is not None:
        paths = sorted(p for p in Path(folder).expanduser().rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not paths:
            raise FileNotFoundError(f"{folder}: no .jpg/.png images to preview")
    else:
        items = stage1_items(cfg)[0]
        by_class: dict[int, list[Path]] = {}
        for path, label in items:
            by_class.setdefault(label, []).append(Path(path))
        paths = [p for group in zip(*by_class.values()) for p in group]
    images = [np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in paths[:n]]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def padaug_grid(cfg: Config, images: torch.Tensor, *, rows: int = 2) -> np.ndarray:
    """The paper's Fig. 3 as an H x W x 3 array: originals on top, ``rows`` rows of PadAug samples below."""
    from kitlib.visual.padaug import PadAug, preview_grid

    aug = padaug(cfg) or PadAug(max_frac=cfg.stage1.padaug_max_frac)   # the run's style (stage1.padaug_style)
    grid = preview_grid(images, padaug=aug, n_per_image=rows, seed=cfg.run.seed)
    return grid.permute(1, 2, 0).numpy()
