import numpy as np
import pytest

from kitlib.store import FeatureStore, atomic_path


def test_save_load_roundtrip(tmp_path):
    store = FeatureStore(tmp_path, "visual")
    assert not store.done("a")
    store.save("a", frame_index=np.arange(1, 4), features=np.ones((3, 2)), mask=np.array([1, 0, 1]), extra=np.zeros(3))
    assert store.done("a") and store.keys() == ["a"]
    data = store.load("a")
    assert data["features"].dtype == np.float16 and data["mask"].dtype == bool and "extra" in data
    store.write_manifest({"dim": 2})
    assert store.read_manifest() == {"dim": 2}


def test_shape_mismatch_and_missing(tmp_path):
    store = FeatureStore(tmp_path, "audio")
    with pytest.raises(ValueError, match="frame count"):
        store.save("a", frame_index=np.arange(3), features=np.ones((2, 2)), mask=np.ones(3))
    with pytest.raises(FileNotFoundError, match="no audio features for 'b'"):
        store.load("b")


def test_atomic_file_gets_the_usual_mode(tmp_path):
    import os
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.npz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
