"""SCRFD decoding on a small ONNX graph built here with SCRFD's output layout (InsightFace's weights are not shipped)."""
from __future__ import annotations

import numpy as np
import pytest

from kitlib.faces import build_detector

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZE = 64   # detection canvas: grids 8x8, 4x4, 2x2 at strides 8, 16, 32, two anchors per cell


def scrfd_graph(path, *, batched: bool) -> tuple[int, float]:
    """An ONNX graph with SCRFD's 9 outputs; one face at stride 16, cell (row 1, col 2), anchor 0.

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
        values[f"kps{stride}"] = np.zeros((n, 10), np.float32)
    anchor = (1 * (SIZE // 16) + 2) * 2
    values["score16"][anchor] = 0.9
    values["bbox16"][anchor] = (1.0, 1.5, 1.0, 1.5)   # left, top, right, bottom in stride units
    for name in [f"{k}{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]:
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
    np.testing.assert_allclose(found[0], [[8, -4, 24, 20, 0.9]], atol=1e-5)
    np.testing.assert_allclose(found[1], found[0])


def test_scrfd_without_weights_names_backend_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'scrfd'.*det_10g\.onnx"):
        build_detector("scrfd", weights=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'scrfd'.*None"):
        build_detector("scrfd", weights=None)
