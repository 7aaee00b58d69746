"""The ABAW EXPR score: macro F1 over the 8 classes (seed 000, eqs. 17-18).

Computed from one confusion matrix built with ``np.bincount``; frames labelled -1 are invalid and
left out. A class that is neither in the truth nor in the predictions has F1 0, as in
scikit-learn's ``f1_score(average="macro", labels=range(8), zero_division=0)`` which the
organisers' scoring uses.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

from kitlib import NUM_CLASSES

log = logging.getLogger(__name__)


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


PROBES: tuple[str, ...] = ("sklearn", "torch")


def linear_probe_f1(train_X: np.ndarray, train_y: np.ndarray, val_X: np.ndarray, val_y: np.ndarray, *,
                    seed: int = 0, max_iter: int = 300, max_train_frames: int | None = None,
                    num_classes: int = NUM_CLASSES, kind: str = "sklearn", l2: bool = False,
                    class_weighted: bool = True) -> float:
    """Macro F1 of a linear classifier on frozen features (Table 1's "+ Linear" columns).

    ``kind="sklearn"``: standardised features, multinomial logistic regression with balanced class
    weights. ``kind="torch"`` (the reference code's probes, ``torch_linear_probe_f1``): a linear
    layer on z-scored features (then L2-normalised with ``l2``), AdamW, the best epoch's validation
    macro F1. Frames with label < 0 or a non-finite feature are left out of both sets.
    ``max_train_frames`` subsamples the training frames (seeded) to bound the fit time on ~1M
    Aff-Wild2 frames.
    """
    if kind not in PROBES:
        raise ValueError(f"probe kind must be one of {PROBES}, got {kind!r}")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def valid(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, np.float32).reshape(len(X), -1)
        y = np.asarray(y).ravel()
        if len(X) != len(y):
            raise ValueError(f"{len(X)} feature rows but {len(y)} labels")
        keep = (y >= 0) & np.isfinite(X).all(axis=1)
        return X[keep], y[keep].astype(np.int64)

    train_X, train_y = valid(train_X, train_y)
    val_X, val_y = valid(val_X, val_y)
    if max_train_frames is not None and len(train_y) > max_train_frames:
        pick = np.random.default_rng(seed).choice(len(train_y), max_train_frames, replace=False)
        train_X, train_y = train_X[pick], train_y[pick]
    if len(np.unique(train_y)) < 2:
        raise ValueError(f"the linear probe needs at least two classes in training, got {np.unique(train_y)}")
    if kind == "torch":
        return torch_linear_probe_f1(train_X, train_y, val_X, val_y, seed=seed, l2=l2, class_weighted=class_weighted,
                                     num_classes=num_classes)
    probe_model = make_pipeline(StandardScaler(),
                                LogisticRegression(class_weight="balanced", max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe_model.fit(train_X, train_y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    score = macro_f1(val_y, probe_model.predict(val_X), num_classes)
    log.info("linear probe: %d train / %d val frames, dim %d, macro F1 %.4f%s", len(train_y), len(val_y),
             train_X.shape[1], score, "" if converged else f" (stopped at max_iter={max_iter} before converging)")
    return score


def torch_linear_probe_f1(train_X: np.ndarray, train_y: np.ndarray, val_X: np.ndarray, val_y: np.ndarray, *,
                          seed: int = 0, l2: bool = False, class_weighted: bool = True, epochs: int = 20,
                          lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 4096,
                          num_classes: int = NUM_CLASSES) -> float:
    """The reference code's linear probe (``train_eval1`` for visual features with ``l2``,
    ``train_audio_linear`` for audio): z-score with the training statistics (population std, eps
    1e-6), optionally L2-normalise, one ``nn.Linear``, AdamW, cross-entropy (inverse-frequency class
    weights with mean 1 when ``class_weighted``), ``epochs`` epochs; returns the best epoch's
    validation macro F1. Inputs must already be valid (labels >= 0, finite)."""
    import torch

    def prepare(X: np.ndarray) -> torch.Tensor:
        x = (torch.from_numpy(np.asarray(X, np.float32)) - mean) / std
        return torch.nn.functional.normalize(x, dim=-1) if l2 else x

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mean = torch.from_numpy(np.asarray(train_X, np.float32).mean(0))
    std = torch.from_numpy(np.asarray(train_X, np.float32).std(0)).clamp(min=1e-6)
    xt, xv = prepare(train_X), prepare(val_X)
    yt = torch.from_numpy(np.asarray(train_y, np.int64))
    weight = None
    if class_weighted:
        counts = np.bincount(train_y, minlength=num_classes).astype(np.float64)
        w = counts.sum() / np.maximum(counts, 1.0)
        weight = torch.tensor(w / w.mean(), dtype=torch.float32)
    model = torch.nn.Linear(xt.shape[1], num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    best = -1.0
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(yt), generator=generator).split(batch_size):
            loss = torch.nn.functional.cross_entropy(model(xt[batch]), yt[batch], weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            best = max(best, macro_f1(val_y, model(xv).argmax(1).numpy(), num_classes))
    log.info("torch linear probe: %d train / %d val frames, dim %d, best-epoch macro F1 %.4f", len(yt), len(xv),
             xt.shape[1], best)
    return best
