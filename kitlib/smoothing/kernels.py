"""Compiled (numba) kernels of the smoothing sweep: the running median in a two-level bitset,
window sums for mean / vote / Gaussian, and per-window confusion matrices. See ``kitlib.smoothing``.
"""
from __future__ import annotations

import logging

import numba
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros

log = logging.getLogger(__name__)

_MEDIAN_CHUNK = 256  # centres per parallel work item of the weighted-sum kernel
_GAUSS_BLOCK = 64  # centres per block of the Gaussian sweep kernel (its pair sums stay in L1/L2)


# ----------------------------------------------------------------------------- median: ranks in a two-level bitset

_ONE = np.uint64(1)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_ZERO = np.uint64(0)


@numba.njit(cache=True, nogil=True, inline="always")
def _bit(b):
    return _ONE << np.uint64(b)


@numba.njit(cache=True, nogil=True, inline="always")
def _set(b0, b1, c, r):
    w = r >> 6
    b0[c, w] |= _bit(r & 63)
    b1[c, w >> 6] |= _bit(w & 63)


@numba.njit(cache=True, nogil=True, inline="always")
def _lowest(word):
    return np.int64(trailing_zeros(word))


@numba.njit(cache=True, nogil=True, inline="always")
def _highest(word):
    return 63 - np.int64(leading_zeros(word))


@numba.njit(cache=True, nogil=True)
def _succ(b0, b1, c, r):
    """Smallest rank in the set that is > ``r`` (the caller knows one exists)."""
    w = r >> 6
    b = r & 63
    if b < 63:
        word = b0[c, w] & ~(_bit(b + 1) - _ONE)
        if word != _ZERO:
            return (w << 6) + _lowest(word)
    w1 = w >> 6
    b = w & 63
    word = _ZERO
    if b < 63:
        word = b1[c, w1] & ~(_bit(b + 1) - _ONE)
    while word == _ZERO:
        w1 += 1
        word = b1[c, w1]
    w = (w1 << 6) + _lowest(word)
    return (w << 6) + _lowest(b0[c, w])


@numba.njit(cache=True, nogil=True)
def _pred(b0, b1, c, r):
    """Largest rank in the set that is < ``r`` (the caller knows one exists)."""
    w = r >> 6
    b = r & 63
    if b > 0:
        word = b0[c, w] & (_bit(b) - _ONE)
        if word != _ZERO:
            return (w << 6) + _highest(word)
    w1 = w >> 6
    b = w & 63
    word = _ZERO
    if b > 0:
        word = b1[c, w1] & (_bit(b) - _ONE)
    while word == _ZERO:
        w1 -= 1
        word = b1[c, w1]
    w = (w1 << 6) + _highest(word)
    return (w << 6) + _highest(b0[c, w])


@numba.njit(cache=True, nogil=True, inline="always")
def _step(b0, b1, c, lo, diff):
    """Move the lower median ``lo`` one set element down (``diff > 0``), up (``diff < 0``) or not at all.

    The common case, a neighbour in the same 64-bit word, is computed without branches on the data
    (i.i.d. logits make every comparison a coin flip, and mispredicted branches dominated)."""
    w = lo >> 6
    b = lo & 63
    word = b0[c, w]
    above = word & ((_ALL << np.uint64(b)) << _ONE)
    under = word & (_bit(b) - _ONE)
    up = (w << 6) + _lowest(above)
    down = (w << 6) + _highest(under)
    slow = ((diff > 0) & (under == _ZERO)) | ((diff < 0) & (above == _ZERO))  # no short-circuit branches
    if slow:
        return _pred(b0, b1, c, lo) if diff > 0 else _succ(b0, b1, c, lo)
    return lo + (down - lo) * np.int64(diff > 0) + (up - lo) * np.int64(diff < 0)


@numba.njit(cache=True, nogil=True)
def _median_centre(ranks, sorted_values, start, n, t, slot_of_k, med, b0, b1, lo):
    """Truncated-window medians of every class at frame ``t`` of the video ``[start, start+n)``,
    for each half-width ``k`` with ``slot_of_k[k] >= 0`` (into ``med[slot, class]``).

    The window grows from ``{t}`` one frame per side per step; ``lo[c]`` is class ``c``'s lower
    median as a rank, and adding <= 2 ranks moves it by at most one set element of the window.
    The classes advance in lock-step (``k`` outer, class inner) so that their independent
    dependency chains overlap. ``b0`` / ``b1`` (per class) are all-zero on entry and on exit."""
    n_classes = ranks.shape[0]
    k_max = slot_of_k.shape[0] - 1
    for c in range(n_classes):
        lo[c] = ranks[c, start + t]
        _set(b0, b1, c, lo[c])
        if slot_of_k[0] >= 0:
            med[slot_of_k[0], c] = sorted_values[c, start + lo[c]]
    both = min(t, n - 1 - t, k_max)  # steps that add a frame on each side: odd window, no truncation
    for k in range(1, both + 1):
        s = slot_of_k[k]
        for c in range(n_classes):
            r1 = np.int64(ranks[c, start + t - k])
            r2 = np.int64(ranks[c, start + t + k])
            _set(b0, b1, c, r1)
            _set(b0, b1, c, r2)
            x = lo[c]
            x = _step(b0, b1, c, x, np.int64(r1 < x) + np.int64(r2 < x) - 1)
            lo[c] = x
            if s >= 0:
                med[s, c] = sorted_values[c, start + x]
    m = 2 * both + 1
    for k in range(both + 1, k_max + 1):  # the window is truncated on one side (or both)
        left = t - k >= 0
        right = t + k < n
        target_before = (m - 1) // 2
        m += np.int64(left) + np.int64(right)
        target = (m - 1) // 2
        s = slot_of_k[k]
        for c in range(n_classes):
            x = lo[c]
            below = target_before
            if left:
                r = np.int64(ranks[c, start + t - k])
                _set(b0, b1, c, r)
                below += np.int64(r < x)
            if right:
                r = np.int64(ranks[c, start + t + k])
                _set(b0, b1, c, r)
                below += np.int64(r < x)
            x = _step(b0, b1, c, x, below - target)
            lo[c] = x
            if s >= 0:
                if m % 2 == 1:
                    med[s, c] = sorted_values[c, start + x]
                else:
                    med[s, c] = 0.5 * (sorted_values[c, start + x] + sorted_values[c, start + _succ(b0, b1, c, x)])
    for c in range(n_classes):
        for j in range(max(0, t - k_max), min(n, t + k_max + 1)):
            r = np.int64(ranks[c, start + j])
            b0[c, r >> 6] = _ZERO
            b1[c, r >> 12] = _ZERO


@numba.njit(parallel=True, cache=True, nogil=True)
def _median_blocks(values, offsets, video_of, centres, block_starts, slot_of_k, pred, out):
    """Truncated-window medians at the frames ``centres`` (sorted; ``block_starts`` cuts them into
    blocks of nearby frames of one video), for every half-width with ``slot_of_k[k] >= 0``.

    ``pred[i, s]`` gets the argmax over classes for slot ``s`` (if ``pred`` has rows), ``out[i]``
    the medians of slot 0 (if ``out`` has rows). Per block and class, the logits of the block's
    frames +- k_max are rank-transformed once (argsort), so the bitsets span only that segment
    (a few words, always in L1) and ``sorted`` maps a rank back to its logit."""
    n_classes = values.shape[0]
    k_max = slot_of_k.shape[0] - 1
    n_slots = pred.shape[1]
    for block in numba.prange(block_starts.shape[0] - 1):
        i0 = block_starts[block]
        i1 = block_starts[block + 1]
        v = video_of[centres[i0]]
        start = offsets[v]
        n = offsets[v + 1] - start
        seg_lo = max(0, centres[i0] - start - k_max)
        seg_hi = min(n, centres[i1 - 1] - start + k_max + 1)
        size = seg_hi - seg_lo
        ranks = np.empty((n_classes, size), dtype=np.int32)
        ordered = np.empty((n_classes, size), dtype=values.dtype)
        for c in range(n_classes):
            seg = values[c, start + seg_lo:start + seg_hi]
            order = np.argsort(seg)
            for j in range(size):
                ranks[c, order[j]] = j
                ordered[c, j] = seg[order[j]]
        n_words = (size >> 6) + 1
        b0 = np.zeros((n_classes, n_words), dtype=np.uint64)
        b1 = np.zeros((n_classes, (n_words >> 6) + 1), dtype=np.uint64)
        med = np.empty((max(n_slots, 1), n_classes), dtype=values.dtype)
        lo = np.empty(n_classes, dtype=np.int64)
        for i in range(i0, i1):
            _median_centre(ranks, ordered, 0, size, centres[i] - start - seg_lo, slot_of_k, med, b0, b1, lo)
            if out.shape[0] > 0:
                for c in range(n_classes):
                    out[i, c] = med[0, c]
            if pred.shape[0] > 0:
                for s in range(n_slots):
                    best = 0
                    top = med[s, 0]
                    for c in range(1, n_classes):
                        if med[s, c] > top:
                            top = med[s, c]
                            best = c
                    pred[i, s] = best


# ----------------------------------------------------------------------------- mean / vote / gaussian sums


@numba.njit(parallel=True, cache=True, nogil=True)
def _argmax_window_sums(cs, at, ks, pred):
    """``pred[i, s] = argmax_c (cs[at[i]+k+1, c] - cs[at[i]-k, c])`` with ``k = ks[s]``: window sums from cumulative sums."""
    n_classes = cs.shape[1]
    for i in numba.prange(at.shape[0]):
        p = at[i]
        for s in range(ks.shape[0]):
            hi = p + ks[s] + 1
            lo = p - ks[s]
            best = 0
            top = cs[hi, 0] - cs[lo, 0]
            for c in range(1, n_classes):
                v = cs[hi, c] - cs[lo, c]
                if v > top:
                    top = v
                    best = c
            pred[i, s] = best


@numba.njit(cache=True, nogil=True)
def _pair_sums(packed, p, k_max, pairs):
    """``pairs[d] = packed[p + d] + packed[p - d]`` for ``d = 1..k_max`` (float64)."""
    for d in range(1, k_max + 1):
        for c in range(packed.shape[1]):
            pairs[d, c] = packed[p + d, c] + packed[p - d, c]


@numba.njit(cache=True, nogil=True)
def _weighted_sum(packed, p, pairs, half_weights, k, acc):
    """``acc = w_0 * packed[p] + sum_{d=1..k} w_d * pairs[d]``: one centre's symmetric weighted window sum."""
    n_classes = packed.shape[1]
    for c in range(n_classes):
        acc[c] = half_weights[0] * packed[p, c]
    for d in range(1, k + 1):
        w = half_weights[d]
        for c in range(n_classes):
            acc[c] += w * pairs[d, c]


@numba.njit(parallel=True, cache=True, nogil=True)
def _weighted_sums(packed, at, half_weights, out):
    """``out[i] = sum_{|d|<=k} w_|d| * packed[at[i] + d]`` (symmetric weights, zero rows outside videos)."""
    k = half_weights.shape[0] - 1
    n_chunks = (at.shape[0] + _MEDIAN_CHUNK - 1) // _MEDIAN_CHUNK
    for chunk in numba.prange(n_chunks):
        pairs = np.empty((k + 1, packed.shape[1]), dtype=np.float64)
        for i in range(chunk * _MEDIAN_CHUNK, min(at.shape[0], (chunk + 1) * _MEDIAN_CHUNK)):
            _pair_sums(packed, at[i], k, pairs)
            _weighted_sum(packed, at[i], pairs, half_weights, k, out[i])


@numba.njit(parallel=True, cache=True, nogil=True)
def _weighted_argmax(packed, at, ks, half_weights, pred):
    """``pred[i, s]`` = argmax over classes of the weighted window sum at ``at[i]`` with weights
    ``half_weights[s, :ks[s]+1]`` (same arithmetic, in the same order, as ``_weighted_sum``).

    Blocks of ``_GAUSS_BLOCK`` centres: per class, the pair sums ``x[p+d] + x[p-d]`` of the block
    are gathered once into ``pairs[d, centre]`` and every window's sum is then a contiguous,
    vectorised multiply-add over the block."""
    k_max = 0
    for s in range(ks.shape[0]):
        k_max = max(k_max, ks[s])
    n_classes = packed.shape[1]
    n_slots = ks.shape[0]
    n_chunks = (at.shape[0] + _GAUSS_BLOCK - 1) // _GAUSS_BLOCK
    for chunk in numba.prange(n_chunks):
        first = chunk * _GAUSS_BLOCK
        m = min(_GAUSS_BLOCK, at.shape[0] - first)
        pairs = np.empty((k_max + 1, _GAUSS_BLOCK), dtype=np.float64)
        acc = np.empty(_GAUSS_BLOCK, dtype=np.float64)
        top = np.empty((n_slots, _GAUSS_BLOCK), dtype=np.float64)
        best = np.zeros((n_slots, _GAUSS_BLOCK), dtype=np.int8)
        for c in range(n_classes):
            for j in range(m):
                p = at[first + j]
                pairs[0, j] = packed[p, c]
                for d in range(1, k_max + 1):
                    pairs[d, j] = packed[p + d, c] + packed[p - d, c]
            for s in range(n_slots):
                w0 = half_weights[s, 0]
                for j in range(m):
                    acc[j] = w0 * pairs[0, j]
                for d in range(1, ks[s] + 1):
                    w = half_weights[s, d]
                    for j in range(m):
                        acc[j] += w * pairs[d, j]
                if c == 0:
                    for j in range(m):
                        top[s, j] = acc[j]
                else:
                    for j in range(m):
                        if acc[j] > top[s, j]:
                            top[s, j] = acc[j]
                            best[s, j] = c
        for j in range(m):
            for s in range(n_slots):
                pred[first + j, s] = best[s, j]


@numba.njit(parallel=True, cache=True, nogil=True)
def _confusion_parts(pred, y_true, n_classes, n_parts):
    """Per part of the frames, the confusion matrices ``[window slot, true, pred]`` (summed by the caller)."""
    n, n_slots = pred.shape
    parts = np.zeros((n_parts, n_slots, n_classes, n_classes), dtype=np.int64)
    size = (n + n_parts - 1) // n_parts
    for part in numba.prange(n_parts):
        for i in range(part * size, min(n, (part + 1) * size)):
            t = y_true[i]
            for s in range(n_slots):
                parts[part, s, t, pred[i, s]] += 1
    return parts


