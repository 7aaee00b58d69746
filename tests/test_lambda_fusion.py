"""Seed 004's decision-level fusion baseline (sec. 4.3, eq. 6, its Table 2): audio context and the lambda grid."""
import numpy as np
import pytest

from kitlib.fusion.lambda_fusion import context_mean, lambda_scores, softmax
from kitlib.metrics import macro_f1


def test_context_mean_equals_brute_force_within_tracks():
    rng = np.random.default_rng(0)
    offsets = np.array([0, 7, 7, 30, 33])                      # an empty track, a short one
    values = rng.normal(size=(33, 5)).astype(np.float16)
    mask = rng.random(33) > 0.3
    mask[30:] = False                                          # a track without audio
    got, any_audio = context_mean(values, mask, offsets, radius=3)
    for a, b in zip(offsets[:-1], offsets[1:]):
        for t in range(a, b):
            near = [u for u in range(max(a, t - 3), min(b, t + 4)) if mask[u]]
            assert any_audio[t] == bool(near)
            expected = values[near].astype(np.float64).mean(0) if near else np.zeros(5)
            np.testing.assert_allclose(got[t], expected, atol=2e-3)
    same, _ = context_mean(values, np.ones(33, bool), offsets, radius=0)
    np.testing.assert_array_equal(same, values)
    from kitlib.store import RowView                           # a memory-mapped frame table's audio

    view = RowView(np.concatenate([np.ones((4, 5), np.float16), values]), np.arange(4, 37))
    np.testing.assert_array_equal(context_mean(view, mask, offsets, radius=3)[0], got)
    with pytest.raises(ValueError, match="radius"):
        context_mean(values, mask, offsets, radius=-1)


def test_lambda_scores_by_hand():
    rng = np.random.default_rng(1)
    v, a = rng.normal(size=(50, 8)), 3 * rng.normal(size=(50, 8))
    y = rng.integers(-1, 8, 50)
    table = lambda_scores(v, a, y, [0.0, 0.7, 1.0])
    assert list(table["lambda"]) == [0.0, 0.7, 1.0]
    valid = y >= 0
    for lam, row in zip((0.0, 0.7, 1.0), table.itertuples()):
        pred = (lam * softmax(v) + (1 - lam) * softmax(a)).argmax(1)
        assert row.f1 == pytest.approx(macro_f1(y, pred))
        assert row.accuracy == pytest.approx((pred[valid] == y[valid]).mean())
    assert table.loc[2, "f1"] == pytest.approx(macro_f1(y, v.argmax(1)))   # lambda 1: vision alone
    with pytest.raises(ValueError, match="lambda"):
        lambda_scores(v, a, y, [1.5])
