"""The demo's faces: drawn expressions on the scikit-image face photo, placed, composited and cropped.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from kitlib import NUM_CLASSES

log = logging.getLogger(__name__)


# Face source: skimage.data.astronaut() rows 20-200, cols 150-330 (180 x 180 px). The face box is
# the Haar cascade's box on the neutral patch, so truth boxes and detector boxes agree in size.
FACE_SOURCE_ROWS = (20, 200)
FACE_SOURCE_COLS = (150, 330)
PATCH_FACE_BOX = (26.0, 45.0, 124.0, 143.0)    # x1, y1, x2, y2 in patch pixels
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
IMAGE_SIZE = 112                               # side of the class-per-folder face crops
OFFICIAL_CROP_SIZE = 112                       # side of the release's cropped_aligned/ images
OFFICIAL_CROPS_DIR = "cropped_aligned"

_AA = cv2.LINE_AA
_LIP = (150, 75, 75)
_DARK = (45, 28, 20)
_MOUTH = (70, 20, 25)
_MOUTH_MID = (120, 50, 55)
_TEETH = (240, 235, 225)
# Class colour cue: per-channel gain on the face (RGB).
_CLASS_TINT = np.array([(1.00, 1.00, 1.00), (1.18, 0.88, 0.85), (0.92, 1.10, 0.85), (0.88, 0.95, 1.15),
                        (1.10, 1.05, 0.85), (0.85, 0.90, 1.05), (1.05, 1.00, 1.10), (1.08, 0.85, 1.12)],
                       dtype=np.float32)



@lru_cache(maxsize=1)
def base_face() -> np.ndarray:
    """The neutral face patch (180 x 180 RGB): the astronaut photo with her smile painted out."""
    from skimage import data as skdata

    photo = skdata.astronaut()
    patch = np.ascontiguousarray(photo[slice(*FACE_SOURCE_ROWS), slice(*FACE_SOURCE_COLS)])
    mouth = np.zeros(patch.shape[:2], np.uint8)
    cv2.ellipse(mouth, (75, 127), (27, 12), 0, 0, 360, 255, -1)
    patch = cv2.inpaint(patch, mouth, 5, cv2.INPAINT_TELEA)
    patch.setflags(write=False)
    return patch


@lru_cache(maxsize=1)
def _head_alpha() -> np.ndarray:
    """Soft elliptical mask of head and hair in the patch (float32 0..1)."""
    alpha = np.zeros((FACE_SOURCE_ROWS[1] - FACE_SOURCE_ROWS[0], FACE_SOURCE_COLS[1] - FACE_SOURCE_COLS[0]),
                     np.float32)
    cv2.ellipse(alpha, (76, 90), (72, 84), 0, 0, 360, 1.0, -1, _AA)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 3.0)
    alpha.setflags(write=False)
    return alpha


def _wide_eye(face: np.ndarray, centre: tuple[int, int]) -> None:
    cv2.ellipse(face, (centre[0], centre[1] + 1), (10, 8), 0, 180, 360, (30, 20, 15), 2, _AA)


def draw_expression(face: np.ndarray, label: int) -> np.ndarray:
    """Draw the cue of class ``label`` (mouth, brows, eyes, colour) on a neutral face patch.

    The cues are cartoon-simple on purpose (a small ViT must separate them from a few hundred
    crops) and were checked to keep the Haar cascade's detection rate high.
    """
    f = np.array(face, dtype=np.uint8, copy=True)
    if label == 0:      # Neutral: closed lips
        cv2.line(f, (61, 126), (89, 126), _LIP, 3, _AA)
    elif label == 1:    # Anger: lowered inward brows, frown lines, clenched teeth
        cv2.line(f, (38, 64), (66, 77), _DARK, 4, _AA)
        cv2.line(f, (112, 64), (84, 77), _DARK, 4, _AA)
        cv2.line(f, (72, 70), (73, 80), _DARK, 1, _AA)
        cv2.line(f, (78, 70), (77, 80), _DARK, 1, _AA)
        cv2.rectangle(f, (60, 123), (90, 130), _MOUTH, -1)
        cv2.line(f, (61, 126), (89, 126), _TEETH, 2)
    elif label == 2:    # Disgust: nose wrinkles, squint, raised asymmetric upper lip
        cv2.line(f, (67, 97), (71, 104), _DARK, 1, _AA)
        cv2.line(f, (83, 97), (79, 104), _DARK, 1, _AA)
        cv2.line(f, (44, 86), (62, 86), _DARK, 2, _AA)
        cv2.line(f, (87, 87), (105, 87), _DARK, 2, _AA)
        lip = np.array([[58, 130], [66, 121], [78, 124], [92, 119], [88, 131], [72, 133]], np.int32)
        cv2.fillPoly(f, [lip], _MOUTH, _AA)
        cv2.line(f, (66, 123), (88, 121), _TEETH, 2, _AA)
    elif label == 3:    # Fear: raised straight brows, wide eyes, stretched open mouth
        cv2.line(f, (40, 66), (64, 61), _DARK, 3, _AA)
        cv2.line(f, (110, 66), (86, 61), _DARK, 3, _AA)
        _wide_eye(f, (53, 82))
        _wide_eye(f, (96, 83))
        cv2.ellipse(f, (75, 128), (17, 6), 0, 0, 360, _MOUTH, -1, _AA)
        cv2.line(f, (61, 125), (89, 125), _TEETH, 2, _AA)
    elif label == 4:    # Happiness: open smile with teeth, blushing cheeks
        cv2.ellipse(f, (75, 121), (21, 13), 0, 0, 180, _MOUTH, -1, _AA)
        cv2.ellipse(f, (75, 121), (19, 5), 0, 0, 180, _TEETH, -1, _AA)
        cv2.circle(f, (46, 110), 8, (235, 140, 140), -1, _AA)
        cv2.circle(f, (104, 110), 8, (235, 140, 140), -1, _AA)
    elif label == 5:    # Sadness: inner brows raised, downturned mouth, tears
        cv2.line(f, (44, 68), (62, 63), _DARK, 2, _AA)
        cv2.line(f, (106, 68), (88, 63), _DARK, 2, _AA)
        cv2.ellipse(f, (75, 136), (17, 9), 0, 180, 360, _LIP, 3, _AA)
        cv2.ellipse(f, (47, 106), (2, 5), 0, 0, 360, (90, 150, 230), -1, _AA)
        cv2.ellipse(f, (104, 107), (2, 5), 0, 0, 360, (90, 150, 230), -1, _AA)
    elif label == 6:    # Surprise: high arched brows, wide eyes, O mouth
        cv2.ellipse(f, (53, 66), (13, 6), 0, 180, 360, _DARK, 2, _AA)
        cv2.ellipse(f, (97, 66), (13, 6), 0, 180, 360, _DARK, 2, _AA)
        _wide_eye(f, (53, 82))
        _wide_eye(f, (96, 83))
        cv2.ellipse(f, (75, 131), (8, 11), 0, 0, 360, _MOUTH_MID, -1, _AA)
    elif label == 7:    # Other: wink, sideways smirk, tongue
        cv2.ellipse(f, (96, 83), (11, 6), 0, 0, 360, (215, 170, 150), -1, _AA)
        cv2.ellipse(f, (96, 81), (10, 5), 0, 0, 180, _DARK, 2, _AA)
        cv2.line(f, (60, 131), (92, 121), _LIP, 3, _AA)
        cv2.ellipse(f, (82, 130), (6, 7), -20, 0, 360, (225, 90, 120), -1, _AA)
    else:
        raise ValueError(f"label must be in 0..{NUM_CLASSES - 1}, got {label}")
    return np.clip(f.astype(np.float32) * _CLASS_TINT[label], 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Identity:
    """Per-video look of the face: mirror, exposure, colour cast, head tilt, face width."""

    flip: bool
    gain: float
    bias: float
    tint: tuple[float, float, float]
    tilt_deg: float
    aspect: float

    @staticmethod
    def sample(rng: np.random.Generator) -> "Identity":
        return Identity(flip=bool(rng.random() < 0.5), gain=float(rng.uniform(0.75, 1.2)),
                        bias=float(rng.uniform(-20, 20)),
                        tint=tuple(float(t) for t in rng.uniform(0.92, 1.08, 3)),
                        tilt_deg=float(rng.uniform(-5, 5)), aspect=float(rng.uniform(0.9, 1.1)))


def face_sprites(identity: Identity) -> np.ndarray:
    """One RGBA sprite (180 x 180) per class for ``identity``: (NUM_CLASSES, 180, 180, 4) uint8."""
    alpha = (_head_alpha() * 255).astype(np.uint8)
    sprites = []
    for label in range(NUM_CLASSES):
        face = draw_expression(base_face(), label).astype(np.float32)
        face = face * identity.gain * np.array(identity.tint, np.float32) + identity.bias
        rgba = np.dstack([np.clip(face, 0, 255).astype(np.uint8), alpha])
        sprites.append(rgba[:, ::-1] if identity.flip else rgba)
    return np.ascontiguousarray(np.stack(sprites))


def _patch_box(identity: Identity) -> np.ndarray:
    """The face box in sprite pixels (mirrored with the sprite)."""
    x1, y1, x2, y2 = PATCH_FACE_BOX
    if identity.flip:
        width = FACE_SOURCE_COLS[1] - FACE_SOURCE_COLS[0]
        x1, x2 = width - x2, width - x1
    return np.array([x1, y1, x2, y2], np.float64)


def _placement(identity: Identity, *, centre: tuple[float, float], box_height: float,
               roll_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Affine map sprite -> frame putting the face box centre at ``centre``, and the face box it yields."""
    box = _patch_box(identity)
    scale = box_height / (box[3] - box[1])
    sx, sy = scale * identity.aspect, scale
    theta = math.radians(roll_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    linear = np.array([[cos, -sin], [sin, cos]]) @ np.diag([sx, sy])
    box_centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    offset = np.asarray(centre, np.float64) - linear @ box_centre
    affine = np.hstack([linear, offset[:, None]])
    corners = np.array([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]])
    moved = corners @ linear.T + offset
    return affine, np.concatenate([moved.min(0), moved.max(0)])


def _composite(canvas: np.ndarray, sprite: np.ndarray, affine: np.ndarray) -> None:
    """Alpha-blend a warped RGBA sprite onto ``canvas`` (H x W x 3 float32) in place.

    Only the frame rectangle the sprite lands on is warped and blended.
    """
    height, width = canvas.shape[:2]
    side_y, side_x = sprite.shape[:2]
    corners = np.array([[0, 0], [side_x, 0], [side_x, side_y], [0, side_y]], np.float64)
    moved = corners @ affine[:, :2].T + affine[:, 2]
    x0, y0 = np.maximum(np.floor(moved.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(moved.max(0)).astype(int) + 1, (width, height))
    if x1 <= x0 or y1 <= y0:
        return
    local = affine.copy()
    local[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(sprite, local, (int(x1 - x0), int(y1 - y0)), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    alpha = warped[..., 3:4].astype(np.float32) * (1.0 / 255.0)
    roi = canvas[y0:y1, x0:x1]
    roi *= 1.0 - alpha
    roi += warped[..., :3].astype(np.float32) * alpha


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random scene: two-colour gradient, blurred noise and a few shapes (float32 RGB)."""
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (xx / width) * math.cos(angle) + (yy / height) * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    scene = c0 + (c1 - c0) * ramp[..., None]
    noise = cv2.GaussianBlur(rng.normal(0, 1, (height, width, 3)).astype(np.float32), (0, 0), 2.0)
    scene = (scene + noise * rng.uniform(6, 18)).astype(np.float32)
    for _ in range(int(rng.integers(3, 8))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            cv2.circle(scene, (cx, cy), int(rng.integers(8, height // 3)), colour, -1, _AA)
        else:
            w, h = int(rng.integers(10, width // 2)), int(rng.integers(10, height // 2))
            cv2.rectangle(scene, (cx, cy), (cx + w, cy + h), colour, -1)
    return np.clip(scene, 0, 255)


def official_crop(image: np.ndarray, box: np.ndarray, *, size: int = OFFICIAL_CROP_SIZE) -> np.ndarray:
    """The release's kind of face crop: the square on the longer side of ``box``, moved inside the frame.

    Like the organisers' ``cropped_aligned`` images the crop is tight on the face and never padded:
    where the square would pass the frame border it is shifted back inside (and shrunk to the
    frame's short side if larger), so a face crossing the border is cut, not padded. Resized to
    ``size`` x ``size`` (area interpolation).
    """
    height, width = image.shape[:2]
    side = int(round(min(max(box[2] - box[0], box[3] - box[1]), width, height)))
    side = max(side, 1)
    x0 = int(round(np.clip((box[0] + box[2]) / 2 - side / 2, 0, width - side)))
    y0 = int(round(np.clip((box[1] + box[3]) / 2 - side / 2, 0, height - side)))
    return cv2.resize(image[y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_AREA)


