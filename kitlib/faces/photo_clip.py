"""A short clip built from two real photographs that ship with installed packages, with its true face boxes.

scikit-image's ``astronaut`` (Eileen Collins) and matplotlib's ``grace_hopper.jpg`` are the only real
face photos the kit's dependencies carry. The clip pastes each face (with hair and shoulders around
it) on a smooth textured background and moves it through five segments, so detectors and trackers
can be scored on what the synthetic demo faces cannot show:

1. ``moving``: Hopper alone, moving right and growing (all of the face inside the frame);
2. ``border``: Hopper leaving through the right border (the face partly outside);
3. ``empty``: nobody (false boxes);
4. ``two``: Collins on the left, Hopper on the right, both moving a little (``_left`` / ``_right``);
5. ``left_exit``: Collins alone, crossing the left border (the ``_right`` track must not take her);
6. ``cross``: Hopper alone, starting just right of the centre and walking into the left half (the
   issue's reproduction: separate ``_left`` / ``_right`` trackers both take her).

``joined_clip`` is a second clip for identity decided over the whole video: Collins alone right of
the centre, then (after a cut) on the left beside Hopper, then (another cut) Hopper alone on the left.

The true boxes are the faces' boxes in the photos (hand-checked, WIDER FACE convention: forehead
to chin), moved and scaled with the paste; they extend past the frame where a face crosses it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PEOPLE: tuple[str, ...] = ("collins", "hopper")
# face box in the source photo (x1, y1, x2, y2), WIDER FACE convention, checked by eye
SOURCE_BOXES: dict[str, tuple[float, float, float, float]] = {"collins": (182, 60, 270, 178),
                                                              "hopper": (172, 125, 358, 334)}


@dataclass(frozen=True)
class PhotoClip:
    frames: np.ndarray    # (N, H, W, 3) uint8 RGB
    boxes: np.ndarray     # (N, 2, 4) true boxes of collins, hopper; NaN where absent
    segment: np.ndarray   # (N,) segment name per frame

    def visible(self) -> np.ndarray:
        """(N, 2) the person's whole face box lies inside the frame."""
        height, width = self.frames.shape[1:3]
        b = self.boxes
        with np.errstate(invalid="ignore"):
            return (b[..., 0] >= 0) & (b[..., 1] >= 0) & (b[..., 2] <= width) & (b[..., 3] <= height)

    def border(self) -> np.ndarray:
        """(N, 2) the person's face crosses the frame border (partly inside)."""
        present = np.isfinite(self.boxes).all(-1)
        return present & ~self.visible()


def _photo(person: str) -> np.ndarray:
    if person == "collins":
        from skimage import data

        return data.astronaut()
    import matplotlib.cbook as cbook
    import matplotlib.image as mpimg

    return np.asarray(mpimg.imread(cbook.get_sample_data("grace_hopper.jpg")))[..., :3].astype(np.uint8)


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    import cv2

    width, height = size
    coarse = rng.uniform(60, 200, (height // 40 + 2, width // 40 + 2, 3)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def _paste(canvas: np.ndarray, person: str, photo: np.ndarray, *, centre: tuple[float, float],
           face_height: float) -> np.ndarray:
    """Paste ``person``'s face region with its face centred at ``centre`` and ``face_height`` pixels tall;
    returns the true box in canvas pixels (it may extend past the canvas)."""
    import cv2

    x1, y1, x2, y2 = SOURCE_BOXES[person]
    scale = face_height / (y2 - y1)
    margin = 0.8 * (y2 - y1)
    rx0, ry0 = int(max(0, x1 - margin)), int(max(0, y1 - margin))
    rx1, ry1 = int(min(photo.shape[1], x2 + margin)), int(min(photo.shape[0], y2 + margin))
    region = cv2.resize(photo[ry0:ry1, rx0:rx1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    fcx, fcy = (0.5 * (x1 + x2) - rx0) * scale, (0.5 * (y1 + y2) - ry0) * scale
    ox, oy = int(round(centre[0] - fcx)), int(round(centre[1] - fcy))
    height, width = canvas.shape[:2]
    cx0, cy0 = max(ox, 0), max(oy, 0)
    cx1, cy1 = min(ox + region.shape[1], width), min(oy + region.shape[0], height)
    if cx1 > cx0 and cy1 > cy0:
        canvas[cy0:cy1, cx0:cx1] = region[cy0 - oy:cy1 - oy, cx0 - ox:cx1 - ox]
    return np.array([ox + (x1 - rx0) * scale, oy + (y1 - ry0) * scale,
                     ox + (x2 - rx0) * scale, oy + (y2 - ry0) * scale], np.float32)


def _render(plan: list[tuple[str, dict[str, tuple[float, float, float]]]], *, size: tuple[int, int],
            rng: np.random.Generator) -> PhotoClip:
    """Frames and true boxes of a ``plan``: per frame (segment, person -> (centre x, centre y, face height))."""
    width, height = size
    photos = {p: _photo(p) for p in PEOPLE}
    background = _background(rng, size)
    frames = np.empty((len(plan), height, width, 3), np.uint8)
    boxes = np.full((len(plan), len(PEOPLE), 4), np.nan, np.float32)
    for i, (_, people) in enumerate(plan):
        canvas = background.copy()
        for person, (cx, cy, face_h) in people.items():
            boxes[i, PEOPLE.index(person)] = _paste(canvas, person, photos[person], centre=(cx, cy), face_height=face_h)
        noise = rng.normal(0, 3, canvas.shape)   # sensor noise: no two frames identical
        frames[i] = np.clip(canvas + noise, 0, 255).astype(np.uint8)
    return PhotoClip(frames=frames, boxes=boxes, segment=np.array([s for s, _ in plan]))


def joined_clip(*, size: tuple[int, int] = (640, 360), seed: int = 0) -> PhotoClip:
    """The identity clip (110 frames): who is ``_left`` / ``_right`` must come from the person, not the side.

    1. ``alone``: Collins alone right of the centre (the online rule gives her to ``_right``);
    2. ``together``: a cut, then Collins on the LEFT and Hopper on the right (so Collins is ``_left``);
    3. ``hopper_alone``: a cut, then Hopper alone left of the centre (she is still ``_right``).
    The cuts break box continuity: only appearance links a person across them.
    """
    width, height = size
    plan: list[tuple[str, dict[str, tuple[float, float, float]]]] = []
    for t in range(40):
        plan.append(("alone", {"collins": (0.62 * width + t, 0.45 * height, 0.34 * height)}))
    for t in range(40):
        plan.append(("together", {"collins": (0.28 * width + t, 0.45 * height, 0.32 * height),
                                  "hopper": (0.74 * width - t, 0.5 * height, 0.36 * height)}))
    for t in range(30):
        plan.append(("hopper_alone", {"hopper": (0.38 * width - t, 0.5 * height, 0.38 * height)}))
    return _render(plan, size=size, rng=np.random.default_rng(seed))


def photo_clip(*, size: tuple[int, int] = (640, 360), seed: int = 0) -> PhotoClip:
    """The five-segment clip (165 frames at 640x360 by default); see the module docstring."""
    width, height = size
    plan: list[tuple[str, dict[str, tuple[float, float, float]]]] = []   # segment, person -> (cx, cy, face h)
    for t in range(30):
        plan.append(("moving", {"hopper": (0.25 * width + 6 * t, 0.5 * height, 0.30 * height + 2 * t)}))
    for t in range(30):
        plan.append(("border", {"hopper": (0.7 * width + 9 * t, 0.5 * height, 0.45 * height)}))
    plan += [("empty", {})] * 15
    for t in range(30):
        plan.append(("two", {"collins": (0.27 * width + t, 0.45 * height, 0.32 * height),
                             "hopper": (0.73 * width - t, 0.5 * height, 0.36 * height)}))
    for t in range(30):
        plan.append(("left_exit", {"collins": (0.3 * width - 9 * t, 0.45 * height, 0.35 * height)}))
    for t in range(30):
        plan.append(("cross", {"hopper": (0.55 * width - 6 * t, 0.5 * height, 0.36 * height)}))
    return _render(plan, size=size, rng=np.random.default_rng(seed))
