"""Audio features to video frames (seed 000 sec. 3.2.2, eq. 8; Table 2).

``align_to_frames``: ``f_t = mean_{tau in Omega_t} z_tau`` with ``Omega_t`` the audio frames whose
centre lies in a window of total length ``align_window_s`` centred on video frame ``t`` (0.50 s in
the final system, 0.25 / 0.75 s and nearest-neighbour in Table 2).

Two window conventions are in use, and the kit names them apart: the TOTAL length (the kit's
``audio.align_window_total_s``: 0.5 s = frame +- 0.25 s) and the HALF-WIDTH (the reference code's
``WIN_SEC``, ``audio.align_window_half_s``: 0.5 s = frame +- 0.5 s, a 1.0 s window).
``window_total_s`` converts; ``align_to_frames`` always takes the total length.
``interpolate_to_frames``: seed 004 (sec. 4.2) instead resamples the encoder's output sequence to
the video frame times by linear interpolation (``align: interpolate``, a row of Table 2 too).
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def _range_means(features: np.ndarray, lo: np.ndarray, hi: np.ndarray, *, block: int = 128) -> np.ndarray:
    """Mean of ``features[lo[i]:hi[i]]`` for every i (zeros where empty), from float64 prefix sums."""
    count = (hi - lo).astype(np.float64)[:, None]
    out = np.zeros((len(lo), features.shape[1]), dtype=np.float32)
    for col in range(0, features.shape[1], block):  # column blocks bound the float64 prefix's memory
        prefix = np.zeros((len(features) + 1, min(block, features.shape[1] - col)), dtype=np.float64)
        np.cumsum(features[:, col:col + block], axis=0, dtype=np.float64, out=prefix[1:])
        out[:, col:col + block] = (prefix[hi] - prefix[lo]) / np.maximum(count, 1.0)
    return out


WINDOW_CONVENTIONS = ("total", "half_width")
EMPTY_WINDOW = ("mask", "nearest")


def window_total_s(seconds: float, convention: str) -> float:
    """The total window length of a window given as ``total`` length or as ``half_width``."""
    if convention not in WINDOW_CONVENTIONS:
        raise ValueError(f"unknown window convention {convention!r}; choose one of {', '.join(WINDOW_CONVENTIONS)}")
    return float(seconds) * (2.0 if convention == "half_width" else 1.0)


def frame_centre_times(n_frames: int, fps: float) -> np.ndarray:
    """``(i + 0.5) / fps`` for frames i = 0..n-1: the reference code's frame times (centres at a nominal fps)."""
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return (np.arange(n_frames, dtype=np.float64) + 0.5) / float(fps)


def align_to_frames(features: np.ndarray, feature_times: np.ndarray, frame_times: np.ndarray, *,
                    method: str = "window", align_window_s: float = 0.5,
                    nearest_max_gap_s: float | None = None, empty: str = "mask") -> tuple[np.ndarray, np.ndarray]:
    """One audio feature per video frame: ``(aligned (N, D) float32, mask (N,) bool)``.

    ``window`` (eq. 8): the mean of the audio frames whose time lies in
    ``[t - align_window_s/2, t + align_window_s/2]`` (both ends included): ``align_window_s`` is
    the TOTAL window length centred on the frame time ``t``, so 0.5 s averages the frames within
    +-0.25 s (about 25 wav2vec2 frames). Near the ends of the audio the window holds fewer frames
    and the mean is over those.

    ``nearest``: the audio frame whose time is closest to ``t``, provided it is within
    ``nearest_max_gap_s`` (default: one audio hop, the median spacing of ``feature_times``, i.e.
    20 ms). Inside the audio every frame time is within half a hop of a feature; the full hop
    keeps the frames at the very edges of the audio and masks those beyond it.

    Frames with no audio (window empty, or no feature near enough) get zeros and ``mask`` False:
    audio shorter than the video, starting late, or missing. With ``empty="nearest"`` (the reference
    code's ``FALLBACK_EMPTY``) an empty window instead takes the nearest encoder step (equally near:
    the earlier) and counts as audio, whenever the track has any audio at all.
    """
    if empty not in EMPTY_WINDOW:
        raise ValueError(f"empty must be one of {', '.join(EMPTY_WINDOW)}, got {empty!r}")
    features = np.asarray(features, dtype=np.float32)
    feature_times = np.asarray(feature_times, dtype=np.float64)
    frame_times = np.asarray(frame_times, dtype=np.float64)
    if features.ndim != 2 or feature_times.shape != (len(features),):
        raise ValueError(f"features {features.shape} and feature_times {feature_times.shape} must be (T, D) and (T,)")
    if frame_times.ndim != 1:
        raise ValueError(f"frame_times must be 1-D, got shape {frame_times.shape}")
    if len(feature_times) > 1 and np.any(np.diff(feature_times) < 0):
        raise ValueError("feature_times must be sorted in increasing order")
    n, dim = len(frame_times), features.shape[1]
    if len(features) == 0:
        return np.zeros((n, dim), dtype=np.float32), np.zeros(n, dtype=bool)

    if method == "window":
        if align_window_s <= 0:
            raise ValueError(f"align_window_s must be > 0, got {align_window_s}")
        half = align_window_s / 2
        lo = np.searchsorted(feature_times, frame_times - half, side="left")
        hi = np.searchsorted(feature_times, frame_times + half, side="right")
        aligned, mask = _range_means(features, lo, hi), hi > lo
        if empty == "nearest" and not mask.all():
            fill, _ = align_to_frames(features, feature_times, frame_times[~mask], method="nearest",
                                      nearest_max_gap_s=np.inf)
            aligned[~mask], mask = fill, np.ones(n, dtype=bool)
        return aligned, mask

    if method == "nearest":
        if nearest_max_gap_s is None:
            nearest_max_gap_s = float(np.median(np.diff(feature_times))) if len(feature_times) > 1 else np.inf
        right = np.clip(np.searchsorted(feature_times, frame_times), 1, len(feature_times) - 1) \
            if len(feature_times) > 1 else np.zeros(n, dtype=np.int64)
        left = np.maximum(right - 1, 0)
        take_left = np.abs(frame_times - feature_times[left]) <= np.abs(feature_times[right] - frame_times)
        idx = np.where(take_left, left, right)
        mask = np.abs(feature_times[idx] - frame_times) <= nearest_max_gap_s + 1e-9
        aligned = np.where(mask[:, None], features[idx], 0.0).astype(np.float32)
        return aligned, mask

    if method == "interpolate":
        return interpolate_to_frames(features, feature_times, frame_times, max_gap_s=nearest_max_gap_s)

    raise ValueError(f"method must be 'window', 'nearest' or 'interpolate', got {method!r}")


def interpolate_to_frames(features: np.ndarray, feature_times: np.ndarray, frame_times: np.ndarray, *,
                          max_gap_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of the audio feature sequence at the video frame times (seed 004 sec. 4.2):
    ``(aligned (N, D) float32, mask (N,) bool)``.

    A frame time between two feature times gets ``(1 - a) z_i + a z_{i+1}``, ``a`` its relative
    position; one before the first (after the last) feature takes that feature, like ``np.interp``,
    if it lies within ``max_gap_s`` of it (default: one audio hop, as for ``nearest``). Frames
    farther outside the audio get zeros and ``mask`` False.
    """
    features = np.asarray(features, dtype=np.float32)
    feature_times = np.asarray(feature_times, dtype=np.float64)
    frame_times = np.asarray(frame_times, dtype=np.float64)
    n, dim = len(frame_times), features.shape[1]
    if len(features) == 0:
        return np.zeros((n, dim), dtype=np.float32), np.zeros(n, dtype=bool)
    if max_gap_s is None:
        max_gap_s = float(np.median(np.diff(feature_times))) if len(feature_times) > 1 else np.inf
    mask = (frame_times >= feature_times[0] - max_gap_s - 1e-9) & (frame_times <= feature_times[-1] + max_gap_s + 1e-9)
    if len(features) == 1:
        return np.where(mask[:, None], features[[0] * n], 0.0).astype(np.float32), mask
    t = np.clip(frame_times, feature_times[0], feature_times[-1])
    right = np.clip(np.searchsorted(feature_times, t, side="right"), 1, len(feature_times) - 1)
    left = right - 1
    span = feature_times[right] - feature_times[left]
    alpha = np.divide(t - feature_times[left], span, out=np.zeros(n), where=span > 0)[:, None]
    aligned = (1.0 - alpha) * features[left] + alpha * features[right]
    return np.where(mask[:, None], aligned, 0.0).astype(np.float32), mask


