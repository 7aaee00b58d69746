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


def context_mean(values: np.ndarray, mask: np.ndarray, offsets: np.ndarray, *, radius: int,
                 block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the mean of ``values`` over the rows ``t - radius .. t + radius`` of its own track
    whose ``mask`` is True: ``(means (N, D) float16, any (N,) bool)``. Rows with no such neighbour get 0."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    values_mask = np.asarray(mask, dtype=bool)
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(values_mask)
    track = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    rows = np.arange(n)
    lo = np.maximum(rows - radius, offsets[track])
    hi = np.minimum(rows + radius + 1, offsets[track + 1])
    count_prefix = np.r_[0, np.cumsum(values_mask)]
    count = count_prefix[hi] - count_prefix[lo]
    out = np.zeros((n, values.shape[1]), dtype=np.float16)
    for col in range(0, values.shape[1], block):      # column blocks bound the float64 prefix's memory
        part = np.asarray(values[:, col:col + block], dtype=np.float64) * values_mask[:, None]
        prefix = np.zeros((n + 1, part.shape[1]))
        np.cumsum(part, axis=0, out=prefix[1:])
        out[:, col:col + block] = (prefix[hi] - prefix[lo]) / np.maximum(count, 1)[:, None]
    return out, count > 0


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
