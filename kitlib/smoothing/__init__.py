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
identity; an even window is an error. ``edge="replicate"`` (the reference code's choice for Table 4 /
Fig. 4) instead repeats a video's first and last frames beyond its ends, so every window holds
``window`` frames. ``sigma_divisor`` sets the Gaussian's ``sigma = window / sigma_divisor`` (6: +-3
sigma, the kit's default; 4: the reference code's ``w/4``). Frames marked imputed (features copied
from a neighbour, ``fusion.impute_nearest``) are skipped inside windows by ``kitlib.smoothing.masked``.

Speed: the sweep of Fig. 4 (4 strategies x 102 windows) over ~1.5 M frames must take well under a
minute on 2 cores. The sweep computes every window of a strategy in ONE parallel pass over the
labelled frames (numba ``prange``; frames with label -1 are never smoothed, they are not scored),
keeps only the argmax per (frame, window) as int8, and scores all windows from confusion matrices:

- mean / vote: cumulative sums over the packed videos (zero rows between videos), so a window sum
  is one subtraction;
- gaussian: per frame, the symmetric pair sums ``x[t+d] + x[t-d]`` are formed once and every
  window's weighted sum reads them (direct sums, no FFT; float64 accumulation);
- median: frames are cut into blocks of 256 frames of one video; per block and class the logits
  of the block +- k_max are rank-transformed once (argsort). For one centre the window then GROWS
  by one frame on each side per step, the window's ranks live in a two-level bitset (64-bit words
  + summary words, a few words: always in L1), and the lower median is tracked as a rank that
  moves by at most one set element per step (successor / predecessor with count-trailing /
  leading-zeros, branch-free in the common case: on noisy logits every comparison is a coin flip).
  Every window size of the sweep costs O(1) per (frame, class), i.e. O(N * C * k_max) for the
  whole sweep, independent of the data (i.i.d. noise included).

Values are exact selections / the same sums as the brute-force reference (tests compare every
strategy against it). The sweep only needs the argmax, so it skips the normalisations that are
the same for every class (window counts, Gaussian weight sums).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

import numba
import numpy as np
import pandas as pd
from kitlib.progress import tqdm

from kitlib.metrics import f1_from_confusion
from kitlib.smoothing.kernels import (_argmax_window_sums, _confusion_parts, _median_blocks, _weighted_argmax,
                                      _weighted_sums)

log = logging.getLogger(__name__)


STRATEGIES: tuple[str, ...] = ("mean", "median", "gaussian", "vote")
SWEEP_WINDOWS: range = range(3, 206, 2)  # Fig. 4: 3..205 frames in steps of 2
_MEDIAN_BLOCK = 256  # frames per median block: its logits +- k_max are ranked once, its bitsets are a few words


def half_width(window: int) -> int:
    """``k`` of a window of odd size ``2k+1``; anything else is a ValueError."""
    if isinstance(window, bool) or int(window) != window or window < 1 or window % 2 == 0:
        raise ValueError(f"smooth window must be an odd number of frames >= 1 (2k+1), got {window!r}")
    return int(window) // 2


EDGES: tuple[str, ...] = ("truncate", "replicate")


def gaussian_weights(window: int, *, sigma: float | None = None, sigma_divisor: float = 6.0) -> np.ndarray:
    """The Gaussian window's weights ``exp(-d^2 / (2 sigma^2))`` for ``d = -k..k`` (sigma defaults to
    ``window / sigma_divisor``)."""
    k = half_width(window)
    sigma = window / float(sigma_divisor) if sigma is None else float(sigma)
    if not sigma > 0:
        raise ValueError(f"gaussian sigma must be > 0, got {sigma}")
    d = np.arange(-k, k + 1, dtype=np.float64)
    return np.exp(-(d**2) / (2.0 * sigma**2))


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
        self.video_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # video of each frame
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
        """``gaussian``: the packed frames in float64; ``gaussian_norm``: packed ones (frames inside a video)."""
        if name not in self._cache:
            values = self.frames if name == "gaussian" else np.ones((len(self.frames), 1))
            self._cache[name] = self._packed(values.astype(np.float64))
        return self._cache[name]

    def _gaussian_sum(self, name: str, weights: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Gaussian-weighted window sums at packed rows ``at``, (len(at), C), accumulated in float64."""
        packed = self._packed_cached(name)
        out = np.empty((len(at), packed.shape[1]), dtype=np.float64)
        _weighted_sums(packed, at, np.ascontiguousarray(weights[len(weights) // 2:]), out)
        return out

    def _median_blocks(self, ks: np.ndarray, frames: np.ndarray, *, pred: np.ndarray, out: np.ndarray) -> None:
        """Run ``_median_blocks`` over the unpacked ``frames`` (sorted) for the half-widths ``ks``."""
        if "median_values" not in self._cache:
            self._cache["median_values"] = np.ascontiguousarray(self.frames.T)
        frames = np.asarray(frames, dtype=np.int64)
        if len(frames) == 0:
            return
        if np.any(np.diff(frames) < 0):
            raise ValueError("median: frames must be sorted")
        video = self.video_of[frames]
        key = video * (int(self.offsets[-1]) + 1) + (frames - self.offsets[video]) // _MEDIAN_BLOCK
        block_starts = np.r_[0, np.flatnonzero(np.diff(key)) + 1, len(frames)].astype(np.int64)
        slot_of_k = np.full(int(ks.max(initial=0)) + 1, -1, dtype=np.int64)
        slot_of_k[ks] = np.arange(len(ks))
        with numba.parallel_chunksize(1):
            _median_blocks(self._cache["median_values"], self.offsets, self.video_of, frames, block_starts,
                           slot_of_k, pred, out)

    def median(self, k: int, frames: np.ndarray | None = None) -> np.ndarray:
        """Per-class truncated-window medians, (len(frames), C) in ``self.dtype`` (all frames if None)."""
        centres = np.arange(len(self.frames)) if frames is None else np.asarray(frames, dtype=np.int64)
        out = np.empty((len(centres), self.num_classes), dtype=self.frames.dtype)
        self._median_blocks(np.array([k]), centres, pred=np.empty((0, 1), dtype=np.int8), out=out)
        return out

    def argmax_all_windows(self, strategy: str, ks: np.ndarray, frames: np.ndarray, *,
                           sigma: float | None = None, sigma_divisor: float = 6.0) -> np.ndarray:
        """Predicted class (int8) of each of the unpacked ``frames`` under every half-width of ``ks``
        (distinct, <= ``gap``), (len(frames), len(ks)): the argmax of the (unnormalised) smoothed logits."""
        ks = np.asarray(ks, dtype=np.int64)
        frames = np.asarray(frames, dtype=np.int64)
        pred = np.empty((len(frames), len(ks)), dtype=np.int8)
        if len(ks) and ks.max() > self.gap:
            raise ValueError(f"half-width {ks.max()} exceeds the packing gap {self.gap}")
        at = self.rows[frames]
        if strategy in ("mean", "vote"):
            _argmax_window_sums(self._cumsum(strategy), at, ks, pred)
        elif strategy == "gaussian":
            k_max = int(ks.max(initial=0))
            half = np.zeros((len(ks), k_max + 1))
            for s, k in enumerate(ks):
                half[s, :k + 1] = gaussian_weights(2 * int(k) + 1, sigma=sigma, sigma_divisor=sigma_divisor)[k:]
            with numba.parallel_chunksize(1):
                _weighted_argmax(self._packed_cached("gaussian"), at, ks, half, pred)
        elif strategy == "median":
            self._median_blocks(ks, frames, pred=pred, out=np.empty((0, self.num_classes), dtype=self.frames.dtype))
        else:
            raise ValueError(f"unknown smoothing strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if (ks == 0).any():  # window 1: the frame's own argmax, whatever the strategy
            pred[:, ks == 0] = self.frames[frames].argmax(1)[:, None]
        return pred

    def smoothed(self, k: int, strategy: str, *, sigma: float | None = None, frames: np.ndarray | None = None,
                 normalised: bool = True, sigma_divisor: float = 6.0) -> np.ndarray:
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
            return self.median(k, frames)
        if strategy == "vote":
            return self._window_sum("vote", k, at)
        if strategy == "mean":
            total = self._window_sum("mean", k, at)
            return total / self._window_sum("count", k, at) if normalised else total
        weights = gaussian_weights(2 * k + 1, sigma=sigma, sigma_divisor=sigma_divisor)
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


def replicate_edges(x: np.ndarray, k: int, fill=None) -> np.ndarray:
    """``x`` with ``k`` copies of its first and last rows (or of ``fill``) added before and after."""
    if k == 0:
        return x
    if fill is not None:
        pad = np.full((k, *x.shape[1:]), fill, dtype=x.dtype)
        return np.concatenate([pad, x, pad])
    return np.pad(x, [(k, k)] + [(0, 0)] * (x.ndim - 1), mode="edge")


def _check_edge(edge: str) -> None:
    if edge not in EDGES:
        raise ValueError(f"unknown smoothing edge handling {edge!r}; choose one of {', '.join(EDGES)}")


def smooth_logits(logits: np.ndarray, window: int, strategy: str, *, sigma: float | None = None,
                  edge: str = "truncate", sigma_divisor: float = 6.0) -> np.ndarray:
    """Smooth the (N, C) logits of ONE video with a centred window (eqs. 14-15), truncated or
    edge-replicated at the video's ends (``edge``).

    Returns (N, C) in float32 (float64 if ``logits`` is float64); for ``vote`` the window's class
    counts. ``sigma`` / ``sigma_divisor`` are only used by ``gaussian``.
    """
    k = half_width(window)
    _check_edge(edge)
    logits = _checked(logits)
    padded = replicate_edges(logits, k) if edge == "replicate" else logits
    out = _Smoother([padded], max_half_width=k, dtype=_work_dtype(logits)).smoothed(
        k, strategy, sigma=sigma, sigma_divisor=sigma_divisor).astype(_work_dtype(logits), copy=False)
    return out[k:len(out) - k] if edge == "replicate" else out


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


def _macro_f1(cm: np.ndarray) -> float:
    """Macro F1 from a confusion matrix ``[true, pred]`` (the confusion counts come from numba)."""
    return float(f1_from_confusion(cm).mean())


def _macro_f1_per_window(pred: np.ndarray, y_true: np.ndarray, num_classes: int) -> list[float]:
    """Macro F1 of each column of ``pred`` (frames, windows) against ``y_true`` (all in 0..C-1)."""
    n_parts = max(1, min(64, len(y_true) // 4096))
    cms = _confusion_parts(pred, y_true, num_classes, n_parts).sum(0)
    return [_macro_f1(cm) for cm in cms]


def sweep(logits_by_track: Mapping[str, np.ndarray], labels_by_track: Mapping[str, np.ndarray], *,
          windows: Iterable[int] = SWEEP_WINDOWS, strategies: Sequence[str] = STRATEGIES,
          sigma: float | None = None, progress: bool = True, edge: str = "truncate",
          sigma_divisor: float = 6.0) -> pd.DataFrame:
    """Macro F1 of every (strategy, window) over all videos (Fig. 4 / Table 4).

    ``edge="replicate"``: each video is padded with copies of its edge frames (labelled -1, so not
    scored) as far as the largest window reaches, which makes every window exactly the replicated
    one. ``sigma_divisor``: the Gaussian's ``sigma = window / sigma_divisor``.

    ``labels_by_track`` holds per-frame labels (-1 invalid) aligned to the logits. The result has
    columns ``strategy, window, f1, seconds``; its first row is the single-frame baseline
    (strategy ``"none"``, window 1). Each strategy's windows are computed in one pass, so
    ``seconds`` is that strategy's time (smoothing + scoring) divided evenly over its windows.
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
    num_classes = arrays[0].shape[1]
    labels = []
    for n, x in zip(names, arrays):
        y = np.asarray(labels_by_track[n]).ravel()
        if len(y) != len(x):
            raise ValueError(f"{n}: {len(x)} frames of logits but {len(y)} labels")
        if x.shape[1] != num_classes:
            raise ValueError(f"{n}: {x.shape[1]} classes of logits, the first track has {num_classes}")
        if len(y) and (y.min() < -1 or y.max() >= num_classes):
            raise ValueError(f"{n}: labels must be in 0..{num_classes - 1} or -1 (invalid), "
                             f"found {int(y.min())}..{int(y.max())}")
        labels.append(y)
    _check_edge(edge)
    if edge == "replicate" and ks:
        k_max = max(ks)
        arrays = [replicate_edges(x, k_max) for x in arrays]
        labels = [replicate_edges(np.asarray(y), k_max, fill=-1) for y in labels]
    y_all = np.concatenate(labels).astype(np.int64)
    valid = np.flatnonzero(y_all >= 0)
    y_true = y_all[valid]
    smoother = _Smoother(arrays, max_half_width=max(ks, default=0), dtype=np.float32)
    log.info("smoothing sweep: %d videos, %d frames (%d labelled), %d strategies x %d windows",
             len(names), len(y_all), len(valid), len(strategies), len(windows))

    t0 = time.perf_counter()
    base = np.bincount(y_true * num_classes + smoother.frames[valid].argmax(1), minlength=num_classes**2)
    rows = [{"strategy": "none", "window": 1, "f1": _macro_f1(base.reshape(num_classes, num_classes)),
             "seconds": time.perf_counter() - t0}]
    unique_ks, slot = np.unique(np.array(ks, dtype=np.int64), return_inverse=True)
    for strategy in tqdm(strategies if windows else [], desc="smoothing sweep", unit="strategy", disable=not progress):
        t0 = time.perf_counter()
        pred = smoother.argmax_all_windows(strategy, unique_ks, valid, sigma=sigma, sigma_divisor=sigma_divisor)
        f1 = _macro_f1_per_window(pred, y_true, num_classes)
        seconds = time.perf_counter() - t0
        log.info("smoothing sweep: %s, %d windows x %d frames in %.1f s", strategy, len(unique_ks), len(valid), seconds)
        rows += [{"strategy": strategy, "window": w, "f1": f1[s], "seconds": seconds / len(windows)}
                 for w, s in zip(windows, slot)]
    table = pd.DataFrame(rows, columns=["strategy", "window", "f1", "seconds"])
    best = table.loc[table["f1"].idxmax()]
    log.info("smoothing sweep done in %.1f s: best %s window %d F1 %.4f (single frame %.4f)",
             table["seconds"].sum(), best["strategy"], best["window"], best["f1"], table["f1"].iloc[0])
    return table
