"""The embedded demo dataset: a small, synthetic Aff-Wild2 EXPR release that the kit generates itself.

The kit must run end to end with no data and no internet, so this module writes a dataset in the
exact layout of the real release (raw videos with audio, ``Train_Set`` / ``Validation_Set``
annotation files, test names and submission template), plus a class-per-folder face image set that
stands in for AffectNet / RAF-DB in Stage-I adaptation (paper Sec. 3.1) and a ``truth/`` folder the
real release does not have (labels of every track including test, face boxes, which modality
carries the class). Layout under ``root``::

    videos/batch{1,2}/<videoid>.mp4           h264 yuv420p video + AAC 44.1 kHz stereo audio
    annotations/{Train_Set,Validation_Set}/<txtid>.txt
    test/names.txt, test/template.txt
    images/{train,val}/<ClassName>/*.png      112x112 face crops
    cropped_aligned/<txtid>/<00001>.jpg       the organisers' kind of face crops: 112x112, tight on the
                                              face box, 1-based frame numbers, no file where no face
    truth/<txtid>.npz                         labels, boxes, face_visible, visual_signal, audio_signal,
                                              visual_class, audio_class (what the picture / sound shows)
    demo_manifest.json                        written last: params, tracks, statistics

What makes the demo exercise the real pipeline (Stage II, Sec. 3.2): faces are built from the real
photo shipped with scikit-image so OpenCV's Haar cascade finds them; each class has a drawn facial
cue and a distinct sound (harmonic tone with a class-specific fundamental and amplitude-modulation
rate); faces move, change scale, cross the frame border (zero-padded crops) and go missing; about a
quarter of the labelled frames show a neutral face whatever the label and another quarter carry no
sound, so gated audio-visual fusion (eqs. 9-12) beats either modality; short bursts of the wrong
cue make inference-time temporal smoothing pay off. One train video has two annotated people
(``_left`` / ``_right``) and one annotation file is one line longer than its video.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from kitlib import CLASSES, NUM_CLASSES
from kitlib.data import HEADER

log = logging.getLogger("kitlib.demo")

DEMO_VERSION = 2                 # bump when the generated content changes: old demos are regenerated
MANIFEST_NAME = "demo_manifest.json"
TEMPLATE_HEADER = "image_location," + HEADER

# Class frequencies of the real release (expr_cv5_summary.json, global_class_hist / total).
REAL_CLASS_RATIO = np.array([0.2996, 0.0266, 0.0186, 0.0201, 0.1475, 0.1212, 0.0490, 0.3174])

# Sound of each class: harmonic tone, fundamental (Hz) and amplitude-modulation rate (Hz).
CLASS_F0_HZ = np.array([150.0, 190.0, 240.0, 300.0, 360.0, 420.0, 500.0, 600.0])
CLASS_AM_HZ = np.array([3.0, 7.5, 5.0, 10.0, 4.0, 2.0, 8.5, 6.0])

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

_INVALID_FRACTION = 0.08         # frames labelled -1 (runs of 0.3-2 s)
_ABSENT_SHARE = 0.65             # share of -1 runs where the face is gone (-> ~5% of frames)
_NOISE_FRACTION = 0.10           # frames whose cue shows another class (bursts of 1-3 frames)
_MODALITY_MODES = (0.5, 0.25, 0.25)   # chunk probabilities: both / visual off / audio off


# ----------------------------------------------------------------------------- faces

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


# ----------------------------------------------------------------------------- timelines

def _smooth_unit(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """A slow random signal in [0, 1] (sum of three low-frequency sinusoids)."""
    t = np.arange(n) / fps
    freqs = rng.uniform(0.03, 0.25, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    amps = rng.uniform(0.5, 1.0, 3)
    wave = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0)
    return 0.5 + 0.5 * wave / amps.sum()


def _runs(rng: np.random.Generator, n: int, *, total: int, min_len: int, max_len: int,
          taken: np.ndarray | None = None, margin: int = 0) -> list[tuple[int, int]]:
    """Non-overlapping runs [start, stop) of random length summing to about ``total`` frames."""
    busy = np.zeros(n, bool) if taken is None else taken.copy()
    runs: list[tuple[int, int]] = []
    covered, tries = 0, 0
    while covered < total and tries < 200:
        tries += 1
        length = int(min(rng.integers(min_len, max_len + 1), max(min_len, total - covered)))
        if length >= n - 2 * margin:
            continue
        start = int(rng.integers(margin, n - length - margin + 1))
        lo, hi = max(0, start - margin), min(n, start + length + margin)
        if busy[lo:hi].any():
            continue
        busy[lo:hi] = True
        runs.append((start, start + length))
        covered += length
    return sorted(runs)


def _segments(rng: np.random.Generator, n: int, fps: float) -> list[tuple[int, int]]:
    """Label segments [start, stop) of 1-4 s covering the whole track."""
    bounds = [0]
    while bounds[-1] < n:
        bounds.append(bounds[-1] + int(round(rng.uniform(1.0, 4.0) * fps)))
    bounds[-1] = n
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < fps * 0.5:   # no sliver at the end
        bounds.pop(-2)
    return list(zip(bounds[:-1], bounds[1:]))


def _chunk_modes(rng: np.random.Generator, n: int, fps: float, probs: Sequence[float]) -> np.ndarray:
    """A per-frame mode index drawn per chunk of 1-3 s with probabilities ``probs``."""
    modes = np.empty(n, np.int8)
    start = 0
    while start < n:
        stop = min(n, start + int(round(rng.uniform(1.0, 3.0) * fps)))
        modes[start:stop] = rng.choice(len(probs), p=np.asarray(probs) / np.sum(probs))
        start = stop
    return modes


def _with_bursts(rng: np.random.Generator, shown: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Replace ~10% of the eligible frames, in bursts of 1-3 frames, with a random other class."""
    shown = shown.copy()
    n = len(shown)
    n_bursts = int(round(_NOISE_FRACTION * eligible.sum() / 2.0))
    for start in rng.integers(0, max(n, 1), n_bursts):
        stop = min(n, int(start) + int(rng.integers(1, 4)))
        span = np.arange(start, stop)
        span = span[eligible[span]]
        if len(span):
            other = (shown[span[0]] + rng.integers(1, NUM_CLASSES)) % NUM_CLASSES
            shown[span] = other
    return shown


@dataclass
class _PersonPlan:
    """Everything about one annotated person of one video, frame by frame."""

    txtid: str
    side: str | None
    segments: list[tuple[int, int]]
    segment_classes: np.ndarray        # filled at split level
    invalid_runs: list[tuple[int, int]]
    absent_kind: list[str]             # per invalid run: exit | cover | none
    border_runs: list[tuple[int, int]]
    labels: np.ndarray | None = None   # (n,) int32, -1 invalid
    visual_signal: np.ndarray | None = None
    audio_signal: np.ndarray | None = None
    visual_class: np.ndarray | None = None
    audio_class: np.ndarray | None = None


@dataclass
class _VideoPlan:
    """One raw video: its name, split, length, people and the seed its pixels and sound come from."""

    videoid: str
    split: str
    batch: str
    n_frames: int
    extra_label_line: bool
    people: list[_PersonPlan]
    seed: np.random.SeedSequence


def _plan_person(rng: np.random.Generator, *, txtid: str, side: str | None, n: int, fps: float) -> _PersonPlan:
    """Segments, -1 runs (and whether the face is gone during them) and border crossings of one person."""
    invalid = _runs(rng, n, total=int(round(_INVALID_FRACTION * n * rng.uniform(0.7, 1.3))),
                    min_len=max(1, int(round(0.3 * fps))), max_len=int(round(2.0 * fps)),
                    margin=int(round(0.4 * fps)))
    kinds = []
    for _ in invalid:
        roll = rng.random()
        if roll < _ABSENT_SHARE:
            kinds.append("exit" if roll < _ABSENT_SHARE / 2 else "cover")
        else:
            kinds.append("none")
    busy = np.zeros(n, bool)
    pad = int(round(0.5 * fps))
    for start, stop in invalid:
        busy[max(0, start - pad):stop + pad] = True
    border = _runs(rng, n, total=int(round(rng.uniform(1.0, 2.5) * fps)), min_len=int(round(1.0 * fps)),
                   max_len=int(round(2.5 * fps)), taken=busy, margin=int(round(0.3 * fps)))
    return _PersonPlan(txtid=txtid, side=side, segments=_segments(rng, n, fps),
                       segment_classes=np.zeros(0, np.int64), invalid_runs=invalid, absent_kind=kinds,
                       border_runs=border)


def _assign_classes(rng: np.random.Generator, people: list[_PersonPlan], n_frames: list[int]) -> None:
    """Give each segment of a split a class: every class at least once (on a mostly valid segment),
    the rest drawn from the real release's class frequencies."""
    slots = []   # (person index, segment index, valid share)
    for p_idx, (person, n) in enumerate(zip(people, n_frames)):
        valid = np.ones(n, bool)
        for start, stop in person.invalid_runs:
            valid[start:stop] = False
        for s_idx, (start, stop) in enumerate(person.segments):
            slots.append((p_idx, s_idx, float(valid[start:stop].mean())))
        person.segment_classes = rng.choice(NUM_CLASSES, size=len(person.segments), p=REAL_CLASS_RATIO / REAL_CLASS_RATIO.sum())
    usable = [i for i, slot in enumerate(slots) if slot[2] >= 0.6]
    forced = rng.permutation(usable)[:NUM_CLASSES]
    for label, slot_idx in zip(rng.permutation(NUM_CLASSES), forced):
        p_idx, s_idx, _ = slots[slot_idx]
        people[p_idx].segment_classes[s_idx] = label


def _fill_frames(rng: np.random.Generator, person: _PersonPlan, n: int, fps: float,
                 speaking: np.ndarray | None) -> None:
    """Per-frame labels, modality flags and shown classes of one person.

    ``speaking`` (two-person video) marks the frames whose sound belongs to this person; without
    it the person always owns the sound.
    """
    underlying = np.empty(n, np.int32)
    for (start, stop), label in zip(person.segments, person.segment_classes):
        underlying[start:stop] = label
    valid = np.ones(n, bool)
    for start, stop in person.invalid_runs:
        valid[start:stop] = False
    labels = np.where(valid, underlying, -1).astype(np.int32)
    modes = _chunk_modes(rng, n, fps, _MODALITY_MODES)           # 0 both, 1 visual off, 2 audio off
    if speaking is None:
        visual_signal = valid & (modes != 1)
        audio_signal = valid & (modes != 2)
    else:   # the listener's sound is the other person's: show the face; the speaker may go blank
        visual_signal = valid & ~(speaking & (modes != 0))
        audio_signal = valid & speaking
    visual_class = np.where(visual_signal, underlying, 0)
    visual_class = np.where(valid, visual_class, underlying)    # unlabelled frames: the segment's face
    visual_class = _with_bursts(rng, visual_class, visual_signal)
    audio_class = _with_bursts(rng, np.where(audio_signal, underlying, -1), audio_signal)
    person.labels, person.visual_signal, person.audio_signal = labels, visual_signal, audio_signal
    person.visual_class = visual_class.astype(np.int8)
    person.audio_class = audio_class.astype(np.int8)


def _bump(n: int, runs: list[tuple[int, int]], ramp: int) -> np.ndarray:
    """1 inside each run, raised-cosine ramps of ``ramp`` frames outside it, 0 elsewhere."""
    frames = np.arange(n)
    out = np.zeros(n)
    for start, stop in runs:
        before = np.clip((frames - (start - ramp)) / max(ramp, 1), 0, 1)
        after = np.clip(((stop - 1 + ramp) - frames) / max(ramp, 1), 0, 1)
        out = np.maximum(out, 0.5 - 0.5 * np.cos(np.pi * np.minimum(before, after)))
    return out


def _trajectory(rng: np.random.Generator, person: _PersonPlan, identity: Identity, *, n: int, fps: float,
                width: int, height: int, region: tuple[float, float], size_range: tuple[float, float],
                exit_side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Face box centre (n, 2), box height (n,), roll (n,) and the covered flag (n,) of one person."""
    box_h = height * (size_range[0] + (size_range[1] - size_range[0]) * _smooth_unit(rng, n, fps))
    box_w = box_h * identity.aspect
    lo, hi = region
    span_w, span_h = box_w * 1.25, box_h * 1.2       # room for the tilt: the box stays inside
    cx = lo + span_w / 2 + _smooth_unit(rng, n, fps) * np.maximum(hi - lo - span_w, 0)
    cy = span_h / 2 + _smooth_unit(rng, n, fps) * np.maximum(height - span_h, 0)
    ramp = int(round(0.3 * fps))
    exits = [run for run, kind in zip(person.invalid_runs, person.absent_kind) if kind == "exit"]
    for runs, overhang in ((exits, 1.25), (person.border_runs, rng.uniform(0.2, 0.5))):
        weight = _bump(n, runs, ramp)
        target = (-overhang * box_w + box_w / 2) if exit_side < 0 else (width + overhang * box_w - box_w / 2)
        cx = (1 - weight) * cx + weight * target
    roll = identity.tilt_deg + 4.0 * (2 * _smooth_unit(rng, n, fps) - 1)
    covered = np.zeros(n, bool)
    for (start, stop), kind in zip(person.invalid_runs, person.absent_kind):
        if kind == "cover":
            covered[start:stop] = True
    return np.stack([cx, cy], 1), box_h, roll, covered


# ----------------------------------------------------------------------------- audio

def synth_audio(audio_class: np.ndarray, *, fps: float, sample_rate: int, rng: np.random.Generator,
                pan: np.ndarray | None = None) -> np.ndarray:
    """Stereo float32 audio (2, samples) for a video whose frame i sounds like ``audio_class[i]``.

    Each class is a harmonic tone with its own fundamental (CLASS_F0_HZ) and amplitude-modulation
    rate (CLASS_AM_HZ); -1 is background noise only. ``pan`` (per frame, 0 left .. 1 right) places
    the sound between the channels.
    """
    n_frames = len(audio_class)
    n_samples = int(round(n_frames / fps * sample_rate))
    frame_of = np.minimum((np.arange(n_samples) * fps / sample_rate).astype(np.int64), n_frames - 1)
    cls = np.asarray(audio_class, np.int64)[frame_of]
    on = cls >= 0
    safe = np.where(on, cls, 0)
    phase = 2 * np.pi * np.cumsum(CLASS_F0_HZ[safe]) / sample_rate
    am_phase = 2 * np.pi * np.cumsum(CLASS_AM_HZ[safe]) / sample_rate
    tone = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.3 * np.sin(3 * phase)
    envelope = 0.6 + 0.4 * np.sin(am_phase)
    ramp = max(1, int(0.005 * sample_rate))                       # 5 ms fades, no clicks
    gain = np.convolve(on.astype(np.float64), np.ones(ramp) / ramp, mode="same")
    signal = 0.18 * gain * envelope * tone
    noise_level = rng.uniform(0.01, 0.03)
    right = 0.5 if pan is None else np.asarray(pan, np.float64)[frame_of]
    left_gain, right_gain = np.sqrt(2 * (1 - right)), np.sqrt(2 * right)
    stereo = np.stack([signal * left_gain, signal * right_gain])
    stereo += rng.normal(0, noise_level, stereo.shape)
    return np.clip(stereo, -1, 1).astype(np.float32)


# ----------------------------------------------------------------------------- rendering

def _render_video(plan: _VideoPlan, path: Path, *, fps: float, size: tuple[int, int], sample_rate: int,
                  crops_root: Path) -> dict[str, dict[str, np.ndarray]]:
    """Render and encode one video; return the truth arrays of each annotated person.

    Each person's face crops (``official_crop`` of the truth box, frames where the face shows)
    are written as ``crops_root/<txtid>/<00001>.jpg``, the layout of the release's
    ``cropped_aligned`` folder.
    """
    rng = np.random.default_rng(plan.seed)
    width, height = size
    n = plan.n_frames
    background = _background(rng, width, height)
    two_people = len(plan.people) == 2
    layouts = []
    for person in plan.people:
        identity = Identity.sample(rng)
        if two_people:
            region = (0.0, width / 2) if person.side == "left" else (width / 2, float(width))
            size_range, exit_side = (0.25, 0.42), (-1 if person.side == "left" else 1)
        else:
            region, size_range, exit_side = (0.0, float(width)), (0.25, 0.60), int(rng.choice([-1, 1]))
        centre, box_h, roll, covered = _trajectory(rng, person, identity, n=n, fps=fps, width=width,
                                                   height=height, region=region, size_range=size_range,
                                                   exit_side=exit_side)
        layouts.append((identity, face_sprites(identity), centre, box_h, roll, covered,
                        tuple(float(c) for c in rng.uniform(30, 220, 3))))

    if two_people:
        left_sounds = plan.people[0].audio_class >= 0
        audio_class = np.where(left_sounds, plan.people[0].audio_class, plan.people[1].audio_class)
        pan = np.where(left_sounds, 0.3, 0.7)          # the speaker's side is louder
    else:
        audio_class, pan = plan.people[0].audio_class, None
    audio = synth_audio(audio_class, fps=fps, sample_rate=sample_rate, rng=rng, pan=pan)

    boxes = [np.full((n, 4), np.nan, np.float32) for _ in plan.people]
    visible = [np.zeros(n, bool) for _ in plan.people]
    crop_dirs = [crops_root / person.txtid for person in plan.people]
    for folder in crop_dirs:
        folder.mkdir(parents=True, exist_ok=True)

    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            canvas = background.copy()
            for k, (person, (identity, sprites, centre, box_h, roll, covered, cover_colour)) in enumerate(
                    zip(plan.people, layouts)):
                affine, box = _placement(identity, centre=(centre[i, 0], centre[i, 1]), box_height=box_h[i],
                                         roll_deg=roll[i])
                if box[2] <= 0 or box[0] >= width or box[3] <= 0 or box[1] >= height:
                    continue                                      # the face has left the frame
                _composite(canvas, sprites[person.visual_class[i]], affine)
                if covered[i]:
                    pad_w, pad_h = 0.2 * (box[2] - box[0]), 0.25 * (box[3] - box[1])
                    cv2.rectangle(canvas, (int(box[0] - pad_w), int(box[1] - pad_h)),
                                  (int(box[2] + pad_w), int(box[3] + pad_h)), cover_colour, -1)
                    continue
                boxes[k][i] = box
                visible[k][i] = box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height
            image = np.clip(canvas, 0, 255).astype(np.uint8)
            for k, folder in enumerate(crop_dirs):   # after every face is drawn: crops show what the video shows
                if np.isfinite(boxes[k][i, 0]):
                    crop = official_crop(image, boxes[k][i])
                    cv2.imwrite(str(folder / f"{i + 1:05d}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            yield image

    write_mp4(path, frames(), audio, fps=fps, size=(width, height), sample_rate=sample_rate)
    return {person.txtid: dict(labels=person.labels, boxes=boxes[k], face_visible=visible[k],
                               visual_signal=person.visual_signal, audio_signal=person.audio_signal,
                               visual_class=person.visual_class, audio_class=person.audio_class)
            for k, person in enumerate(plan.people)}


def write_mp4(path: Path, frames: Iterable[np.ndarray], audio: np.ndarray, *, fps: float, size: tuple[int, int],
              sample_rate: int) -> None:
    """Mux RGB frames (H, W, 3 uint8, streamed) as h264 yuv420p and stereo float audio (2, samples) as AAC.

    Audio is sent alongside the video so the two streams interleave in the file as in a real
    recording; what is left of it after the last frame is sent at the end.
    """
    import av

    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"{path}: yuv420p needs an even frame size, got {width}x{height}")
    rate = Fraction(fps).limit_denominator(1001)
    samples_per_frame = sample_rate / fps
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": "20", "preset": "veryfast"}
        sound = container.add_stream("aac", rate=sample_rate, layout="stereo")

        def send_audio(start: int, stop: int) -> None:
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start:stop]), format="fltp",
                                               layout="stereo")
            chunk.sample_rate, chunk.pts, chunk.time_base = sample_rate, start, Fraction(1, sample_rate)
            container.mux(sound.encode(chunk))

        sent = 0
        for i, image in enumerate(frames):
            if image.shape != (height, width, 3):
                raise ValueError(f"{path}: frame {i + 1} is {image.shape}, expected {(height, width, 3)}")
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(video.encode(frame))
            upto = min(audio.shape[1], int(round((i + 1) * samples_per_frame)))
            if upto - sent >= 4096:
                send_audio(sent, upto)
                sent = upto
        if sent < audio.shape[1]:
            send_audio(sent, audio.shape[1])
        container.mux(video.encode(None))
        container.mux(sound.encode(None))


def _render_images(root: Path, *, rng: np.random.Generator, images_per_class: int) -> dict[str, int]:
    """The class-per-folder face crop set (images/{train,val}/<ClassName>/*.png)."""
    counts = {"train": images_per_class, "val": max(1, int(round(images_per_class / 3)))}
    written = {}
    for split, per_class in counts.items():
        for label, name in enumerate(CLASSES):
            folder = root / "images" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                identity = Identity.sample(rng)
                sprite = face_sprites(identity)[label]
                expand = rng.uniform(1.1, 1.5)
                box_h = IMAGE_SIZE / expand
                centre = (IMAGE_SIZE / 2 + rng.uniform(-0.08, 0.08) * IMAGE_SIZE,
                          IMAGE_SIZE / 2 + rng.uniform(-0.08, 0.08) * IMAGE_SIZE)
                affine, _ = _placement(identity, centre=centre, box_height=box_h,
                                       roll_deg=identity.tilt_deg + rng.uniform(-6, 6))
                canvas = _background(rng, IMAGE_SIZE, IMAGE_SIZE)
                _composite(canvas, sprite, affine)
                image = np.clip(canvas, 0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / f"{split}_{label}_{j:04d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            written[f"{split}/{name}"] = per_class
    return written


# ----------------------------------------------------------------------------- the dataset

def _params(**kwargs: Any) -> dict[str, Any]:
    """Generator params as they are stored in the manifest (JSON types, so they compare equal)."""
    return json.loads(json.dumps({"version": DEMO_VERSION, **kwargs}))


def _plan(params: dict[str, Any], rng: np.random.Generator,
          seeds: list[np.random.SeedSequence]) -> list[_VideoPlan]:
    """Names, lengths and label timelines of every video of every split."""
    fps, (width, height) = params["fps"], params["size"]
    counts = {"Train_Set": params["n_train"], "Validation_Set": params["n_val"], "Test_Set": params["n_test"]}
    total = sum(counts.values())
    numbers = rng.choice(np.arange(1, 4 * total + 20), size=total, replace=False)   # ids like "46-30-256x192"
    plans: list[_VideoPlan] = []
    k = 0
    for split, count in counts.items():
        split_plans = []
        two_person_at = 0 if split == "Train_Set" and count > 0 else -1
        extra_line_at = (1 if count > 1 else -1) if split == "Train_Set" else -1
        if params["n_train"] <= 1 and split == "Validation_Set" and count > 0:
            extra_line_at = 0
        for j in range(count):
            number = int(numbers[k])
            videoid = f"{number}-{int(round(fps))}-{width}x{height}"
            n = int(round(rng.uniform(*params["seconds"]) * fps))
            sides = ["left", "right"] if j == two_person_at else [None]
            people = [_plan_person(rng, txtid=videoid if side is None else f"{videoid}_{side}", side=side, n=n,
                                   fps=fps) for side in sides]
            split_plans.append(_VideoPlan(videoid=videoid, split=split, batch=f"batch{1 + number % 2}",
                                          n_frames=n, extra_label_line=j == extra_line_at, people=people,
                                          seed=seeds[k]))
            k += 1
        people = [p for v in split_plans for p in v.people]
        _assign_classes(rng, people, [v.n_frames for v in split_plans for _ in v.people])
        for video in split_plans:
            speaking = None
            if len(video.people) == 2:
                turns = _chunk_modes(rng, video.n_frames, fps, (0.5, 0.5))   # who speaks, 1-3 s turns
                speaking = [turns == 0, turns == 1]
            for idx, person in enumerate(video.people):
                _fill_frames(rng, person, video.n_frames, fps, None if speaking is None else speaking[idx])
        plans.extend(split_plans)
    return plans


def _write_annotation(path: Path, labels: np.ndarray, *, extra_line: bool) -> None:
    lines = labels.tolist() + ([int(labels[-1])] if extra_line else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "\n" + "\n".join(str(v) for v in lines) + "\n")


def _statistics(truths: dict[str, dict[str, np.ndarray]], plans: list[_VideoPlan]) -> dict[str, Any]:
    split_of = {p.txtid: v.split for v in plans for p in v.people}
    stats: dict[str, Any] = {"class_hist": {}, "frames": {}}
    for split in ("Train_Set", "Validation_Set", "Test_Set"):
        labels = [t["labels"] for k, t in truths.items() if split_of[k] == split]
        if not labels:
            continue
        labels = np.concatenate(labels)
        stats["class_hist"][split] = np.bincount(labels[labels >= 0], minlength=NUM_CLASSES).tolist()
        stats["frames"][split] = int(len(labels))
    every = {key: np.concatenate([t[key] for t in truths.values()]) for key in next(iter(truths.values()))}
    valid = every["labels"] >= 0
    stats.update(
        video_frames=int(sum(v.n_frames for v in plans)),
        track_frames=int(len(every["labels"])),
        invalid_fraction=float(1 - valid.mean()),
        face_absent_fraction=float(np.isnan(every["boxes"][:, 0]).mean()),
        face_partial_fraction=float((~np.isnan(every["boxes"][:, 0]) & ~every["face_visible"]).mean()),
        visual_off_fraction=float((valid & ~every["visual_signal"]).sum() / max(valid.sum(), 1)),
        audio_off_fraction=float((valid & ~every["audio_signal"]).sum() / max(valid.sum(), 1)),
        both_off_fraction=float((valid & ~every["visual_signal"] & ~every["audio_signal"]).sum()
                                / max(valid.sum(), 1)),
    )
    return stats


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("%s is unreadable (%s): treating the demo as incomplete", path, exc)
        return None


def demo_is_complete(root: Path) -> bool:
    """Whether ``root`` holds a finished demo: its manifest, every file it lists and every face crop."""
    root = Path(root)
    manifest = _read_manifest(root)
    if manifest is None or "files" not in manifest:
        return False
    if not all((root / rel).is_file() for rel in manifest["files"]):
        return False
    crops = root / OFFICIAL_CROPS_DIR
    return all(len(list((crops / t["txtid"]).glob("*.jpg"))) == t.get("official_crops", -1)
               for t in manifest["tracks"])


def generate_demo(root: Path, *, seed: int = 0, n_train: int = 7, n_val: int = 3, n_test: int = 3,
                  seconds: Sequence[float] = (14.0, 24.0), fps: float = 30.0, size: Sequence[int] = (256, 192),
                  sample_rate: int = 44100, images_per_class: int = 60, force: bool = False) -> dict[str, Any]:
    """Write the demo dataset into ``root`` (unless a complete one with the same params is there).

    ``n_train`` / ``n_val`` / ``n_test`` count raw videos; the first train video has two annotated
    people (``_left`` / ``_right``), so Train_Set holds ``n_train + 1`` annotation files. The
    dataset is built in a hidden sibling folder and renamed onto ``root`` at the end, with
    ``demo_manifest.json`` written last, so a killed run leaves nothing that looks finished.
    Returns the manifest. The same ``seed`` and params give the same labels, boxes and pixels.
    """
    root = Path(root)
    if len(seconds) != 2 or not 0 < seconds[0] <= seconds[1]:
        raise ValueError(f"seconds must be [min, max] with 0 < min <= max, got {list(seconds)}")
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"size must be [width, height] of at least 32 px, got {list(size)}")
    if min(n_train, n_val, n_test) < 0 or n_train + n_val + n_test == 0:
        raise ValueError(f"video counts must be >= 0 and not all 0, got {n_train}, {n_val}, {n_test}")
    params = _params(seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, seconds=list(seconds), fps=fps,
                     size=list(size), sample_rate=sample_rate, images_per_class=images_per_class)
    existing = _read_manifest(root)
    if existing is not None and not force and existing.get("params") == params and demo_is_complete(root):
        log.info("demo: %s is complete (%d tracks), not regenerating", root, len(existing["tracks"]))
        return existing
    if root.exists() and any(root.iterdir()) and existing is None:
        raise FileExistsError(f"{root} exists, is not empty and holds no {MANIFEST_NAME}: refusing to "
                              f"overwrite it with the demo dataset (choose an empty or new folder)")

    started = time.perf_counter()
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f".{root.name}.partial-*"):
        log.warning("demo: removing %s left by an interrupted generation", stale)
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        seq = np.random.SeedSequence(seed)
        plan_seed, image_seed, *video_seeds = seq.spawn(2 + n_train + n_val + n_test)
        plans = _plan(params, np.random.default_rng(plan_seed), video_seeds)
        log.info("demo: planned %d videos (%d tracks), %d frames", len(plans),
                 sum(len(v.people) for v in plans), sum(v.n_frames for v in plans))

        truths: dict[str, dict[str, np.ndarray]] = {}
        tracks, files = [], []
        for video in tqdm(plans, desc="demo videos", unit="video"):
            video_rel = Path("videos") / video.batch / f"{video.videoid}.mp4"
            (work / video_rel).parent.mkdir(parents=True, exist_ok=True)
            truth = _render_video(video, work / video_rel, fps=fps, size=(int(size[0]), int(size[1])),
                                  sample_rate=sample_rate, crops_root=work / OFFICIAL_CROPS_DIR)
            files.append(str(video_rel))
            for person in video.people:
                entry = {"txtid": person.txtid, "videoid": video.videoid, "split": video.split,
                         "side": person.side, "video": str(video_rel), "n_frames": video.n_frames}
                if video.split != "Test_Set":
                    ann_rel = Path("annotations") / video.split / f"{person.txtid}.txt"
                    _write_annotation(work / ann_rel, person.labels, extra_line=video.extra_label_line)
                    entry.update(annotation=str(ann_rel), n_label_lines=video.n_frames + video.extra_label_line)
                    files.append(str(ann_rel))
                truth_rel = Path("truth") / f"{person.txtid}.npz"
                (work / truth_rel).parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(work / truth_rel, **truth[person.txtid])
                entry["truth"] = str(truth_rel)
                entry["official_crops"] = int(np.isfinite(truth[person.txtid]["boxes"][:, 0]).sum())
                files.append(str(truth_rel))
                tracks.append(entry)
            truths.update(truth)

        test_tracks = [t for t in tracks if t["split"] == "Test_Set"]
        (work / "test").mkdir(parents=True, exist_ok=True)
        (work / "test" / "names.txt").write_text("".join(f"{t['txtid']}\n" for t in test_tracks))
        rows = [f"{t['txtid']}/{i:05d}.jpg" for t in test_tracks for i in range(1, t["n_frames"] + 1)]
        (work / "test" / "template.txt").write_text("\n".join([TEMPLATE_HEADER, *rows]) + "\n")
        files += ["test/names.txt", "test/template.txt"]
        images = _render_images(work, rng=np.random.default_rng(image_seed), images_per_class=images_per_class)
        log.info("demo: wrote %d face images for Stage I", sum(images.values()))

        manifest = {"generator": "kitlib.demo", "params": params, "tracks": tracks, "images": images,
                    "files": files, "statistics": _statistics(truths, plans),
                    "elapsed_s": round(time.perf_counter() - started, 1)}
        (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

        if root.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-old-", dir=root.parent))
            root.rename(retired / "old")
            work.rename(root)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            work.rename(root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    stats = manifest["statistics"]
    log.info("demo: %d videos, %d tracks, %d frames, class histogram (train) %s, in %.1f s -> %s",
             len(plans), len(tracks), stats["video_frames"], stats["class_hist"].get("Train_Set"),
             manifest["elapsed_s"], root)
    return manifest
