"""OpenCV's Haar frontal-face cascade (no weights to fetch; CPU, one frame at a time). Boxes and scores
only: the landmark columns are NaN.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from kitlib.faces.detectors import register_detector, _check_frames, _downscale_factor, _no_faces, pack_detections

log = logging.getLogger(__name__)


@register_detector("opencv-haar")
class HaarDetector:
    """OpenCV's frontal-face Haar cascade, shipped inside the opencv-python wheel (no download).

    Fast on CPU and weight-free; it misses profile and strongly rotated faces and faces crossing the
    frame border (1 of 13 half-visible border faces on the real-photo clip, CenterFace 10 of 13:
    ``benchmarks/photo_clip_faces.py``), so CenterFace is the default. Box convention: its square
    box's side is 1.01x the height of the WIDER FACE box on that clip's faces, so the crop scales
    mean the same with either backend (no calibration factor needed). Score = the cascade's neighbour
    count (how many overlapping windows voted for the face); no landmarks (NaN). Speed on 2 CPU cores, 720p frames:
    ~4-7 frames/s with the defaults (~10 with scale_factor=1.2 or min_size_frac=0.15), so for the
    whole Aff-Wild2 release prefer ``face-alignment`` on a GPU or precomputed ``boxes``.
    """

    name = "opencv-haar"

    def __init__(self, *, scale_factor: float = 1.1, min_neighbors: int = 5, min_size_frac: float = 0.1,
                 max_side: int | None = 480, cascade: str = "haarcascade_frontalface_default.xml"):
        import cv2

        self.scale_factor = scale_factor        # image pyramid step of the cascade
        self.min_neighbors = min_neighbors      # votes needed to keep a face (higher: fewer false faces)
        self.min_size_frac = min_size_frac      # smallest face, as a fraction of the frame's short side
        self.max_side = max_side                # detect on a copy whose long side is at most this
        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved the cascades out of its main module
            raise ImportError(f"face detector 'opencv-haar': this OpenCV ({cv2.__version__}) has no CascadeClassifier; "
                              f"install opencv-python<5 (requirements.txt) or use the 'centerface' detector")
        path = Path(cascade) if Path(cascade).is_file() else Path(cv2.data.haarcascades) / cascade
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FileNotFoundError(f"OpenCV Haar cascade {path} is missing or unreadable")

    def for_video(self, videoid: str) -> "HaarDetector":
        return self

    def detect(self, frames: np.ndarray, *, frame_index: np.ndarray | None = None) -> list[np.ndarray]:
        import cv2

        frames = _check_frames(frames)
        _, height, width, _ = frames.shape
        factor = _downscale_factor(height, width, self.max_side)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        min_side = max(12, int(self.min_size_frac * min(size)))
        out = []
        for frame in frames:  # the cascade works on one image at a time
            grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            if factor < 1.0:
                grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
            rects, votes = self._cascade.detectMultiScale2(grey, scaleFactor=self.scale_factor,
                                                            minNeighbors=self.min_neighbors,
                                                            minSize=(min_side, min_side))
            if len(rects) == 0:
                out.append(_no_faces())
                continue
            rects = np.asarray(rects, np.float32) / factor
            boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
            out.append(pack_detections(boxes, np.asarray(votes, np.float32)))   # no landmarks: NaN
        return out


# Files face_alignment's detectors fetch with torch.hub (name in <hub dir>/checkpoints/).
