"""Notebook 07: test logits (final head or fold ensemble), smoothing, the official file and its check.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kitlib import data
from kitlib.config import Config, notebook_config
from kitlib.stages.common import (data_index, device, folds, frame_labels, frame_table, read_report, report, start,
                                  with_features)
from kitlib.stages.s05_fusion_ablation import head_kwargs, train_kwargs

log = logging.getLogger(__name__)

# what the notebook calls: the shared first steps, then this stage's own functions
__all__ = ['notebook_config', 'start', 'data_index', 'read_report', 'predict_test_logits', 'make_submission',
           'score_demo_test']


def _load_final_head(cfg: Config):
    """The kept final head (frame or window head, rebuilt with the options it was trained with) and its record."""
    from kitlib.fusion import build_head

    path = cfg.run_dir / "fusion" / "final_head.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run 05_fusion_ablation first")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    trained_with = saved["config"]
    head = build_head(saved["name"], visual_dim=saved["visual_dim"], audio_dim=saved["audio_dim"],
                      hidden=trained_with.get("hidden", cfg.fusion.hidden),
                      dropout=trained_with.get("dropout", cfg.fusion.dropout), options=trained_with.get("options"))
    head.load_state_dict(saved["state_dict"])
    return head.eval(), saved


def predict_test_logits(cfg: Config, index: data.DataIndex, table) -> np.ndarray:
    """Logits of the test frames: the final head, or the mean over fold models (``submission.ensemble_folds``)."""
    from kitlib.progress import tqdm

    from kitlib.fusion import TrainedHead, count_parameters, train_head

    dev = device(cfg)
    head, saved = _load_final_head(cfg)
    if not cfg.submission.ensemble_folds:
        final = TrainedHead(name=saved["name"], module=head, history=[], best_epoch=int(saved["best_epoch"]),
                            best_val_f1=float(saved["best_val_f1"]), n_params=count_parameters(head),
                            config=saved["config"])
        return final.predict(table, device=dev)
    labels = frame_labels(cfg, index)
    annotated = with_features(cfg, [t for t in index.tracks if t.labels_path is not None], "ensemble")
    pool = frame_table(cfg, annotated, labels)
    assignment = folds(cfg, index)
    name = saved["name"]
    kwargs = {**train_kwargs(cfg), **head_kwargs(cfg, [name]).get(name, {}),
              "epochs": max(int(saved["best_epoch"]), 1)}
    if "options" in saved["config"]:
        kwargs["options"] = saved["config"]["options"]
    outs = []
    for k in tqdm(sorted(set(assignment[t] for t in pool.txtids)), desc="fold models", unit="fold"):
        part = pool.subset([t for t in pool.txtids if assignment[t] != k])
        outs.append(train_head(name, part, None, **kwargs).predict(table, device=dev))
    log.info("test logits: mean over %d fold models", len(outs))
    return np.mean(outs, axis=0)


def make_submission(cfg: Config, index: data.DataIndex) -> dict:
    """Predict the test tracks, smooth, write the official file in the template's order and validate it."""
    from kitlib.data import submission
    from kitlib.fusion import split_by_track
    from kitlib.smoothing import smooth_logits

    template = submission.read_template(cfg.data_path(cfg.data.test_template))
    tests = [t for t in index.tracks if t.split == "Test_Set"]
    unknown = sorted(set(template["txtid"]) - {t.txtid for t in tests})
    if unknown:
        raise submission.SubmissionError(f"the template names track(s) not in the test list {cfg.data.test_names}: "
                                         f"{', '.join(unknown[:5])}")
    tests = [t for t in tests if t.txtid in set(template["txtid"])]
    covered = with_features(cfg, tests, "submission")
    if len(covered) < len(tests):
        raise submission.SubmissionError("test track(s) without features: "
                                         + ", ".join(t.txtid for t in tests if t not in covered)
                                         + " (see reports/videos.csv and the extraction reports)")
    table = frame_table(cfg, covered, None)
    logits = split_by_track(table, predict_test_logits(cfg, index, table))
    s = cfg.smoothing
    predictions = {}
    for i, txtid in enumerate(table.txtids):
        rows = slice(table.offsets[i], table.offsets[i + 1])
        has_face, has_audio = table.visual_mask[rows], table.audio_mask[rows]
        frames = table.frame_index[rows]
        usable = has_face | has_audio                       # frames with some evidence
        smoothed = smooth_logits(logits[txtid], s.final_window, s.final_strategy).argmax(1)
        source = np.where(has_face, "face", "audio")
        predictions[txtid] = submission.TrackPrediction(frames[usable], smoothed[usable], source[usable])
    out = cfg.run_dir / "submission" / cfg.submission.filename
    coverage = submission.write_submission(out, template, predictions, fill_policy=cfg.submission.fill_policy)
    rows = submission.validate_submission(out, template)
    report(cfg, "submission_coverage", coverage)
    log.info("submission: %s, %d rows, validated", out, rows)
    return {"path": out, "rows": rows, "coverage": coverage}


def score_demo_test(cfg: Config, index: data.DataIndex, path: Path) -> pd.DataFrame:
    """The demo's test-set macro F1 from its ground truth (``<data.root>/truth``); empty for real data."""
    from kitlib import metrics

    truth_dir = cfg.data_path("truth")
    if not truth_dir.is_dir():
        return pd.DataFrame()
    rows = pd.read_csv(path, skiprows=1, header=None, names=["location", "label"])
    parts = rows["location"].str.extract(r"^(?P<txtid>.+)/(?P<frame>\d+)\.jpg$")
    y_true, y_pred = [], []
    for txtid, group in parts.groupby("txtid", sort=False):
        with np.load(truth_dir / f"{txtid}.npz") as truth:
            labels = truth["labels"]
        frames = group["frame"].astype(int).to_numpy()
        inside = frames <= len(labels)
        y_true.append(labels[frames[inside] - 1])
        y_pred.append(rows.loc[group.index, "label"].to_numpy()[inside])
    y_true, y_pred = np.concatenate(y_true), np.concatenate(y_pred)
    table = pd.DataFrame([{"split": "demo test", "frames": int((y_true >= 0).sum()),
                           "macro_f1": metrics.macro_f1(y_true, y_pred)}])
    report(cfg, "demo_test_score", table)
    return table
