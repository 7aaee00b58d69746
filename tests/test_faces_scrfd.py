"""SCRFD decoding on a small ONNX graph built here with SCRFD's output layout (InsightFace's weights are not shipped)."""
from __future__ import annotations

import numpy as np
import pytest

from kitlib.faces import boxes_of, build_detector, landmarks_of, scores_of

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZE = 64   # detection canvas: grids 8x8, 4x4, 2x2 at strides 8, 16, 32, two anchors per cell


# the face's landmark offsets from its anchor centre, in stride units (x, y per point, the kit's order)
KPS = np.array([(-0.5, -0.5), (0.5, -0.5), (0.0, 0.0), (-0.4, 0.6), (0.4, 0.6)], np.float32)


def scrfd_graph(path, *, batched: bool, landmarks: bool = True) -> tuple[int, float]:
    """An ONNX graph with SCRFD's 9 outputs (6 without ``landmarks``); one face at stride 16, cell
    (row 1, col 2), anchor 0, its landmarks ``KPS``; an anchor at stride 8 below the threshold.

    The outputs are constants plus 0 x the mean of the input (so the graph reads its input)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, outputs, inits = [], [], []
    if batched:   # (B, 1, 1): the outputs get the input's batch size
        nodes.append(helper.make_node("ReduceMean", ["input.1"], ["mean_b"], axes=[1, 2, 3], keepdims=0))
        nodes.append(helper.make_node("Reshape", ["mean_b", "shape_b11"], ["mean"]))
        inits.append(numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape_b11"))
    else:
        nodes.append(helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0))
    nodes.append(helper.make_node("Mul", ["mean", "zero"], ["nothing"]))
    inits.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    values = {}
    for level, stride in enumerate((8, 16, 32)):
        n = (SIZE // stride) ** 2 * 2
        values[f"score{stride}"] = np.full((n, 1), 0.01, np.float32)
        values[f"bbox{stride}"] = np.ones((n, 4), np.float32)
        values[f"kps{stride}"] = np.full((n, 10), 7.0, np.float32)   # far off: only the face's may be read
    anchor = (1 * (SIZE // 16) + 2) * 2
    values["score16"][anchor] = 0.9
    values["bbox16"][anchor] = (1.0, 1.5, 1.0, 1.5)   # left, top, right, bottom in stride units
    values["kps16"][anchor] = KPS.ravel()
    kinds = ("score", "bbox", "kps") if landmarks else ("score", "bbox")
    for name in [f"{k}{s}" for k in kinds for s in (8, 16, 32)]:
        const = values[name][None] if batched else values[name]
        inits.append(numpy_helper.from_array(const, f"{name}_c"))
        nodes.append(helper.make_node("Add", [f"{name}_c", "nothing"], [name]))
        shape = ["B", *const.shape[1:]] if batched else list(const.shape)
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    batch = "B" if batched else 1
    graph = helper.make_graph(nodes, "scrfd_test", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                                                                  [batch, 3, SIZE, SIZE])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return anchor, 0.9


@pytest.mark.parametrize("batched", [False, True])
def test_scrfd_decodes_a_known_anchor_to_its_box(tmp_path, batched):
    path = tmp_path / "det_10g.onnx"
    scrfd_graph(path, batched=batched)
    detector = build_detector("scrfd", weights=tmp_path, max_side=SIZE)   # a model folder is accepted
    frames = np.zeros((2, 32, 32, 3), np.uint8)     # letterboxed x2 into the 64-px canvas
    found = detector.detect(frames)
    assert len(found) == 2
    # centre (2*16, 1*16) = (32, 16); box (32-16, 16-24, 32+16, 16+24) on the canvas, then / 2 to the frame
    assert found[0].shape == (1, 15) and found[0].dtype == np.float32
    np.testing.assert_allclose(boxes_of(found[0]), [[8, -4, 24, 20]], atol=1e-5)
    np.testing.assert_allclose(scores_of(found[0]), [0.9], atol=1e-6)
    # landmarks: centre + offset x stride on the canvas, then / 2: (24, 8), (40, 8), ... -> (12, 4), (20, 4), ...
    np.testing.assert_allclose(landmarks_of(found[0])[0], (np.array([32, 16]) + KPS * 16) / 2, atol=1e-5)
    np.testing.assert_allclose(found[1], found[0])


def test_scrfd_landmarks_follow_box_scale_unmoved_and_nms_keeps_each_boxs_own(tmp_path):
    path = tmp_path / "det_10g.onnx"
    scrfd_graph(path, batched=False)
    found = build_detector("scrfd", weights=path, max_side=SIZE, box_scale=2.0).detect(np.zeros((1, 64, 64, 3), np.uint8))
    np.testing.assert_allclose(boxes_of(found[0]), [[0, -32, 64, 64]], atol=1e-5)     # twice (16, -8, 48, 40)
    np.testing.assert_allclose(landmarks_of(found[0])[0], np.array([32, 16]) + KPS * 16, atol=1e-5)
    # two overlapping candidates: NMS keeps the stronger one with its own landmarks
    from kitlib.faces.detectors.scrfd import decode_scrfd

    outputs = [np.zeros(((SIZE // s) ** 2 * 2, c), np.float32) for c in (1, 4, 10) for s in (8, 16, 32)]
    outputs[1][[0, 2], 0] = (0.8, 0.9)                                    # stride 16: anchors 0 and 2 (cells 0, 1)
    outputs[4][[0, 2]] = 1.0
    outputs[7][0], outputs[7][2] = 1.0, -1.0
    rows = decode_scrfd(outputs, input_size=(SIZE, SIZE), threshold=0.5, nms_iou=0.3)
    assert len(rows) == 1 and scores_of(rows)[0] == np.float32(0.9)
    np.testing.assert_allclose(landmarks_of(rows)[0], np.tile([16 - 16, 0 - 16], (5, 1)))   # centre (16, 0) - 16


def test_scrfd_without_landmark_outputs_gives_nan_landmarks(tmp_path):
    path = tmp_path / "det_6.onnx"
    scrfd_graph(path, batched=True, landmarks=False)
    found = build_detector("scrfd", weights=path, max_side=SIZE).detect(np.zeros((2, 32, 32, 3), np.uint8))
    assert [f.shape for f in found] == [(1, 15), (1, 15)]
    np.testing.assert_allclose(boxes_of(found[0]), [[8, -4, 24, 20]], atol=1e-5)
    assert np.isnan(landmarks_of(found[0])).all()


def test_scrfd_without_weights_names_backend_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'scrfd'.*det_10g\.onnx"):
        build_detector("scrfd", weights=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'scrfd'.*None"):
        build_detector("scrfd", weights=None)
