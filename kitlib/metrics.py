"""The ABAW EXPR score: macro F1 over the 8 classes (seed 000, eqs. 17-18).

Computed from one confusion matrix built with ``np.bincount``; frames labelled -1 are invalid and
left out. A class that is neither in the truth nor in the predictions has F1 0, as in
scikit-learn's ``f1_score(average="macro", labels=range(8), zero_division=0)`` which the
organisers' scoring uses.
"""
from __future__ import annotations

import numpy as np

from kitlib import NUM_CLASSES


def _valid(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} frames but y_pred has {y_pred.size}")
    keep = y_true >= 0
    y_true, y_pred = y_true[keep].astype(np.int64), y_pred[keep].astype(np.int64)
    bad = (y_true >= NUM_CLASSES) | (y_pred < 0) | (y_pred >= NUM_CLASSES)
    if bad.any():
        raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1} (or -1 for invalid truth); "
                         f"found {np.unique(np.r_[y_true[bad], y_pred[bad]]).tolist()}")
    return y_true, y_pred


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Confusion matrix ``C[true, pred]`` over valid frames (truth -1 ignored)."""
    y_true, y_pred = _valid(y_true, y_pred)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 (eq. 18) from a confusion matrix ``[true, pred]``; 0 where precision + recall is 0."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)  # 2TP + FP + FN = (TP+FP) + (TP+FN)
    return np.divide(2 * tp, denom, out=np.zeros(len(cm)), where=denom > 0)


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """F1 of each class (eq. 18); 0 where precision + recall is 0."""
    return f1_from_confusion(confusion(y_true, y_pred, num_classes))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """The challenge score: the mean of the per-class F1 over all ``num_classes`` classes (eq. 17)."""
    return float(per_class_f1(y_true, y_pred, num_classes).mean())
