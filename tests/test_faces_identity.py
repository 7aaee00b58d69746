"""Identity decided over the whole video: tracklets, persons, and which person each positional track is."""
from __future__ import annotations

import numpy as np
import pytest

from kitlib.faces import box_iou, pack_detections
from kitlib.faces.assign import track_video
from kitlib.faces.identity import (ARCFACE_TEMPLATE, ArcFaceEmbedder, ColourTextureEmbedder, align_faces,
                                   build_embedder, decide_identities, identity_method)

FRAME = (640, 360)


def det(*boxes):
    """Detections of one frame with score 1 and no landmarks."""
    return pack_detections(np.array(boxes, np.float32).reshape(-1, 4), np.ones(len(boxes)))


def look(person: int, rng: np.random.Generator, dim: int = 16) -> np.ndarray:
    """A deterministic appearance of ``person`` (a fixed direction) with a little noise, unit norm."""
    base = np.zeros(dim, np.float32)
    base[person] = 1.0
    vec = base + 0.05 * rng.standard_normal(dim).astype(np.float32)
    return vec / np.linalg.norm(vec)


def scene(rng):
    """A alone right of the centre; a cut; A left of B; a cut; B alone left of the centre (A=0, B=1)."""
    a_alone, a_left, b_right, b_alone = (380, 100, 440, 160), (100, 100, 160, 160), (450, 100, 510, 160), \
        (150, 120, 210, 180)
    plan = [[(a_alone, 0)]] * 10 + [[(a_left, 0), (b_right, 1)]] * 10 + [[(b_alone, 1)]] * 10
    detections = [det(*[b for b, _ in faces]) for faces in plan]
    looks = [np.stack([look(p, rng) for _, p in faces]) for faces in plan]
    return detections, looks


def decide(detections, looks, strategies=("left", "right")):
    return decide_identities(detections, looks, strategies=list(strategies), frame_size=FRAME, embedder_name="test",
                             same_person=0.8, link_min=0.5, too_close=0.7)


def test_positional_tracks_are_named_by_where_the_persons_sit_together():
    detections, looks = scene(np.random.default_rng(0))
    plan = decide(detections, looks)
    assert plan.person_similarity.shape == (2, 2) and plan.votes.tolist() == [[10, 0], [0, 10]]
    assert plan.track_person.tolist() == [0, 1]
    # A alone on the right half is the left track's; B alone on the left half the right track's
    assert [o.tolist() for o in plan.owners[:10]] == [[0]] * 10
    assert [o.tolist() for o in plan.owners[20:]] == [[1]] * 10
    assert plan.warnings == ["", ""]


def test_persons_never_on_screen_together_are_left_to_the_position_of_the_moment():
    detections, looks = scene(np.random.default_rng(1))
    keep = list(range(10)) + list(range(20, 30))                     # no frame with both
    plan = decide([detections[i] for i in keep], [looks[i] for i in keep])
    assert plan.track_person.tolist() == [-1, -1] and all((o == -1).all() for o in plan.owners)
    tracks, stats = track_video([detections[i] for i in keep], frame_size=FRAME, strategies=["left", "right"],
                                max_gap=0)
    assert np.isfinite(tracks[1].boxes[:10]).all() and np.isfinite(tracks[0].boxes[10:]).all()   # the online rule


def test_tracklets_seen_on_one_frame_are_never_one_person_and_lookalikes_are_reported():
    rng = np.random.default_rng(2)
    twins = [np.stack([look(0, rng), look(0, rng)]) for _ in range(8)]
    plan = decide([det((100, 100, 160, 160), (450, 100, 510, 160))] * 8, twins)
    assert plan.track_person.tolist() == [0, 1]
    assert all("too close to tell apart" in w for w in plan.warnings)


def test_a_cut_to_another_person_in_the_same_place_starts_a_new_person():
    rng = np.random.default_rng(3)
    here, there = (300, 100, 360, 160), (500, 100, 560, 160)
    detections = [det(here)] * 5 + [det(here, there)] * 5 + [det(here)] * 5
    looks = [np.stack([look(0, rng)]) for _ in range(5)] + \
        [np.stack([look(0, rng), look(1, rng)]) for _ in range(5)] + [np.stack([look(1, rng)]) for _ in range(5)]
    plan = decide(detections, looks)
    assert [int(p[0]) for p in plan.person] == [0] * 10 + [1] * 5


# --------------------------------------------------------------------------- ArcFace loader, on a model built here

def colour_model_onnx(path):
    """A tiny stand-in for w600k_r50.onnx with its interface, (B, 3, 112, 112) -> (B, 8): the mean colour of
    the aligned crop through a fixed linear map. It is for the loader's mechanics, not face recognition."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, -1, 0], [0, 1, -1], [-1, 0, 1], [1, 1, 1], [1, -1, 1]],
                      np.float32).T                                          # (3, 8)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input.1"], ["pooled"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["pooled", "proj"], ["683"])],
        "mean_colour", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 8])],
        initializer=[numpy_helper.from_array(weight, "proj")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_arcface_loader_aligns_normalises_and_batches(tmp_path):
    model = ArcFaceEmbedder(weights=colour_model_onnx(tmp_path / "w600k_r50.onnx"), runtime="onnxruntime",
                            batch_size=2)
    assert model.mean == 127.5 and model.size == 112 and model.provider == "CPUExecutionProvider"
    frame = np.zeros((200, 300, 3), np.uint8)
    frame[:, :150] = (255, 0, 0)
    frame[:, 150:] = (0, 0, 255)
    faces = det((20, 20, 100, 100), (200, 20, 280, 100), (30, 30, 90, 90))
    out = model.embed(frame, faces)
    assert out.shape == (3, 8) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert out[0] @ out[2] > 0.99 > 0.5 > out[0] @ out[1]               # red, red and blue
    same = ArcFaceEmbedder(weights=tmp_path, runtime="onnxruntime", batch_size=32).embed(frame, faces)   # the folder
    np.testing.assert_allclose(out, same, atol=1e-5)


def test_landmarks_are_warped_onto_the_arcface_template():
    frame = np.zeros((240, 320, 3), np.uint8)
    marks = ARCFACE_TEMPLATE * 1.5 + np.array([60, 30], np.float32)   # a face 1.5x the template, shifted
    for x, y in marks.astype(int):
        frame[y - 2:y + 3, x - 2:x + 3] = 255
    faces = pack_detections(np.array([[50, 20, 230, 220]], np.float32), np.ones(1), marks[None])
    crop = align_faces(frame, faces)[0]
    for x, y in ARCFACE_TEMPLATE.astype(int):
        assert crop[y, x].min() > 100                                   # each landmark lands on its template point


def test_arcface_weights_missing_or_unreadable_are_named_and_no_weights_means_the_online_rule(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'arcface'.*gone\.onnx.*faces\.identity_weights"):
        ArcFaceEmbedder(weights=tmp_path / "gone.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(FileNotFoundError, match=r"'arcface'.*bad\.onnx.*unreadable"):
        ArcFaceEmbedder(weights=bad)
    assert build_embedder("arcface", weights=None) is None
    assert identity_method(None, "arcface") == "online (no arcface weights)"
    assert build_embedder("colour-texture").name == "colour-texture" and build_embedder("online") is None
    with pytest.raises(ValueError, match="colour-texture"):
        build_embedder("facenet")


def test_the_onnx_model_drives_identity_through_a_cut(tmp_path):
    """The loader inside the tracker: person A (red) alone on the right, then left of B (blue)."""
    model = ArcFaceEmbedder(weights=colour_model_onnx(tmp_path / "m.onnx"), runtime="onnxruntime")
    a_alone, a_left, b_right = (400, 100, 460, 160), (100, 100, 160, 160), (450, 100, 510, 160)
    frames = np.full((16, 360, 640, 3), 90, np.uint8)
    detections = []
    for i in range(16):
        boxes = [a_alone] if i < 8 else [a_left, b_right]
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            frames[i, y1:y2, x1:x2] = (220, 40, 40) if k == 0 else (40, 40, 220)
        detections.append(det(*boxes))
    tracks, stats = track_video(detections, frame_size=FRAME, strategies=["left", "right"], max_gap=0,
                                frames=frames, embedder=model, identity=None)
    np.testing.assert_allclose(tracks[0].boxes[:8], np.tile(a_alone, (8, 1)))   # A's, though right of the centre
    assert np.isnan(tracks[1].boxes[:8]).all()
    assert stats[0]["identity"] == "arcface" and stats[0]["by_identity"] == 16 and stats[0]["frames_changed"] >= 8


def test_largest_tracks_are_unchanged_by_identity():
    rng = np.random.default_rng(4)
    detections, _ = scene(rng)
    frames = rng.integers(0, 255, (len(detections), 360, 640, 3), dtype=np.uint8)
    plain, _ = track_video(detections, frame_size=FRAME, strategies=["largest"], max_gap=2, frames=frames)
    with_id, stats = track_video(detections, frame_size=FRAME, strategies=["largest"], max_gap=2, frames=frames,
                                 embedder=ColourTextureEmbedder())
    np.testing.assert_array_equal(plain[0].boxes, with_id[0].boxes)
    assert stats[0]["identity"] == "online (strategy largest)" and stats[0]["by_identity"] == 0


# --------------------------------------------------------------------------- real photographs

@pytest.fixture(scope="module")
def joined():
    from kitlib.faces import build_detector
    from kitlib.faces.photo_clip import joined_clip

    clip = joined_clip()
    return clip, build_detector("opencv-haar", max_side=640).detect(clip.frames)


def wrong_person_frames(boxes: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """(frames where the track's box is on someone else or on nobody, frames where it is on its person)."""
    has = np.isfinite(boxes).all(1)
    own = np.array([h and np.isfinite(t).all() and box_iou(b[None], t)[0] >= 0.3 for b, t, h in zip(boxes, truth, has)])
    return int((has & ~own).sum()), int(own.sum())


def test_left_and_right_follow_their_person_through_cuts_on_real_photos(joined):
    clip, found = joined
    collins, hopper = clip.boxes[:, 0], clip.boxes[:, 1]
    online, _ = track_video(found, frame_size=FRAME, strategies=["left", "right"], max_gap=0, frames=clip.frames)
    # the online rule: Collins alone right of the centre goes to _right, Hopper alone on the left to _left
    assert wrong_person_frames(online[1].boxes, hopper)[0] >= 35 and wrong_person_frames(online[0].boxes, collins)[0] >= 25
    tracks, stats = track_video(found, frame_size=FRAME, strategies=["left", "right"], max_gap=0, frames=clip.frames,
                                embedder=ColourTextureEmbedder())
    for t, truth in ((0, collins), (1, hopper)):
        wrong, own = wrong_person_frames(tracks[t].boxes, truth)
        assert wrong == 0 and own >= 0.9 * np.isfinite(truth).all(1).sum(), (t, wrong, own)
    alone = clip.segment == "alone"                                   # the first stretch: the side Collins takes later
    assert np.isfinite(tracks[0].boxes[alone]).all() and np.isnan(tracks[1].boxes[alone]).all()
    assert [s["identity"] for s in stats] == ["colour-texture"] * 2 and [s["identity_warning"] for s in stats] == ["", ""]
    assert all(s["by_identity"] >= 60 and s["by_position"] == 0 and s["frames_changed"] >= 60 for s in stats)


def test_extraction_decides_identity_in_a_first_pass_and_reports_it(tmp_path):
    """The two-pass extractor on the joined clip written as a video: the report's identity columns."""
    import cv2
    import timm
    import torch

    from kitlib.data import Track
    from kitlib.faces import build_detector
    from kitlib.faces.photo_clip import joined_clip
    from kitlib.store import FeatureStore
    from kitlib.visual.extract import REPORT_COLUMNS, extract_visual_features

    clip = joined_clip(size=(320, 180))
    video = tmp_path / "joined.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, (320, 180))
    for frame in clip.frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    tracks = [Track(txtid=f"joined_{side}", videoid="joined", split="Train_Set", video_path=video, labels_path=None,
                    side=side) for side in ("left", "right")]
    torch.manual_seed(0)
    backbone = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=28, depth=1,
                                 embed_dim=32, num_heads=2, global_pool="avg")
    store = FeatureStore(tmp_path, "visual")
    report = extract_visual_features(
        tracks, store, backbone, detector=build_detector("opencv-haar"), crop_scales=(1.0,), image_size=28,
        mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=16, max_gap=0, device=torch.device("cpu"), decode_batch=32,
        identity=ColourTextureEmbedder(), manifest={"run": "test"}).set_index("txtid")
    assert list(report.reset_index().columns) == list(REPORT_COLUMNS)
    assert report["identity"].tolist() == ["colour-texture"] * 2 and report["status"].tolist() == ["ok"] * 2
    assert (report["by_identity"] >= 60).all() and (report["frames_changed"] >= 60).all()
    truth = {"joined_left": clip.boxes[:, 0], "joined_right": clip.boxes[:, 1]}
    for txtid, boxes in truth.items():
        saved = store.load(txtid)["boxes"]
        assert wrong_person_frames(saved, boxes)[0] == 0, txtid
    assert store.read_manifest()["identity"] == "colour-texture"
