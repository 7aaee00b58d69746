"""Face selection strategies (which face is the annotated person) and the release's selection table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kitlib import config
from kitlib.faces import pack_detections
from kitlib.faces.assign import track_video
from kitlib.faces.selection import (STRATEGIES, preference, read_selection, release_selection, strategies_of,
                                    track_strategy)

METADATA = config.repo_root().parent / "shared" / "abaw10-metadata"
TABLE = config.repo_root() / "params" / "abaw10_face_selection.csv"
FRAME = (640, 360)

# three faces: a small one top-left, a large one bottom-centre-right, a middle one on the right
TOP_LEFT, BIG, RIGHT = (40, 20, 100, 80), (300, 150, 420, 270), (520, 100, 600, 180)


def det(*boxes):
    """Detections of one frame with score 1 and no landmarks."""
    return pack_detections(np.array(boxes, np.float32).reshape(-1, 4), np.ones(len(boxes)))


def picked(strategy: str, frames: list[np.ndarray]) -> np.ndarray:
    tracks, _ = track_video(frames, frame_size=FRAME, strategies=[strategy], max_gap=0)
    return tracks[0].boxes


@pytest.mark.parametrize("strategy, expected", [
    ("largest", BIG), ("left", TOP_LEFT), ("right", RIGHT), ("top", TOP_LEFT),
    ("second_right", BIG), ("second_left", BIG), ("centre", BIG), ("id_keep", BIG)])
def test_each_strategy_picks_its_face(strategy, expected):
    np.testing.assert_allclose(picked(strategy, [det(TOP_LEFT, BIG, RIGHT)])[0], expected)


def test_strategies_differ_on_a_frame_where_they_should():
    # a frame where largest, centre and second_right disagree
    small_centre, big_left, right = (300, 160, 340, 200), (20, 50, 140, 170), (560, 100, 620, 160)
    frame = [det(small_centre, big_left, right)]
    np.testing.assert_allclose(picked("centre", frame)[0], small_centre)
    np.testing.assert_allclose(picked("largest", frame)[0], big_left)
    np.testing.assert_allclose(picked("second_right", frame)[0], small_centre)
    np.testing.assert_allclose(picked("second_left", frame)[0], small_centre)


def test_second_right_needs_two_faces_and_never_takes_the_right_most():
    assert len(preference(det(RIGHT), "second_right", frame_size=FRAME)) == 0
    order = preference(det(TOP_LEFT, BIG, RIGHT), "second_right", frame_size=FRAME)
    assert 2 not in order.tolist() and order[0] == 1


def test_id_keep_keeps_the_first_person_when_another_becomes_much_larger():
    person, newcomer = (50, 50, 100, 100), (300, 20, 420, 140)   # 5.8x the area
    frames = [det(person)] * 3 + [det(person, newcomer)] * 3
    np.testing.assert_allclose(picked("id_keep", frames), np.tile(person, (6, 1)))
    assert np.allclose(picked("largest", frames)[-1], newcomer)   # largest switches


def test_left_and_right_take_a_lone_face_only_on_their_half():
    lone_right = det((400, 100, 460, 160))
    assert np.isnan(picked("left", [lone_right])).all()
    np.testing.assert_allclose(picked("right", [lone_right])[0], (400, 100, 460, 160))


def test_unknown_strategy_is_an_error_naming_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="second_right"):
        preference(det(BIG), "biggest", frame_size=FRAME)
    bad = tmp_path / "sel.csv"
    bad.write_text("txtid,strategy\nvideo1,biggest\n")
    with pytest.raises(ValueError, match="line 2 .*video1.*biggest"):
        read_selection(bad)


def test_track_strategy_table_then_side_then_default():
    table = {"v1": "top"}
    assert track_strategy("v1", None, table) == "top"
    assert track_strategy("v2_left", "left", table) == "left"
    assert track_strategy("v3", None, table, default="centre") == "centre"

    class T:
        def __init__(self, txtid, side):
            self.txtid, self.side = txtid, side
    assert strategies_of([T("a_left", "left"), T("a", None)], {}) == ["left", "right"]   # two-person video
    assert strategies_of([T("b", None)], {}) == ["largest"]


def test_committed_table_reads_and_covers_every_strategy_the_release_uses():
    table = read_selection(TABLE)
    assert len(table) == 317 + 228
    assert set(table.values()) <= set(STRATEGIES)
    assert table["10-60-1280x720"] == "left" and table["10-60-1280x720_right"] == "right"   # two-person video
    assert table["video2"] == "right" and table["video2_left"] == "left"
    assert table["130-25-1280x720_left"] == "second_right"


@pytest.mark.skipif(not METADATA.is_dir(), reason="the release metadata is not beside this checkout")
def test_committed_table_is_built_from_the_release_metadata():
    built = release_selection(METADATA)
    committed = pd.read_csv(TABLE, dtype=str)
    pd.testing.assert_frame_equal(built.reset_index(drop=True), committed)
    train = pd.read_csv(METADATA / "face_extract_strategy.csv", dtype=str, keep_default_na=False)
    single = train[train["expr_person_count"] == "1"]
    assert int((single["strategy"] != "largest").sum()) == 83          # the count
    test = pd.read_csv(METADATA / "test_face_person_strategy.csv", dtype=str)
    assert int((test["strategy"] != "largest").sum()) == 134
