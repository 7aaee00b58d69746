import numpy as np
import pytest
import torch

from kitlib.store import FeatureStore, atomic_path


def test_save_load_roundtrip(tmp_path):
    store = FeatureStore(tmp_path, "visual")
    assert not store.done("a")
    store.save("a", frame_index=np.arange(1, 4), features=np.ones((3, 2)), mask=np.array([1, 0, 1]), extra=np.zeros(3))
    assert store.done("a") and store.keys() == ["a"]
    data = store.load("a")
    assert data["features"].dtype == np.float16 and data["mask"].dtype == bool and "extra" in data
    store.write_manifest({"dim": 2})
    assert store.read_manifest() == {"dim": 2, "files": {"a": {"frames": 3, "dim": 2, "dtype": "float16"}}}


def test_every_read_is_checked_against_the_manifest(tmp_path):
    from kitlib.store import FeatureMismatch, consolidate

    store = FeatureStore(tmp_path, "visual")
    for key in ("a", "b"):
        store.save(key, frame_index=np.arange(1, 5), features=np.ones((4, 8)), mask=np.ones(4))
    store.write_manifest({"feature_dim": 8})
    assert store.load("b")["features"].shape == (4, 8)
    store.save("b", frame_index=np.arange(1, 5), features=np.ones((4, 512)), mask=np.ones(4))   # replaced later
    with pytest.raises(FeatureMismatch, match=r"b.npz: features are 4 frames x 512 \(float16\), but the store's "
                                              r"manifest .* records 4 frames x 8 \(float16\)"):
        store.load("b")
    with pytest.raises(FeatureMismatch, match="b.npz: features are 4 frames x 512"):
        consolidate(store)
    store.save("b", frame_index=np.arange(1, 7), features=np.ones((6, 8)), mask=np.ones(6))      # other frame count
    with pytest.raises(FeatureMismatch, match="b.npz: features are 6 frames x 8"):
        store.load("b")
    store.save("c", frame_index=np.arange(1, 5), features=np.ones((4, 8)), mask=np.ones(4))
    with pytest.raises(FeatureMismatch, match="c.npz is not in the store's manifest"):
        store.load("c")
    store.write_manifest({"feature_dim": 8})                               # re-extraction records what is there
    assert store.load("b")["features"].shape == (6, 8) and store.load("c")["mask"].all()


def test_disk_errors_name_the_file(tmp_path, monkeypatch):
    import errno
    import os

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match=r"No space left on device while writing .*x.npz"):
        with atomic_path(tmp_path / "x.npz") as tmp:
            tmp.write_text("data")
    assert list(tmp_path.iterdir()) == []


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


# ---------------------------------------------------------------- consolidated cache and memory-mapped frame tables
def _two_stores(root, rng, lengths=(5, 3, 7)):
    from kitlib.data import Track

    vis, aud = FeatureStore(root, "visual"), FeatureStore(root, "audio")
    tracks, labels = [], {}
    for i, n in enumerate(lengths):
        txtid = f"v{i}"
        for store, dim in ((vis, 6), (aud, 4)):
            store.save(txtid, frame_index=np.arange(1, n + 1), features=rng.standard_normal((n, dim)),
                       mask=rng.random(n) > 0.3)
        tracks.append(Track(txtid=txtid, videoid=txtid, split="Train_Set", video_path=root / f"{txtid}.mp4",
                            labels_path=None, side=None))
        labels[txtid] = rng.integers(-1, 8, n)
    return vis, aud, tracks, labels


def test_memmap_frame_table_equals_in_ram_and_subsets_without_copies(tmp_path, rng):
    from kitlib.fusion.table import load_frame_table
    from kitlib.fusion.train import _batch, train_head
    from kitlib.store import RowView

    vis, aud, tracks, labels = _two_stores(tmp_path, rng)
    order = [tracks[2], tracks[0]]                       # not the store's order
    ram = load_frame_table(order, visual_store=vis, audio_store=aud, labels=labels)
    mm = load_frame_table(order, visual_store=vis, audio_store=aud, labels=labels, memmap=True)
    assert isinstance(mm.visual, RowView) and isinstance(mm.visual.base, np.memmap)
    for name in ("offsets", "frame_index", "visual_mask", "audio_mask", "labels"):
        np.testing.assert_array_equal(getattr(ram, name), getattr(mm, name))
    np.testing.assert_array_equal(np.asarray(mm.visual), ram.visual)
    np.testing.assert_array_equal(np.asarray(mm.audio), ram.audio)
    part = mm.subset(["v0"])
    assert isinstance(part.audio, RowView) and part.audio.base is mm.audio.base       # a view, no copy
    np.testing.assert_array_equal(np.asarray(part.audio), ram.subset(["v0"]).audio)
    rows = np.array([6, 0, 3])
    for a, b in zip(_batch(ram, rows, "cpu"), _batch(mm, rows, "cpu")):
        assert torch.equal(a, b)
    kwargs = dict(hidden=8, epochs=2, batch_size=4, device="cpu", seed=0)
    losses = [[h["train_loss"] for h in train_head("gated", t, None, **kwargs).history] for t in (mm, ram)]
    assert losses[0] == losses[1]


def test_consolidated_cache_built_once_per_store_contents(tmp_path, rng):
    from kitlib.store import consolidate

    vis, _, _, _ = _two_stores(tmp_path, rng)
    first = consolidate(vis)
    stamp = first.path.stat().st_mtime_ns
    assert consolidate(vis).path == first.path and first.path.stat().st_mtime_ns == stamp   # reused
    rows, lengths = first.rows(["v2", "v0"])
    np.testing.assert_array_equal(rows, np.r_[8:15, 0:5])
    np.testing.assert_array_equal(lengths, [7, 5])
    vis.save("v3", frame_index=np.arange(1, 3), features=np.ones((2, 6)), mask=np.ones(2))
    second = consolidate(vis)
    assert second.path != first.path and not first.path.exists() and second.txtids[-1] == "v3"
    with pytest.raises(KeyError, match="nope"):
        second.rows(["nope"])


def test_memmap_frame_table_rejects_mismatched_frames(tmp_path, rng):
    from kitlib.fusion import load_frame_table

    vis, aud, tracks, labels = _two_stores(tmp_path, rng)
    aud.save("v1", frame_index=np.arange(1, 5), features=np.ones((4, 4)), mask=np.ones(4))   # 4 rows, visual 3
    with pytest.raises(ValueError, match="'v1'.*different frames"):
        load_frame_table(tracks, visual_store=vis, audio_store=aud, labels=labels, memmap=True)
    with pytest.raises(ValueError, match="'v0': 2 labels"):
        load_frame_table(tracks[:1], visual_store=vis, audio_store=None, labels={"v0": np.zeros(2)}, memmap=True)
