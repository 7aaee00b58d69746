from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kitlib import config, data

METADATA = config.repo_root().parent / "shared" / "abaw10-metadata"


def write_ann(path: Path, labels, header=data.HEADER):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(str(x) for x in labels) + "\n")


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "rel"
    for vid in ("1-30-640x360", "2-30-640x360", "3-25-1280x720"):
        (root / "videos" / "batch1").mkdir(parents=True, exist_ok=True)
        (root / "videos" / "batch1" / f"{vid}.mp4").write_bytes(b"")
    write_ann(root / "annotations/Train_Set/1-30-640x360.txt", [0, 0, 4, -1])
    write_ann(root / "annotations/Train_Set/3-25-1280x720_left.txt", [1, 1])
    write_ann(root / "annotations/Train_Set/3-25-1280x720_right.txt", [2, 2])
    write_ann(root / "annotations/Validation_Set/9-30-1x1.txt", [0])      # no such video
    (root / "test").mkdir()
    (root / "test/names.txt").write_text("2-30-640x360\n")
    return root


def test_discover(release):
    index = data.discover(release)
    by = index.by_txtid()
    assert set(by) == {"1-30-640x360", "3-25-1280x720_left", "3-25-1280x720_right", "2-30-640x360"}
    left = by["3-25-1280x720_left"]
    assert left.videoid == "3-25-1280x720" and left.side == "left" and left.split == "Train_Set"
    assert by["2-30-640x360"].split == "Test_Set" and by["2-30-640x360"].labels_path is None
    assert len(index.problems) == 1 and "9-30-1x1" in index.problems[0][0] and "no video" in index.problems[0][1]


def test_discover_missing_folder(tmp_path):
    (tmp_path / "videos").mkdir()
    with pytest.raises(data.DataError, match="Train_Set"):
        data.discover(tmp_path)


def test_videoid_of():
    assert data.videoid_of("10-60-1280x720_right") == ("10-60-1280x720", "right")
    assert data.videoid_of("video5") == ("video5", None)


def test_read_labels_and_errors(tmp_path):
    p = tmp_path / "a.txt"
    write_ann(p, [0, -1, 7])
    np.testing.assert_array_equal(data.read_labels(p), [0, -1, 7])
    write_ann(p, [0, 8])
    with pytest.raises(data.DataError, match=r"a.txt: line 3 holds label 8"):
        data.read_labels(p)
    write_ann(p, [0, "x"])
    with pytest.raises(data.DataError, match="line 3 is 'x'"):
        data.read_labels(p)
    write_ann(p, [0], header="Neutral,Angry")
    with pytest.raises(data.DataError, match="header"):
        data.read_labels(p)


def test_align_labels_policy():
    labels = np.array([1, 2, 3])
    out, note = data.align_labels(labels, 3)
    assert note == "" and out is labels
    out, note = data.align_labels(labels, 2, name="v")           # annotation one line longer
    np.testing.assert_array_equal(out, [1, 2])
    assert "dropped the last 1 line" in note and note.startswith("v:")
    out, note = data.align_labels(labels, 5)
    np.testing.assert_array_equal(out, [1, 2, 3, -1, -1])
    with pytest.raises(data.DataError, match="strict"):
        data.align_labels(labels, 2, policy="strict")


def test_folds_small_grouped(release):
    hist = data.label_histograms(data.discover(release).tracks)
    folds = data.make_folds(hist, n_folds=2, seed=1, trials=50)
    assert folds["3-25-1280x720_left"] == folds["3-25-1280x720_right"]
    assert set(folds.values()) == {1, 2}
    assert folds == data.make_folds(hist, n_folds=2, seed=1, trials=50)


@pytest.mark.skipif(not METADATA.is_dir(), reason="shared/abaw10-metadata not beside the checkout")
def test_folds_on_real_release_shape():
    """The real 317 annotation files / 312 videos: folds as balanced as the published ones."""
    hist = pd.read_csv(METADATA / "expr_cv5_folds.csv")
    folds = data.make_folds(hist, n_folds=5, seed=0, trials=2000)
    assert len(folds) == 317
    hist["fold"] = hist["txtid"].map(folds)
    assert hist.groupby("videoid")["fold"].nunique().max() == 1           # video-level
    classes = [f"class_{c}" for c in range(8)]
    glob = hist[classes].sum().to_numpy() / hist[classes].to_numpy().sum()
    per_fold = hist.groupby("fold")[classes].sum()
    div = np.linalg.norm(per_fold.to_numpy() / per_fold.to_numpy().sum(1, keepdims=True) - glob, axis=1)
    assert div.max() < 0.12                                                 # published folds: 0.072
    assert hist.groupby("fold")["videoid"].nunique().agg(["min", "max"]).diff().iloc[-1] <= 1


def test_read_folds(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text("txtid,fold\na,1\nb,2\n")
    assert data.read_folds(p) == {"a": 1, "b": 2}
    p.write_text("name,fold\na,1\n")
    with pytest.raises(data.DataError, match="txtid"):
        data.read_folds(p)
