"""Notebook 06: temporal smoothing of the final head's logits (seed 000 sec. 3.2.5): Fig. 4 and Table 4.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from kitlib import config, data
from kitlib.config import Config, notebook_config
from kitlib.stages.common import (data_problems_note, data_index, feature_store, folds, frame_labels, load_logits, read_report, report,
                                  start)

log = logging.getLogger(__name__)

# what the notebook calls: the shared first steps, then this stage's own functions
__all__ = ['notebook_config', 'start', 'data_index', 'data_problems_note', 'read_report', 'smoothing_sweep', 'smoothing_table',
           'smoothing_example', 'overlay_video']


def _sweep_windows(cfg: Config) -> range:
    s = cfg.smoothing
    if s.window_min % 2 == 0 or s.window_step % 2 == 1:
        raise config.ConfigError("smoothing.window_min must be odd and smoothing.window_step even (odd windows only)")
    return range(s.window_min, s.window_max + 1, s.window_step)


def smoothing_sweep(cfg: Config, index: data.DataIndex) -> pd.DataFrame:
    """Fig. 4: macro F1 per strategy and window on the official validation split and on each fold."""
    from kitlib import smoothing

    labels = frame_labels(cfg, index)
    windows = sorted({*_sweep_windows(cfg), cfg.smoothing.final_window})
    sets = {"official val": load_logits(cfg, "val")}
    oof_path = cfg.run_dir / "fusion" / "oof_logits.npz"
    if oof_path.is_file():
        oof = load_logits(cfg, "oof")
        assignment = folds(cfg, index)
        for k in sorted({assignment[t] for t in oof}):
            sets[f"fold {k}"] = {t: x for t, x in oof.items() if assignment[t] == k}
    tables = []
    for name, logits in sets.items():
        table = smoothing.sweep(logits, {t: labels[t][: len(x)] for t, x in logits.items()}, windows=windows,
                                strategies=cfg.smoothing.strategies, edge=cfg.smoothing.edge,
                                sigma_divisor=cfg.smoothing.gaussian_sigma_divisor)
        tables.append(table.assign(split=name))
    sweep = pd.concat(tables, ignore_index=True)
    report(cfg, "smoothing_sweep", sweep)
    return sweep


def smoothing_table(cfg: Config, sweep: pd.DataFrame) -> pd.DataFrame:
    """Table 4: single frame and each strategy at ``smoothing.final_window``: official val F1, fold mean ± std."""
    w = cfg.smoothing.final_window
    rows = sweep[(sweep["window"] == w) | (sweep["strategy"] == "none")].copy()
    rows["strategy"] = rows["strategy"].replace({"none": "single-frame"})
    official = rows[rows["split"] == "official val"].set_index("strategy")["f1"]
    table = pd.DataFrame({"official_val_f1": official})
    on_folds = rows[rows["split"].str.startswith("fold")]
    if len(on_folds):
        table["cv_mean_f1"] = on_folds.groupby("strategy")["f1"].mean()
        ddof = 0 if cfg.fusion.cv_protocol == "authors" else 1   # population std in the reference protocol
        table["cv_std_f1"] = on_folds.groupby("strategy")["f1"].std(ddof=ddof)
        table["cv_protocol"] = cfg.fusion.cv_protocol
    table = table.reset_index().assign(window=lambda t: np.where(t["strategy"] == "single-frame", 1, w),
                                       edge=cfg.smoothing.edge)
    report(cfg, "table4_smoothing", table)
    return table


def smoothing_example(cfg: Config, index: data.DataIndex) -> dict:
    """The longest validation track: truth, single-frame and final-smoothing predictions."""
    from kitlib.smoothing import smooth_logits

    logits = load_logits(cfg, "val")
    txtid = max(logits, key=lambda t: len(logits[t]))
    x = logits[txtid]
    s = cfg.smoothing
    return {"txtid": txtid, "truth": frame_labels(cfg, index)[txtid][: len(x)],
            "rows": {"single frame": x.argmax(1),
                     f"{s.final_strategy} {s.final_window}": smooth_logits(
                         x, s.final_window, s.final_strategy, edge=s.final_edge,
                         sigma_divisor=s.gaussian_sigma_divisor).argmax(1)}}


def overlay_video(cfg: Config, index: data.DataIndex, *, txtid: str | None = None, seconds: float = 10.0):
    """An MP4 of one validation track (default: the longest, as in ``smoothing_example``): face box, predicted
    (after the final smoothing) and true label, class probabilities, in ``<run>/figures/overlay_<txtid>.mp4``."""
    from kitlib.overlay import write_overlay
    from kitlib.smoothing import smooth_logits

    logits = load_logits(cfg, "val")
    txtid = txtid or max(logits, key=lambda t: len(logits[t]))
    if txtid not in logits:
        raise KeyError(f"{txtid!r} has no validation logits; validation tracks: {', '.join(sorted(logits))}")
    track = index.by_txtid()[txtid]
    s = cfg.smoothing
    smoothed = smooth_logits(logits[txtid], s.final_window, s.final_strategy, edge=s.final_edge,
                             sigma_divisor=s.gaussian_sigma_divisor)
    probs = np.exp(smoothed - smoothed.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    visual = feature_store(cfg, "visual")
    frame_index = visual.load(txtid)["frame_index"] if visual.done(txtid) else np.arange(1, len(probs) + 1)
    if len(frame_index) != len(probs):
        frame_index = np.arange(1, len(probs) + 1)
    boxes_file = visual.root / "boxes.csv"
    boxes = {}
    if boxes_file.is_file():
        table = pd.read_csv(boxes_file)
        table = table[table["videoid"] == track.videoid]
        boxes = {int(f): g[["x1", "y1", "x2", "y2"]].to_numpy() for f, g in table.groupby("frame")}
    fps = probe_fps(track.video_path)
    path = write_overlay(track.video_path, cfg.run_dir / "figures" / f"overlay_{txtid}.mp4", probs=probs,
                         frame_index=np.asarray(frame_index), truth=frame_labels(cfg, index)[txtid],
                         pred=probs.argmax(1), boxes=boxes, max_frames=int(round(seconds * fps)))
    log.info("overlay of %s (%.0f s, %s %d smoothing) -> %s", txtid, seconds, s.final_strategy, s.final_window, path)
    return path


def probe_fps(video_path) -> float:
    from kitlib.faces.video import probe

    return probe(video_path).fps or 30.0
