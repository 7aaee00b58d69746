"""The ``face_alignment`` package's SFD / BlazeFace detectors, weights only from its local torch-hub cache.

Both give boxes and scores only (``detect_from_batch``), so the landmark columns are NaN.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kitlib.faces.detectors import register_detector, _check_frames, _downscale_factor, pack_detections

log = logging.getLogger(__name__)


FACE_ALIGNMENT_WEIGHTS: dict[str, tuple[str, ...]] = {
    "sfd": ("s3fd-619a316812.pth",),
    "blazeface": ("blazeface.pth", "anchors.npy"),
    "blazeface-back": ("blazefaceback.pth", "anchorsback.npy"),
}


def face_alignment_weight_paths(backend: str, weights_dir: Path | str | None = None) -> list[Path]:
    """Where the ``face_alignment`` weights for ``backend`` must lie (its torch-hub cache by default)."""
    if backend not in FACE_ALIGNMENT_WEIGHTS:
        raise ValueError(f"unknown face_alignment backend {backend!r}; valid: {sorted(FACE_ALIGNMENT_WEIGHTS)}")
    root = Path(weights_dir) if weights_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    return [root / name for name in FACE_ALIGNMENT_WEIGHTS[backend]]


@register_detector("face-alignment")
class FaceAlignmentDetector:
    """The ``face_alignment`` package's SFD (S3FD) or BlazeFace detector, batched on ``device``.

    Weights are read only from local files (``weights_dir`` or torch-hub's cache); when they are
    absent this raises ``FileNotFoundError`` naming the paths looked at. The package is never
    given a chance to download: the files are checked first and passed to it by path.
    """

    name = "face-alignment"

    def __init__(self, *, backend: str = "sfd", device: torch.device | str = "cpu",
                 weights_dir: Path | str | None = None, filter_threshold: float = 0.5,
                 max_side: int | None = 640):
        paths = face_alignment_weight_paths(backend, weights_dir)
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"face_alignment {backend!r} weights not found: looked for {missing}. The kit never "
                f"downloads weights; copy them there (or pass weights_dir=...) or use the "
                f"'opencv-haar' or 'boxes' detector")
        self.backend = backend
        self.device = torch.device(device)
        self.max_side = max_side  # detect on a copy whose long side is at most this
        device_name = str(self.device)
        if backend == "sfd":
            from face_alignment.detection.sfd.sfd_detector import SFDDetector

            self._net = SFDDetector(device_name, path_to_detector=str(paths[0]), filter_threshold=filter_threshold)
        else:
            from face_alignment.detection.blazeface.blazeface_detector import BlazeFaceDetector

            self._net = BlazeFaceDetector(device_name, back_model=backend == "blazeface-back",
                                          path_to_detector=str(paths[0]), path_to_anchor=str(paths[1]),
                                          min_score_thresh=filter_threshold)

    def for_video(self, videoid: str) -> "FaceAlignmentDetector":
        return self

    def detect(self, frames: np.ndarray, *, frame_index: np.ndarray | None = None) -> list[np.ndarray]:
        frames = _check_frames(frames)
        _, height, width, _ = frames.shape
        factor = _downscale_factor(height, width, self.max_side)
        batch = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float()
        if factor < 1.0:
            batch = F.interpolate(batch, size=(round(height * factor), round(width * factor)),
                                  mode="bilinear", antialias=True, align_corners=False)
        with torch.inference_mode():
            found = self._net.detect_from_batch(batch)
        out = []
        for boxes in found:
            boxes = np.asarray(boxes, np.float32).reshape(-1, 5)   # x1, y1, x2, y2, score
            out.append(pack_detections(boxes[:, :4] / factor, boxes[:, 4]))   # no landmarks: NaN
        return out


