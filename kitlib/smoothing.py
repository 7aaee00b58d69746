"""Inference-time temporal smoothing of frame logits (seed 000, sec. 3.2.5, eqs. 14-16; sec. 4.7, Fig. 4, Table 4).

Within one video, frame ``t``'s logits are replaced by a statistic of the logits in the centred
window ``N(t) = {t-k, ..., t+k}`` of odd size ``window = 2k+1`` (eq. 14), and the prediction is the
argmax of the smoothed logits (eq. 16). Strategies:

- ``median``   per-class median over the window (eq. 15, the paper's choice, window 101);
- ``mean``     per-class mean;
- ``gaussian`` per-class weighted mean, weights ``exp(-d^2 / (2 sigma^2))`` for offset ``d``;
  ``sigma`` defaults to ``window / 6`` so that the window spans +-3 sigma;
- ``vote``     hard voting: each frame votes for its argmax class; the smoothed "logits" are the
  window's class counts, so the prediction is the majority class. Ties go to the LOWER class
  index (``np.argmax`` takes the first maximum).

Edge behaviour (all strategies): the window is TRUNCATED at the video's edges: only frames inside
the video count, and the statistic is taken over those (a median over an even number of frames is
the mean of the two middle values, as ``np.median``; Gaussian weights are renormalised over the
frames that are inside). Windows never cross from one video into another. ``window == 1`` is the
identity; an even window is an error.

Speed: the sweep of Fig. 4 (4 strategies x 102 windows) over ~1.5 M frames must take well under a
minute on 2 cores. All videos are packed once, with zero rows between them, so windows never
cross videos. Mean and vote use cumulative sums (O(N) per window), Gaussian a direct symmetric
weighted sum vectorised over the classes (numba), median a running sorted window (numba; O(N *
window) worst case on i.i.d. noise, far less on temporally smooth logits), in parallel over
(video, class). The sweep only needs the argmax, so it skips the normalisations that
are the same for every class.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

import numba
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kitlib.metrics import per_class_f1

log = logging.getLogger("kitlib.smoothing")

STRATEGIES: tuple[str, ...] = ("mean", "median", "gaussian", "vote")
SWEEP_WINDOWS: range = range(3, 206, 2)  # Fig. 4: 3..205 frames in steps of 2


def half_width(window: int) -> int:
    """``k`` of a window of odd size ``2k+1``; anything else is a ValueError."""
    if isinstance(window, bool) or int(window) != window or window < 1 or window % 2 == 0:
        raise ValueError(f"smooth window must be an odd number of frames >= 1 (2k+1), got {window!r}")
    return int(window) // 2


def gaussian_weights(window: int, *, sigma: float | None = None) -> np.ndarray:
    """The Gaussian window's weights ``exp(-d^2 / (2 sigma^2))`` for ``d = -k..k`` (sigma defaults to window/6)."""
    k = half_width(window)
    sigma = window / 6.0 if sigma is None else float(sigma)
    if not sigma > 0:
        raise ValueError(f"gaussian sigma must be > 0, got {sigma}")
    d = np.arange(-k, k + 1, dtype=np.float64)
    return np.exp(-(d**2) / (2.0 * sigma**2))


# ----------------------------------------------------------------------------- running median (numba)


@numba.njit(cache=True, nogil=True)
def _insert(buf, m, value):
    i = m
    while i > 0 and buf[i - 1] > value:
        buf[i] = buf[i - 1]
        i -= 1
    buf[i] = value
    return m + 1


@numba.njit(cache=True, nogil=True)
def _find(buf, m, value):
    lo, hi = 0, m
    while lo < hi:
        mid = (lo + hi) // 2
        if buf[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def _delete(buf, m, value):
    for i in range(_find(buf, m, value), m - 1):
        buf[i] = buf[i + 1]
    return m - 1


@numba.njit(cache=True, nogil=True)
def _replace(buf, m, old, new):
    i = _find(buf, m, old)
    if new >= old:
        while i + 1 < m and buf[i + 1] < new:
            buf[i] = buf[i + 1]
            i += 1
    else:
        while i > 0 and buf[i - 1] > new:
            buf[i] = buf[i - 1]
            i -= 1
    buf[i] = new


@numba.njit(cache=True, nogil=True)
def _median_one(x, k, y):
    """Truncated-window running median of one 1-D signal ``x`` into ``y`` (a sorted buffer slides along)."""
    n = x.shape[0]
    buf = np.empty(min(n, 2 * k + 1), dtype=x.dtype)
    m = 0
    for j in range(min(k + 1, n)):
        m = _insert(buf, m, x[j])
    for t in range(n):
        h = m // 2
        if m % 2 == 1:
            y[t] = buf[h]
        else:
            y[t] = 0.5 * (buf[h - 1] + buf[h])
        enter = t + k + 1
        leave = t - k
        if enter < n and leave >= 0:
            _replace(buf, m, x[leave], x[enter])
        elif enter < n:
            m = _insert(buf, m, x[enter])
        elif leave >= 0:
            m = _delete(buf, m, x[leave])


@numba.njit(parallel=True, cache=True, nogil=True)
def _median_videos(values, offsets, k, out):
    """``values`` (C, N) holds the videos one after another (``offsets``); runs ``_median_one`` per (video, class)."""
    n_classes = values.shape[0]
    n_videos = offsets.shape[0] - 1
    for job in numba.prange(n_classes * n_videos):
        c = job % n_classes
        v = job // n_classes
        _median_one(values[c, offsets[v]:offsets[v + 1]], k, out[c, offsets[v]:offsets[v + 1]])


@numba.njit(parallel=True, cache=True, nogil=True)
def _argmax_window_sums(cs, at, k, pred):
    """``pred[i] = argmax_c (cs[at[i]+k+1, c] - cs[at[i]-k, c])``: window sums from cumulative sums."""
    for i in numba.prange(at.shape[0]):
        hi = cs[at[i] + k + 1]
        lo = cs[at[i] - k]
        best = 0
        top = hi[0] - lo[0]
        for c in range(1, cs.shape[1]):
            v = hi[c] - lo[c]
            if v > top:
                top = v
                best = c
        pred[i] = best


@numba.njit(parallel=True, cache=True, nogil=True)
def _weighted_sums(packed, at, half_weights, out):
    """``out[i] = sum_{|d|<=k} w_|d| * packed[at[i] + d]`` (symmetric weights, zero rows outside videos)."""
    k = half_weights.shape[0] - 1
    n_classes = packed.shape[1]
    for i in numba.prange(at.shape[0]):
        p = at[i]
        for c in range(n_classes):
            out[i, c] = half_weights[0] * packed[p, c]
        for d in range(1, k + 1):
            w = half_weights[d]
            for c in range(n_classes):
                out[i, c] += w * (packed[p + d, c] + packed[p - d, c])


# ----------------------------------------------------------------------------- all strategies


class _Smoother:
    """The logits of many videos, packed once, with what every window reuses cached.

    Packed layout: videos one after another with ``gap`` zero rows before, between and after them
    (``gap`` >= the largest half-width used), so that sums and convolutions over the packed array
    are exactly the truncated per-video windows.
    """

    def __init__(self, logits: Sequence[np.ndarray], *, max_half_width: int, dtype=np.float64):
        lengths = np.array([len(x) for x in logits], dtype=np.int64)
        self.num_classes = int(logits[0].shape[1])
        self.offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)  # in the unpacked concatenation
        self.gap = max(int(max_half_width), 1)
        self.dtype = dtype
        starts = self.gap + np.r_[0, np.cumsum(lengths + self.gap)[:-1]]  # packed start of each video
        n = int(self.offsets[-1])
        self.rows = np.repeat(starts - self.offsets[:-1], lengths) + np.arange(n)  # packed row of each frame
        self.length = int(starts[-1] + lengths[-1] + self.gap) if len(lengths) else self.gap
        self.frames = np.concatenate(logits).astype(dtype, copy=False)  # (N, C) unpacked
        self._cache: dict[str, np.ndarray] = {}

    def _packed(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros((self.length, values.shape[1]), dtype=values.dtype)
        out[self.rows] = values
        return out

    def _cumsum(self, name: str) -> np.ndarray:
        """Cumulative sums over the packed rows, with a leading zero row (float64 / int64: exact enough)."""
        if name not in self._cache:
            if name == "mean":
                packed = self._packed(self.frames.astype(np.float64))
            elif name == "vote":
                packed = self._packed(np.eye(self.num_classes, dtype=np.int32)[self.frames.argmax(1)])
            else:  # "count": frames inside a video
                packed = self._packed(np.ones((len(self.frames), 1), dtype=np.int32))
            cs = np.zeros((self.length + 1, packed.shape[1]), dtype=np.int64 if packed.dtype.kind == "i" else np.float64)
            np.cumsum(packed, axis=0, out=cs[1:])
            self._cache[name] = cs
        return self._cache[name]

    def _window_sum(self, name: str, k: int, at: np.ndarray) -> np.ndarray:
        cs = self._cumsum(name)
        return cs[at + k + 1] - cs[at - k]

    def _packed_cached(self, name: str) -> np.ndarray:
        if name not in self._cache:
            values = self.frames if name == "gaussian" else np.ones((len(self.frames), 1), dtype=self.dtype)
            self._cache[name] = self._packed(values)
        return self._cache[name]

    def _gaussian_sum(self, name: str, weights: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Gaussian-weighted window sums at packed rows ``at``, (len(at), C), accumulated in float64."""
        packed = self._packed_cached(name)
        out = np.empty((len(at), packed.shape[1]), dtype=np.float64)
        _weighted_sums(packed, at, np.ascontiguousarray(weights[len(weights) // 2:]), out)
        return out

    def argmax_window_sum(self, name: str, k: int, at: np.ndarray) -> np.ndarray:
        """Argmax over classes of the ``mean`` / ``vote`` window sums at packed rows ``at``."""
        pred = np.empty(len(at), dtype=np.int64)
        _argmax_window_sums(self._cumsum(name), at, k, pred)
        return pred

    def median(self, k: int) -> np.ndarray:
        """Per-class truncated-window medians of every frame, (N, C) in ``self.dtype``."""
        if "median_values" not in self._cache:
            self._cache["median_values"] = np.ascontiguousarray(self.frames.T)
        values = self._cache["median_values"]
        out = np.empty_like(values)
        _median_videos(values, self.offsets, k, out)
        return out.T

    def smoothed(self, k: int, strategy: str, *, sigma: float | None = None, frames: np.ndarray | None = None,
                 normalised: bool = True) -> np.ndarray:
        """Smoothed logits (N, C) of every frame, or of the unpacked frame numbers ``frames``.

        ``normalised=False`` leaves out the per-frame division that is the same for every class
        (window counts, Gaussian weight sums): the argmax is unchanged, and it is cheaper.
        """
        if k > self.gap:
            raise ValueError(f"half-width {k} exceeds the packing gap {self.gap}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown smoothing strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        at = self.rows if frames is None else self.rows[frames]
        if k == 0:
            out = self.frames if frames is None else self.frames[frames]
            if strategy == "vote":
                out = np.eye(self.num_classes, dtype=self.dtype)[out.argmax(1)]
            return out
        if strategy == "median":
            out = self.median(k)
            return out if frames is None else out[frames]
        if strategy == "vote":
            return self._window_sum("vote", k, at)
        if strategy == "mean":
            total = self._window_sum("mean", k, at)
            return total / self._window_sum("count", k, at) if normalised else total
        weights = gaussian_weights(2 * k + 1, sigma=sigma)
        total = self._gaussian_sum("gaussian", weights, at)
        return total / self._gaussian_sum("gaussian_norm", weights, at) if normalised else total


def _checked(logits: np.ndarray, name: str = "logits") -> np.ndarray:
    logits = np.asarray(logits)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"{name}: expected a non-empty (frames, classes) array, got shape {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError(f"{name}: logits contain NaN or inf")
    return logits


def _work_dtype(logits: np.ndarray):
    return np.float64 if logits.dtype == np.float64 else np.float32


def smooth_logits(logits: np.ndarray, window: int, strategy: str, *, sigma: float | None = None) -> np.ndarray:
    """Smooth the (N, C) logits of ONE video with a centred, edge-truncated window (eqs. 14-15).

    Returns (N, C) in float32 (float64 if ``logits`` is float64); for ``vote`` the window's class
    counts. ``sigma`` is only used by ``gaussian``.
    """
    k = half_width(window)
    logits = _checked(logits)
    return _Smoother([logits], max_half_width=k, dtype=_work_dtype(logits)).smoothed(
        k, strategy, sigma=sigma).astype(_work_dtype(logits), copy=False)


def smooth_tracks(logits_by_track: Mapping[str, np.ndarray], window: int, strategy: str, *,
                  sigma: float | None = None) -> dict[str, np.ndarray]:
    """``smooth_logits`` applied to every video (windows never cross videos), all in one pass."""
    k = half_width(window)
    names = list(logits_by_track)
    if not names:
        return {}
    arrays = [_checked(logits_by_track[n], n) for n in names]
    dtype = _work_dtype(arrays[0])
    smoother = _Smoother(arrays, max_half_width=k, dtype=dtype)
    out = smoother.smoothed(k, strategy, sigma=sigma).astype(dtype, copy=False)
    log.info("smoothed %d videos, %d frames: %s window %d", len(names), len(out), strategy, window)
    return {n: out[a:b] for n, a, b in zip(names, smoother.offsets[:-1], smoother.offsets[1:])}


def _macro_f1_valid(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    return float(per_class_f1(y_true, y_pred, num_classes).mean())


def sweep(logits_by_track: Mapping[str, np.ndarray], labels_by_track: Mapping[str, np.ndarray], *,
          windows: Iterable[int] = SWEEP_WINDOWS, strategies: Sequence[str] = STRATEGIES,
          sigma: float | None = None, progress: bool = True) -> pd.DataFrame:
    """Macro F1 of every (strategy, window) over all videos (Fig. 4 / Table 4).

    ``labels_by_track`` holds per-frame labels (-1 invalid) aligned to the logits. The result has
    columns ``strategy, window, f1, seconds``; its first row is the single-frame baseline
    (strategy ``"none"``, window 1). ``seconds`` is the time taken by that row's smoothing + scoring.
    """
    windows = [int(w) for w in windows]
    ks = [half_width(w) for w in windows]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown smoothing strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    names = list(logits_by_track)
    missing = sorted(set(names) ^ set(labels_by_track))
    if missing:
        raise ValueError(f"logits and labels must cover the same tracks; these are in only one of them: {missing[:10]}")
    arrays = [_checked(logits_by_track[n], n).astype(np.float32, copy=False) for n in names]
    labels = []
    for n, x in zip(names, arrays):
        y = np.asarray(labels_by_track[n]).ravel()
        if len(y) != len(x):
            raise ValueError(f"{n}: {len(x)} frames of logits but {len(y)} labels")
        labels.append(y)
    y_all = np.concatenate(labels).astype(np.int64)
    valid = np.flatnonzero(y_all >= 0)
    y_true = y_all[valid]
    num_classes = arrays[0].shape[1]
    smoother = _Smoother(arrays, max_half_width=max(ks, default=0), dtype=np.float32)
    log.info("smoothing sweep: %d videos, %d frames (%d labelled), %d strategies x %d windows",
             len(names), len(y_all), len(valid), len(strategies), len(windows))

    t0 = time.perf_counter()
    rows = [{"strategy": "none", "window": 1,
             "f1": _macro_f1_valid(y_true, smoother.frames[valid].argmax(1), num_classes),
             "seconds": time.perf_counter() - t0}]
    jobs = [(s, w, k) for s in strategies for w, k in zip(windows, ks)]
    for strategy, window, k in tqdm(jobs, desc="smoothing sweep", unit="window", disable=not progress):
        t0 = time.perf_counter()
        if strategy == "median":
            pred = smoother.median(k)[valid].argmax(1) if k else smoother.frames[valid].argmax(1)
        elif strategy in ("mean", "vote") and k:
            pred = smoother.argmax_window_sum(strategy, k, smoother.rows[valid])
        else:
            pred = smoother.smoothed(k, strategy, sigma=sigma, frames=valid, normalised=False).argmax(1)
        rows.append({"strategy": strategy, "window": window, "f1": _macro_f1_valid(y_true, pred, num_classes),
                     "seconds": time.perf_counter() - t0})
    table = pd.DataFrame(rows, columns=["strategy", "window", "f1", "seconds"])
    best = table.loc[table["f1"].idxmax()]
    log.info("smoothing sweep done in %.1f s: best %s window %d F1 %.4f (single frame %.4f)",
             table["seconds"].sum(), best["strategy"], best["window"], best["f1"], table["f1"].iloc[0])
    return table
