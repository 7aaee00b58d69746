"""Notebook 07: test logits (final head or fold ensemble), smoothing, the official file and its check.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kitlib import CLASSES, data
from kitlib.config import Config, notebook_config
from kitlib.stages.common import (data_problems_note, data_index, device, folds, frame_labels, frame_table, read_report, report, start,
                                  with_features)
from kitlib.stages.s05_fusion_ablation import evaluation_table, head_kwargs, train_kwargs

log = logging.getLogger(__name__)

# what the notebook calls: the shared first steps, then this stage's own functions
__all__ = ['notebook_config', 'start', 'data_index', 'data_problems_note', 'read_report', 'predict_test_logits', 'make_submission',
           'score_demo_test']


def _load_final_head(cfg: Config):
    """The kept final head (frame or window head, rebuilt with the options it was trained with) and its record."""
    from kitlib.fusion import build_head

    path = cfg.run_dir / "fusion" / "final_head.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run 05_fusion_ablation first")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    trained_with = saved["config"]
    frame_only = {k: trained_with[k] for k in ("structure", "input_norm") if k in trained_with}
    head = build_head(saved["name"], visual_dim=saved["visual_dim"], audio_dim=saved["audio_dim"],
                      hidden=trained_with.get("hidden", cfg.fusion.hidden),
                      dropout=trained_with.get("dropout", cfg.fusion.dropout), options=trained_with.get("options"),
                      **frame_only)
    head.load_state_dict(saved["state_dict"])
    return head.eval(), saved


def check_head_record(saved: dict, table, *, path: Path, what: str) -> None:
    """Refuse features whose dimensions differ from those the final head was trained on (its record)."""
    for modality, found in (("visual", table.visual_dim), ("audio", table.audio_dim)):
        expected = saved.get(f"{modality}_dim")
        if expected is not None and int(expected) != found:
            raise ValueError(f"{path} was trained on {modality} features of dim {expected}, but the {what} "
                             f"features have dim {found} (features/{modality}/manifest.json): the features changed "
                             f"after stage 05; re-run it: --stages 05-07 --rerun")


def predict_test_logits(cfg: Config, index: data.DataIndex, table) -> np.ndarray:
    """Logits of the test frames: the final head, or the mean over fold models (``submission.ensemble_folds``).

    The test features, and the training features the fold models are trained on, must have the
    dimensions recorded with the final head (``check_head_record``).

    Fold models train on the other folds, each fitting its own input normalisation; with
    ``fusion.cv_protocol: authors`` each keeps its best epoch on its held-out fold (the reference
    code's 5-fold ensemble), otherwise it trains for the official run's best epoch count."""
    from kitlib.fusion import TrainedHead, count_parameters
    from kitlib.fusion.train import fold_ensemble_logits

    dev = device(cfg)
    head, saved = _load_final_head(cfg)
    head_path = cfg.run_dir / "fusion" / "final_head.pt"
    check_head_record(saved, table, path=head_path, what="test")
    if not cfg.submission.ensemble_folds:
        final = TrainedHead(name=saved["name"], module=head, history=[], best_epoch=int(saved["best_epoch"]),
                            best_val_f1=float(saved["best_val_f1"]), n_params=count_parameters(head),
                            config=saved["config"])
        return final.predict(table, device=dev)
    labels = frame_labels(cfg, index)
    annotated = with_features(cfg, [t for t in index.tracks if t.labels_path is not None], "ensemble")
    pool = frame_table(cfg, annotated, labels)
    check_head_record(saved, pool, path=head_path, what="Train+Validation")
    name = saved["name"]
    authors = cfg.fusion.cv_protocol == "authors"
    kwargs = {**train_kwargs(cfg), **head_kwargs(cfg, [name]).get(name, {})}
    if not authors:
        kwargs["epochs"] = max(int(saved["best_epoch"]), 1)
    if "options" in saved["config"]:
        kwargs["options"] = saved["config"]["options"]
    return fold_ensemble_logits(name, pool, folds(cfg, index), table, protocol=cfg.fusion.cv_protocol,
                                held_out=lambda held: evaluation_table(cfg, held), **kwargs)


def prior_class(cfg: Config, index: data.DataIndex) -> int:
    """The most frequent valid label of the annotated (Train+Validation) frames: the no-evidence fallback."""
    labels = frame_labels(cfg, index)
    counts = np.bincount(np.concatenate([y[y >= 0] for y in labels.values()] or [np.zeros(0, np.int64)]),
                         minlength=len(CLASSES))
    return int(counts.argmax())


def make_submission(cfg: Config, index: data.DataIndex) -> dict:
    """Predict the test tracks, smooth, write the official file in the template's order and validate it.

    A test track with features but no face and no audio in any frame has no evidence: its rows take
    the training prior's most frequent class (``prior_class``, source ``prior`` in the coverage
    report, and a warning), and the rest of the submission is written.
    """
    from kitlib.data import read_test_names, submission
    from kitlib.fusion import split_by_track
    from kitlib.smoothing.masked import smooth_logits_skipping

    template = submission.read_template(cfg.data_path(cfg.data.test_template))
    tests = [t for t in index.tracks if t.split == "Test_Set"]
    unknown = sorted(set(template["txtid"]) - {t.txtid for t in tests})
    if unknown:
        listed = set(read_test_names(cfg.data_path(cfg.data.test_names))) if cfg.data.test_names else set()
        problems = dict(index.problems)                   # a test name's problem is keyed by the name
        no_video = [t for t in unknown if t in listed]
        raise submission.SubmissionError("; ".join(
            [f"{t}: in the test list but unusable ({problems.get(t, 'no video')}; see reports/data_problems.csv)"
             for t in no_video[:5]]
            + ([f"the template names track(s) not in the test list {cfg.data.test_names}: "
                f"{', '.join(u for u in unknown if u not in listed)}"] if set(unknown) - listed else [])))
    tests = [t for t in tests if t.txtid in set(template["txtid"])]
    covered = with_features(cfg, tests, "submission")
    if len(covered) < len(tests):
        raise submission.SubmissionError("test track(s) without features: "
                                         + ", ".join(t.txtid for t in tests if t not in covered)
                                         + " (see reports/videos.csv and the extraction reports)")
    table = evaluation_table(cfg, frame_table(cfg, covered, None))
    logits = split_by_track(table, predict_test_logits(cfg, index, table))
    s = cfg.smoothing
    predictions, no_evidence = {}, []
    for i, txtid in enumerate(table.txtids):
        rows = slice(table.offsets[i], table.offsets[i + 1])
        has_face, has_audio = table.visual_mask[rows], table.audio_mask[rows]
        frames = table.frame_index[rows]
        usable = has_face | has_audio                       # frames with some evidence
        if not usable.any():
            no_evidence.append((txtid, frames))
            continue
        imputed = table.imputed[rows] if table.imputed is not None else None
        smoothed = smooth_logits_skipping(logits[txtid], s.final_window, s.final_strategy, skip=imputed,
                                          edge=s.final_edge, sigma_divisor=s.gaussian_sigma_divisor).argmax(1)
        source = np.where(has_face, "face", "audio")
        if imputed is not None:
            source = np.where(imputed, "imputed", source)
        predictions[txtid] = submission.TrackPrediction(frames[usable], smoothed[usable], source[usable])
    if no_evidence:
        prior = prior_class(cfg, index)
        log.warning("submission: %d test track(s) have no face and no audio in any frame: %s; their rows take the "
                    "training prior's most frequent class %d (%s) (reports/submission_coverage.csv: from_prior)",
                    len(no_evidence), ", ".join(t for t, _ in no_evidence), prior, CLASSES[prior])
        for txtid, frames in no_evidence:
            predictions[txtid] = submission.TrackPrediction(frames, np.full(len(frames), prior),
                                                            np.full(len(frames), "prior"))
    out = cfg.run_dir / "submission" / cfg.submission.filename
    coverage = submission.write_submission(out, template, predictions, fill_policy=cfg.submission.fill_policy)
    if "from_prior" not in coverage:
        coverage["from_prior"] = 0
    rows = submission.validate_submission(out, template)
    report(cfg, "submission_coverage", coverage)
    log.info("submission: %s, %d rows, validated", out, rows)
    return {"path": out, "rows": rows, "coverage": coverage}


def score_demo_test(cfg: Config, index: data.DataIndex, path: Path) -> pd.DataFrame:
    """The demo's test-set macro F1 from its ground truth (``<data.root>/truth``); empty for real data.

    A test track without a truth file is left out of the score, counted (``tracks_without_truth``)
    and named in a warning; the submission it scores is already written.
    """
    from kitlib import metrics

    truth_dir = cfg.data_path("truth")
    if not truth_dir.is_dir():
        return pd.DataFrame()
    rows = pd.read_csv(path, skiprows=1, header=None, names=["location", "label"])
    parts = rows["location"].str.extract(r"^(?P<txtid>.+)/(?P<frame>\d+)\.jpg$")
    y_true, y_pred, without = [], [], []
    for txtid, group in parts.groupby("txtid", sort=False):
        if not (truth_dir / f"{txtid}.npz").is_file():
            without.append(txtid)
            continue
        with np.load(truth_dir / f"{txtid}.npz") as truth:
            labels = truth["labels"]
        frames = group["frame"].astype(int).to_numpy()
        inside = frames <= len(labels)
        y_true.append(labels[frames[inside] - 1])
        y_pred.append(rows.loc[group.index, "label"].to_numpy()[inside])
    if without:
        log.warning("demo test score: no ground truth for %d test track(s) in %s, left out of the score: %s",
                    len(without), truth_dir, ", ".join(without))
    if not y_true:
        return pd.DataFrame()
    y_true, y_pred = np.concatenate(y_true), np.concatenate(y_pred)
    table = pd.DataFrame([{"split": "demo test", "frames": int((y_true >= 0).sum()),
                           "macro_f1": metrics.macro_f1(y_true, y_pred), "tracks_without_truth": len(without)}])
    report(cfg, "demo_test_score", table)
    return table
