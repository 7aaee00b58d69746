"""SCRFD (Guo et al., "Sample and Computation Redistribution for Efficient Face Detection", 2021) from an
InsightFace model folder, e.g. ``buffalo_l/det_10g.onnx``: the detector the reference system's authors used.

The ONNX graph outputs, per feature stride (8, 16, 32), anchor scores, box distances (left, top,
right, bottom, in stride units) and, in 9-output graphs (``det_10g.onnx``), 5 landmark offsets
(``x, y`` per point, in stride units, from the anchor centre), for ``num_anchors`` anchors per grid
cell; the decoding below is InsightFace's (``insightface/model_zoo/scrfd.py``): anchor centres on
the stride grid, ``distance2bbox`` and ``distance2kps`` (centre + offset x stride), a score
threshold and NMS, each box keeping its own landmarks (NaN from a 6-output graph). The points come
in InsightFace's order, the kit's (``LANDMARK_NAMES``: the image-left eye first). Frames are letterboxed (aspect kept,
top-left) into a ``max_side`` x ``max_side`` canvas, normalised ``(x - 127.5) / 128`` in RGB.
Trained on WIDER FACE: boxes in the WIDER convention (``box_scale`` 1.0). Weights never download:
the file must exist (``weights``), else ``FileNotFoundError`` names the backend and the file.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from kitlib.faces.detectors import (LANDMARK_NAMES, _check_frames, _no_faces, boxes_of, landmarks_of, pack_detections,
                                    register_detector, scores_of)

log = logging.getLogger(__name__)

STRIDES: tuple[int, ...] = (8, 16, 32)


def decode_scrfd(outputs: list[np.ndarray], *, input_size: tuple[int, int], threshold: float,
                 nms_iou: float) -> np.ndarray:
    """Detections (k, 15) (``kitlib.faces.detectors.DETECTION_COLUMNS``) in input pixels from one image's
    SCRFD ``outputs`` (3 score, 3 distance[, 3 landmark] arrays, strides 8/16/32, batch axis removed);
    landmarks NaN when the graph has no landmark outputs."""
    from torchvision.ops import nms

    width, height = input_size
    n_levels = len(STRIDES)
    with_landmarks = len(outputs) == 3 * n_levels
    found = []
    for level, stride in enumerate(STRIDES):
        scores = outputs[level].reshape(-1)
        distances = outputs[level + n_levels].reshape(-1, 4) * stride
        grid_h, grid_w = height // stride, width // stride
        num_anchors = max(1, len(scores) // (grid_h * grid_w))
        centres = np.stack(np.mgrid[:grid_h, :grid_w][::-1], axis=-1).reshape(-1, 2).astype(np.float32) * stride
        centres = np.repeat(centres, num_anchors, axis=0)
        keep = np.flatnonzero(scores >= threshold)
        if len(keep) == 0:
            continue
        c, d = centres[keep], distances[keep]
        landmarks = None
        if with_landmarks:   # distance2kps: anchor centre + offset x stride, per point
            offsets = outputs[level + 2 * n_levels].reshape(-1, len(LANDMARK_NAMES), 2)[keep] * stride
            landmarks = c[:, None, :] + offsets
        found.append(pack_detections(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1), scores[keep], landmarks))
    if not found:
        return _no_faces()
    rows = np.concatenate(found)
    keep = nms(torch.from_numpy(rows[:, :4]), torch.from_numpy(rows[:, 4]), nms_iou).numpy()
    return rows[keep]


@register_detector("scrfd")
class ScrfdDetector:
    """SCRFD / RetinaFace-style ONNX detector from an InsightFace model folder (onnxruntime, CPU or CUDA).

    ``weights``: the ``.onnx`` file or the model folder holding ``det_10g.onnx`` (``buffalo_l``);
    ``max_side``: the square detection canvas; ``threshold`` / ``nms_iou`` as InsightFace (0.5 / 0.4).
    """

    name = "scrfd"

    def __init__(self, *, weights: Path | str | None, device: torch.device | str = "cpu", threshold: float = 0.5,
                 nms_iou: float = 0.4, max_side: int | None = 640, box_scale: float = 1.0):
        import onnxruntime

        path = Path(weights) if weights is not None else None
        if path is not None and path.is_dir():
            path = path / "det_10g.onnx"
        if path is None or not path.is_file():
            raise FileNotFoundError(f"face detector 'scrfd': weights {path} not found (InsightFace's det_10g.onnx "
                                    f"from the buffalo_l folder; set faces.detector_weights, the kit never downloads)")
        self.weights_path = path
        self.threshold, self.nms_iou, self.box_scale = threshold, nms_iou, box_scale
        self.max_side = int(max_side or 640)
        self.device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        elif self.device.type == "cuda":
            log.warning("scrfd: onnxruntime has no CUDA provider here (install onnxruntime-gpu); detecting on the CPU")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise FileNotFoundError(f"face detector 'scrfd': weights {path} are unreadable "
                                    f"({type(exc).__name__}: {exc})") from exc
        self.provider = self._session.get_providers()[0]
        first = self._session.get_inputs()[0]
        self._input = first.name
        self._batched = len(self._session.get_outputs()[0].shape) == 3   # InsightFace's rule: (B, n, c) outputs
        self._outputs = [o.name for o in self._session.get_outputs()]
        if len(self._outputs) not in (6, 9):
            raise ValueError(f"face detector 'scrfd': {path} has {len(self._outputs)} outputs; SCRFD graphs have "
                             f"6 (boxes) or 9 (boxes + landmarks)")

    def for_video(self, videoid: str) -> "ScrfdDetector":
        return self

    def _letterbox(self, frames: np.ndarray) -> tuple[np.ndarray, float]:
        """(B, 3, S, S) float32 canvases (frames resized, aspect kept, top-left) and the resize factor."""
        import cv2

        _, height, width, _ = frames.shape
        factor = self.max_side / max(height, width)
        new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
        canvas = np.zeros((len(frames), self.max_side, self.max_side, 3), np.float32)
        for i, frame in enumerate(frames):
            canvas[i, :new_h, :new_w] = cv2.resize(frame, (new_w, new_h)) if (new_w, new_h) != (width, height) else frame
        canvas = (canvas - 127.5) / 128.0
        return np.ascontiguousarray(canvas.transpose(0, 3, 1, 2)), factor

    def detect(self, frames: np.ndarray, *, frame_index: np.ndarray | None = None) -> list[np.ndarray]:
        frames = _check_frames(frames)
        if len(frames) == 0:
            return []
        blob, factor = self._letterbox(frames)
        size = (self.max_side, self.max_side)
        if self._batched:
            outs = self._session.run(self._outputs, {self._input: blob})
            per_frame = [[o[b] for o in outs] for b in range(len(frames))]
        else:  # InsightFace's released graphs fix the batch at 1
            per_frame = [self._session.run(self._outputs, {self._input: blob[b:b + 1]}) for b in range(len(frames))]
        out = []
        for outs in per_frame:
            found = decode_scrfd(outs, input_size=size, threshold=self.threshold, nms_iou=self.nms_iou)
            boxes, landmarks = boxes_of(found) / factor, landmarks_of(found) / factor   # canvas -> frame pixels
            if self.box_scale != 1.0 and len(boxes):
                centre = 0.5 * (boxes[:, :2] + boxes[:, 2:4])
                half = 0.5 * self.box_scale * (boxes[:, 2:4] - boxes[:, :2])
                boxes = np.concatenate([centre - half, centre + half], 1)
            out.append(pack_detections(boxes, scores_of(found), landmarks))
        return out
