"""Plausibility of detected 5-point face landmarks, without ground-truth points.

A detector's landmarks (``kitlib.faces.detectors``: ``LANDMARK_NAMES`` order, the image-left eye
first) are plausible when they lie in or near their face box, both eyes are above both mouth
corners, and on an upright, unmirrored face the image-left eye and mouth corner are left of their
right counterparts. These checks, and the inter-ocular distance relative to the box width, score the
backends' landmark decoding in the tests and ``benchmarks/photo_clip_faces.py``.
"""
from __future__ import annotations

import numpy as np

from kitlib.faces.detectors import LANDMARK_NAMES, boxes_of, landmarks_of

LEFT_EYE, RIGHT_EYE = LANDMARK_NAMES.index("left_eye"), LANDMARK_NAMES.index("right_eye")
LEFT_MOUTH, RIGHT_MOUTH = LANDMARK_NAMES.index("left_mouth"), LANDMARK_NAMES.index("right_mouth")


def landmark_checks(found: np.ndarray, *, margin: float = 0.1) -> dict[str, np.ndarray]:
    """Per detection of one frame's ``found`` (k, 15), (k,) bool (False where the landmarks are NaN):

    ``inside``: all 5 points inside the box grown by ``margin`` of its width / height on every side;
    ``eyes_above_mouth``: both eyes above (smaller y than) both mouth corners;
    ``left_right``: the image-left eye and mouth corner have a smaller x than the right ones (the
    documented order, on upright faces); ``all``: the three together.
    """
    boxes, points = boxes_of(found).astype(np.float64), landmarks_of(found).astype(np.float64)
    width, height = (boxes[:, 2] - boxes[:, 0])[:, None], (boxes[:, 3] - boxes[:, 1])[:, None]
    x, y = points[..., 0], points[..., 1]
    with np.errstate(invalid="ignore"):   # NaN landmarks compare False
        inside = ((x >= boxes[:, :1] - margin * width) & (x <= boxes[:, 2:3] + margin * width)
                  & (y >= boxes[:, 1:2] - margin * height) & (y <= boxes[:, 3:4] + margin * height)).all(1)
        eyes_above_mouth = (np.maximum(y[:, LEFT_EYE], y[:, RIGHT_EYE])
                            < np.minimum(y[:, LEFT_MOUTH], y[:, RIGHT_MOUTH]))
        left_right = (x[:, LEFT_EYE] < x[:, RIGHT_EYE]) & (x[:, LEFT_MOUTH] < x[:, RIGHT_MOUTH])
    return {"inside": inside, "eyes_above_mouth": eyes_above_mouth, "left_right": left_right,
            "all": inside & eyes_above_mouth & left_right}


def interocular_ratio(found: np.ndarray) -> np.ndarray:
    """(k,) distance between the two eyes over the box width (NaN where the landmarks are NaN)."""
    boxes, points = boxes_of(found).astype(np.float64), landmarks_of(found).astype(np.float64)
    return np.linalg.norm(points[:, RIGHT_EYE] - points[:, LEFT_EYE], axis=1) / (boxes[:, 2] - boxes[:, 0])
