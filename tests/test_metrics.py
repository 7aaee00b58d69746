import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score

from kitlib import metrics


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(-1, 8, 5000)
    p = np.where(rng.random(5000) < 0.4, y.clip(0), rng.integers(0, 8, 5000))
    valid = y >= 0
    ref = f1_score(y[valid], p[valid], average="macro", labels=list(range(8)), zero_division=0)
    assert metrics.macro_f1(y, p) == pytest.approx(ref, abs=1e-12)
    ref_pc = f1_score(y[valid], p[valid], average=None, labels=list(range(8)), zero_division=0)
    np.testing.assert_allclose(metrics.per_class_f1(y, p), ref_pc)
    np.testing.assert_array_equal(metrics.confusion(y, p), confusion_matrix(y[valid], p[valid], labels=list(range(8))))


def test_absent_class_counts_as_zero():
    y = np.array([0, 0, 1, 1])
    assert metrics.macro_f1(y, y) == pytest.approx(2 / 8)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="frames"):
        metrics.macro_f1(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="0..7"):
        metrics.macro_f1(np.array([0, 1]), np.array([0, 8]))
