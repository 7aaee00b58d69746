"""Seed 004's frame-level two-stream baseline (sec. 4.3, eq. 6, its Table 2): decision-level fusion
``Output = lambda V_out + (1 - lambda) A_out`` of a visual and an audio classifier.

The audio input of a frame is the mean of the audio features of that frame and ``radius`` frames
before and after it (seed 004: 18), since audio is continuous (``context_mean``). The two streams
are trained separately (the kit's ``v_only`` / ``a_only`` heads through ``train_head``: the paper
does not say how its two MLPs were trained) and their class probabilities are mixed for each
``lambda`` (``lambda_scores``): 0 = audio alone, 1 = vision alone.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from kitlib.fusion.table import FrameTable
from kitlib.metrics import macro_f1
from kitlib.store import RowView


def context_mean(values: np.ndarray | RowView, mask: np.ndarray, offsets: np.ndarray, *,
                 radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the mean of ``values`` over the rows ``t - radius .. t + radius`` of its own track
    whose ``mask`` is True: ``(means (N, D) float16, any (N,) bool)``. Rows with no such neighbour get 0.

    ``values`` may be a memory-mapped ``RowView``: it is read one track at a time.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    mask = np.asarray(mask, dtype=bool)
    offsets = np.asarray(offsets, dtype=np.int64)
    out = np.zeros((len(mask), values.shape[1]), dtype=np.float16)
    found = np.zeros(len(mask), dtype=bool)
    for a, b in zip(offsets[:-1], offsets[1:]):
        if b == a:
            continue
        rows = np.arange(b - a)
        lo, hi = np.maximum(rows - radius, 0), np.minimum(rows + radius + 1, b - a)
        keep = mask[a:b]
        count = np.r_[0, np.cumsum(keep)]
        count = count[hi] - count[lo]
        prefix = np.zeros((b - a + 1, values.shape[1]))
        np.cumsum(np.asarray(values[a:b], dtype=np.float64) * keep[:, None], axis=0, out=prefix[1:])
        out[a:b] = (prefix[hi] - prefix[lo]) / np.maximum(count, 1)[:, None]
        found[a:b] = count > 0
    return out, found


def with_audio_context(table: FrameTable, *, radius: int) -> FrameTable:
    """``table`` with each frame's audio replaced by its ``context_mean`` over +-``radius`` frames (in memory)."""
    audio, audio_mask = context_mean(table.audio, table.audio_mask, table.offsets, radius=radius)
    return dataclasses.replace(table, audio=audio, audio_mask=audio_mask)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def lambda_scores(visual_logits: np.ndarray, audio_logits: np.ndarray, labels: np.ndarray,
                  lambdas: Sequence[float]) -> pd.DataFrame:
    """Eq. 6 for each ``lambda``: accuracy and macro F1 of ``argmax(lambda P_v + (1 - lambda) P_a)``
    over the frames with a label (``P`` = softmax of each stream's logits)."""
    bad = [lam for lam in lambdas if not 0.0 <= lam <= 1.0]
    if bad:
        raise ValueError(f"lambda must lie in [0, 1], got {bad}")
    p_v, p_a = softmax(np.asarray(visual_logits, np.float64)), softmax(np.asarray(audio_logits, np.float64))
    valid = np.asarray(labels) >= 0
    rows = []
    for lam in lambdas:
        pred = (lam * p_v + (1.0 - lam) * p_a).argmax(axis=1)
        rows.append({"lambda": float(lam), "accuracy": float((pred[valid] == labels[valid]).mean()),
                     "f1": macro_f1(labels, pred)})
    return pd.DataFrame(rows, columns=["lambda", "accuracy", "f1"])
