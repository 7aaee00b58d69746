import numpy as np
import pandas as pd
import pytest

from kitlib import config
from kitlib.data import submission as sub

METADATA = config.repo_root().parent / "shared" / "abaw10-metadata"


def make_template(path, tracks):
    rows = [f"{t}/{f:05d}.jpg" for t, n in tracks for f in range(1, n + 1)]
    path.write_text("image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n" + "\n".join(rows) + "\n")
    return path


def test_write_validate_and_fill(tmp_path):
    tpl = sub.read_template(make_template(tmp_path / "t.txt", [("b_left", 4), ("a", 3)]))
    preds = {"b_left": sub.TrackPrediction(np.array([1, 4]), np.array([6, 2]), np.array(["face", "audio"])),
             "a": sub.TrackPrediction(np.array([1, 2, 3]), np.array([0, 1, 7]))}
    out = tmp_path / "pred.txt"
    coverage = sub.write_submission(out, tpl, preds)
    lines = out.read_text().splitlines()
    assert lines[0] == sub.HEADER
    assert lines[1:5] == ["b_left/00001.jpg,6", "b_left/00002.jpg,6", "b_left/00003.jpg,2", "b_left/00004.jpg,2"]
    assert lines[5:] == ["a/00001.jpg,0", "a/00002.jpg,1", "a/00003.jpg,7"]
    assert sub.validate_submission(out, tpl) == 7
    row = coverage.set_index("txtid").loc["b_left"]
    assert (row["from_face"], row["from_audio"], row["filled"]) == (1, 1, 2)


def test_missing_track_is_an_error(tmp_path):
    tpl = sub.read_template(make_template(tmp_path / "t.txt", [("a", 2), ("ghost", 2)]))
    with pytest.raises(sub.SubmissionError, match="ghost"):
        sub.write_submission(tmp_path / "p.txt", tpl, {"a": sub.TrackPrediction(np.array([1, 2]), np.array([0, 0]))})
    assert not (tmp_path / "p.txt").exists()


@pytest.mark.parametrize("mutate, needle", [
    (lambda L: ["image_location,Neutral"] + L[1:], "line 1"),
    (lambda L: L[:-1], "rows, the template has"),
    (lambda L: [L[0], L[2], L[1]] + L[3:], "line 2 .* order"),
    (lambda L: L[:2] + ["a/00002.jpg,9"] + L[3:], "line 3 has label '9'"),
    (lambda L: L[:2] + ["a/00002.jpg"] + L[3:], "line 3 has label ''"),
])
def test_validator_rejects(tmp_path, mutate, needle):
    tpl = sub.read_template(make_template(tmp_path / "t.txt", [("a", 3)]))
    good = tmp_path / "good.txt"
    sub.write_submission(good, tpl, {"a": sub.TrackPrediction(np.arange(1, 4), np.array([1, 2, 3]))})
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(mutate(good.read_text().splitlines())) + "\n")
    with pytest.raises(sub.SubmissionError, match=needle):
        sub.validate_submission(bad, tpl)


def test_template_errors(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("image_location\nabc.jpg\n")
    with pytest.raises(sub.SubmissionError, match="line 2"):
        sub.read_template(p)


@pytest.mark.skipif(not METADATA.is_dir(), reason="shared/abaw10-metadata not beside the checkout")
def test_real_size_submission(tmp_path):
    """A template the size of the real test set (228 tracks, ~1M rows) writes and validates."""
    idx = pd.read_csv(METADATA / "expr_test_video_index.csv")
    meta = pd.read_csv(METADATA / "expr_test_video_meta.csv").set_index("videoid")
    tracks = [(t, int(meta.loc[v, "n_frames"])) for t, v in zip(idx["txtid"], idx["videoid"])]
    tpl = sub.read_template(make_template(tmp_path / "t.txt", tracks))
    rng = np.random.default_rng(0)
    preds = {}
    for t, n in tracks:
        keep = np.sort(rng.choice(np.arange(1, n + 1), size=max(1, n // 2), replace=False))
        preds[t] = sub.TrackPrediction(keep, rng.integers(0, 8, keep.size))
    sub.write_submission(tmp_path / "p.txt", tpl, preds)
    assert sub.validate_submission(tmp_path / "p.txt", tpl) == len(tpl) > 1_000_000


def test_validator_accepts_a_byte_order_mark_and_points_at_a_blank_line(tmp_path):
    tpl = sub.read_template(make_template(tmp_path / "t.txt", [("a", 3)]))
    good = tmp_path / "good.txt"
    sub.write_submission(good, tpl, {"a": sub.TrackPrediction(np.arange(1, 4), np.array([1, 2, 3]))})
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + good.read_bytes())       # as Excel / Notepad save "UTF-8"
    assert sub.validate_submission(bom, tpl) == 3
    bom_template = tmp_path / "bom_template.txt"
    bom_template.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "t.txt").read_bytes())
    assert sub.validate_submission(good, bom_template) == 3
    lines = good.read_text().splitlines()
    blank = tmp_path / "blank.txt"
    blank.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")
    with pytest.raises(sub.SubmissionError, match="line 3 is blank"):
        sub.validate_submission(blank, tpl)
