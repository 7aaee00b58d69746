"""Temporal smoothing that skips imputed frames (the reference code's inference, seed 000 sec. 3.2.5).

With nearest-frame imputation (``kitlib.fusion.table.impute_nearest``) a frame without a face gets a
neighbour's features, and so nearly a neighbour's logits. The reference code leaves such frames out
of every smoothing window: frame ``t``'s smoothed logits are the window statistic over the frames of
``N(t)`` that are NOT imputed; a frame whose window holds no such frame takes the unsmoothed logits
of the nearest frame that is not imputed (equally near: the earlier, as the reference code's
``np.argmin``). Edges as in ``kitlib.smoothing``: ``truncate``
or ``replicate``. Without imputed frames this is exactly ``smooth_logits``.

Vectorised over chunks of centres (a (chunk, window, C) view at a time), so memory stays bounded
for long videos.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from kitlib.fusion.table import nearest_source_rows
from kitlib.smoothing import STRATEGIES, _check_edge, _checked, gaussian_weights, half_width, replicate_edges, smooth_logits

_CHUNK = 2048  # centres per vectorised step


def smooth_logits_skipping(logits: np.ndarray, window: int, strategy: str, *, skip: np.ndarray | None,
                           edge: str = "truncate", sigma_divisor: float = 6.0) -> np.ndarray:
    """Smoothed (N, C) logits of ONE video, leaving the frames where ``skip`` is True out of every window."""
    k = half_width(window)
    _check_edge(edge)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown smoothing strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    logits = _checked(logits)
    skip = np.zeros(len(logits), dtype=bool) if skip is None else np.asarray(skip, dtype=bool)
    if len(skip) != len(logits):
        raise ValueError(f"{len(skip)} skip flags for {len(logits)} frames")
    if not skip.any() or skip.all() or k == 0:
        return smooth_logits(logits, window, strategy, edge=edge, sigma_divisor=sigma_divisor)
    values = logits.astype(np.float64)
    if strategy == "vote":
        values = np.eye(values.shape[1])[values.argmax(1)]
    values = np.where(skip[:, None], np.nan, values)
    if edge == "replicate":
        padded = replicate_edges(values, k)
    else:
        padded = replicate_edges(values, k, fill=np.nan)
    windows = sliding_window_view(padded, 2 * k + 1, axis=0)  # (N, C, W)
    out = np.empty(values.shape, dtype=np.float64)
    weights = gaussian_weights(2 * k + 1, sigma_divisor=sigma_divisor) if strategy == "gaussian" else None
    for start in range(0, len(values), _CHUNK):
        w = windows[start:start + _CHUNK]
        present = ~np.isnan(w)
        with np.errstate(invalid="ignore", divide="ignore"):
            if strategy == "median":
                part = _nanmedian(w)
            elif strategy == "gaussian":
                part = np.nansum(w * weights, axis=-1) / (present * weights).sum(-1)
            elif strategy == "vote":
                part = np.nansum(w, axis=-1)
            else:
                part = np.nansum(w, axis=-1) / present.sum(-1)
        part[~present.any(-1)] = np.nan
        out[start:start + _CHUNK] = part
    empty = np.isnan(out).any(1)
    if empty.any():   # no usable frame in the window: the nearest usable frame's own logits
        source = nearest_source_rows(np.zeros(len(out), dtype=np.int64), ~skip, ties="earlier")
        raw = np.eye(values.shape[1])[logits.argmax(1)] if strategy == "vote" else logits.astype(np.float64)
        out[empty] = raw[source[empty]]
    return out.astype(np.float64 if logits.dtype == np.float64 else np.float32)


def _nanmedian(w: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN (mean of the two middle values for an even count)."""
    count = (~np.isnan(w)).sum(-1)
    ordered = np.sort(w, axis=-1)            # NaN sort last
    lo = np.clip((count - 1) // 2, 0, None)
    hi = np.clip(count // 2, 0, None)
    a = np.take_along_axis(ordered, lo[..., None], -1)[..., 0]
    b = np.take_along_axis(ordered, hi[..., None], -1)[..., 0]
    out = (a + b) / 2.0
    out[count == 0] = np.nan
    return out
