"""Temporal smoothing (eqs. 14-16): every strategy against a brute-force truncated-window reference."""
import numpy as np
import pytest

from kitlib.metrics import macro_f1
from kitlib.smoothing import STRATEGIES, gaussian_weights, smooth_logits, smooth_tracks, sweep


def reference(x: np.ndarray, window: int, strategy: str, sigma=None) -> np.ndarray:
    """Per-frame loop over the window truncated at the video edges."""
    k, n = window // 2, len(x)
    votes = x.argmax(1)
    weights = gaussian_weights(window, sigma=sigma)
    out = np.zeros(x.shape, dtype=np.float64)
    for t in range(n):
        lo, hi = max(0, t - k), min(n, t + k + 1)
        seg = x[lo:hi]
        if strategy == "mean":
            out[t] = seg.mean(0)
        elif strategy == "median":
            out[t] = np.median(seg, axis=0)
        elif strategy == "vote":
            out[t] = np.bincount(votes[lo:hi], minlength=x.shape[1])
        else:
            w = weights[lo - (t - k):hi - (t - k)]
            out[t] = (w[:, None] * seg).sum(0) / w.sum()
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("n", [1, 2, 6, 37])
@pytest.mark.parametrize("window", [3, 5, 11, 81])
def test_matches_bruteforce(rng, strategy, n, window):
    x = rng.normal(size=(n, 8))
    np.testing.assert_allclose(smooth_logits(x, window, strategy), reference(x, window, strategy), atol=1e-9)


def test_float32_and_sigma(rng):
    x = rng.normal(size=(50, 8)).astype(np.float32)
    for strategy in STRATEGIES:
        out = smooth_logits(x, 9, strategy)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, reference(x.astype(np.float64), 9, strategy), atol=1e-4)
    np.testing.assert_allclose(smooth_logits(x, 9, "gaussian", sigma=0.7),
                               reference(x.astype(np.float64), 9, "gaussian", sigma=0.7), atol=1e-4)


@pytest.mark.parametrize("strategy", ["mean", "median", "gaussian"])
def test_window_one_is_identity(rng, strategy):
    x = rng.normal(size=(20, 8))
    np.testing.assert_array_equal(smooth_logits(x, 1, strategy), x)


def test_vote_window_one_is_one_hot_and_ties_go_low():
    x = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    np.testing.assert_array_equal(smooth_logits(x, 1, "vote"), np.eye(3)[[1, 2, 0]])
    # frame 0's window holds frames 0-1: one vote each for classes 1 and 2 -> argmax picks 1
    assert smooth_logits(x, 3, "vote")[0].argmax() == 1


@pytest.mark.parametrize("window", [0, 2, 4, -3, 2.5])
def test_bad_window(window):
    with pytest.raises(ValueError, match="odd"):
        smooth_logits(np.zeros((5, 8)), window, "mean")


def test_unknown_strategy_and_nan():
    with pytest.raises(ValueError, match="unknown smoothing strategy"):
        smooth_logits(np.zeros((5, 8)), 3, "mode")
    with pytest.raises(ValueError, match="NaN"):
        smooth_logits(np.full((5, 8), np.nan), 3, "mean")


def test_median_smoothing_helps_noisy_steps(rng):
    labels = np.repeat(rng.integers(0, 8, size=20), 50)
    logits = rng.normal(size=(len(labels), 8))
    logits[np.arange(len(labels)), labels] += 1.0
    before = macro_f1(labels, logits.argmax(1))
    after = macro_f1(labels, smooth_logits(logits, 21, "median").argmax(1))
    assert after > before + 0.2


def test_tracks_do_not_leak_into_each_other(rng):
    a, b = rng.normal(size=(30, 8)), rng.normal(size=(7, 8)) + 100.0
    for strategy in STRATEGIES:
        out = smooth_tracks({"a": a, "b": b}, 11, strategy)
        np.testing.assert_allclose(out["a"], reference(a, 11, strategy), atol=1e-9)
        np.testing.assert_allclose(out["b"], reference(b, 11, strategy), atol=1e-9)


def test_sweep_columns_and_values(rng):
    logits = {f"v{i}": rng.normal(size=(n, 8)).astype(np.float32) for i, n in enumerate([40, 3, 90])}
    labels = {k: rng.integers(-1, 8, size=len(v)) for k, v in logits.items()}
    table = sweep(logits, labels, windows=[3, 7], progress=False)
    assert list(table.columns) == ["strategy", "window", "f1", "seconds"]
    assert len(table) == 1 + 4 * 2
    assert table.iloc[0]["strategy"] == "none" and table.iloc[0]["window"] == 1
    y = np.concatenate(list(labels.values()))
    for strategy in STRATEGIES:
        smoothed = smooth_tracks(logits, 7, strategy)
        expected = macro_f1(y, np.concatenate(list(smoothed.values())).argmax(1))
        got = table[(table.strategy == strategy) & (table.window == 7)]["f1"].item()
        assert got == pytest.approx(expected, abs=1e-6)


def test_sweep_checks_alignment(rng):
    with pytest.raises(ValueError, match="labels"):
        sweep({"a": rng.normal(size=(10, 8))}, {"a": np.zeros(9, dtype=int)}, windows=[3], progress=False)
    with pytest.raises(ValueError, match="same tracks"):
        sweep({"a": rng.normal(size=(10, 8))}, {"b": np.zeros(10, dtype=int)}, windows=[3], progress=False)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_all_windows_pass_matches_bruteforce(rng, strategy):
    """The sweep's one-pass kernels (every window at once, labelled frames only, median blocks of
    256 frames) give the brute-force argmax for every window, on videos longer than a block."""
    from kitlib.smoothing import _Smoother

    videos = [rng.normal(size=(n, 8)).astype(np.float32) for n in (700, 5, 300)]
    windows = [1, 3, 5, 9, 41, 101]
    smoother = _Smoother(videos, max_half_width=50, dtype=np.float32)
    frames = np.sort(rng.choice(len(smoother.frames), size=600, replace=False))
    pred = smoother.argmax_all_windows(strategy, np.array([w // 2 for w in windows]), frames)
    expected = np.concatenate([np.stack([reference(x.astype(np.float64), w, strategy).argmax(1) for w in windows], 1)
                               for x in videos])[frames]
    np.testing.assert_array_equal(pred, expected)


def test_median_ties_and_wide_windows(rng):
    # many equal logits (ranks break ties arbitrarily; the median value must not care)
    x = rng.integers(0, 4, size=(600, 8)).astype(np.float64)
    for window in (3, 21, 257):
        np.testing.assert_array_equal(smooth_logits(x, window, "median"), reference(x, window, "median"))
    # a window wider than 4096 frames: the bitset needs more than one summary word
    x = rng.normal(size=(4700, 2))
    np.testing.assert_array_equal(smooth_logits(x, 4501, "median"), reference(x, 4501, "median"))


def test_sweep_duplicate_and_unsorted_windows(rng):
    logits = {f"v{i}": rng.normal(size=(n, 8)).astype(np.float32) for i, n in enumerate([400, 50])}
    labels = {k: rng.integers(-1, 8, size=len(v)) for k, v in logits.items()}
    table = sweep(logits, labels, windows=[9, 1, 9, 3], strategies=["median", "vote"], progress=False)
    assert table["window"].tolist() == [1, 9, 1, 9, 3, 9, 1, 9, 3]
    y = np.concatenate(list(labels.values()))
    for strategy in ("median", "vote"):
        rows = table[table.strategy == strategy]
        assert rows["f1"].iloc[0] == rows["f1"].iloc[2]
        assert rows[rows.window == 1]["f1"].iloc[0] == pytest.approx(table["f1"].iloc[0])
        smoothed = np.concatenate(list(smooth_tracks(logits, 3, strategy).values()))
        assert rows[rows.window == 3]["f1"].item() == pytest.approx(macro_f1(y, smoothed.argmax(1)), abs=1e-12)
    with pytest.raises(ValueError, match="labels must be in"):
        sweep(logits, {k: np.full(len(v), 8) for k, v in logits.items()}, windows=[3], progress=False)
