"""One face track per annotated person: the tracker, following faces past the frame border, bridging gaps.

A face the detector stops finding as it crosses the frame border (exactly the frames whose crops
are zero-padded) is followed by appearance from its last detection (``FollowSettings``: masked
normalised cross-correlation on the zero-padded frame, only while enough of the box is inside the
frame and the face still matches); such frames are FOLLOWED, never counted as detections.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kitlib.faces.detectors import LANDMARK_NAMES, as_detections

log = logging.getLogger(__name__)


# Per-frame status of a face track.
MISSING: int = 0   # no face for this frame: zero features, mask False
DETECTED: int = 1  # the detector found the person's face in this frame
BRIDGED: int = 2   # a short detection gap, box interpolated linearly between its neighbours
FOLLOWED: int = 3  # not detected: followed by appearance from the last detection (face crossing the border)
INTERPOLATED: int = 4  # not looked at (detection every k-th frame only), box interpolated between detections
STATUS_NAMES: dict[int, str] = {MISSING: "missing", DETECTED: "detected", BRIDGED: "bridged", FOLLOWED: "followed",
                                INTERPOLATED: "interpolated"}




@dataclass(frozen=True)
class FaceTrack:
    """One face box per frame for one annotated person (and the picked detection's landmarks)."""

    boxes: np.ndarray   # (N, 4) float32 x1, y1, x2, y2 in pixels, NaN where MISSING
    status: np.ndarray  # (N,) uint8: DETECTED, FOLLOWED, BRIDGED, INTERPOLATED or MISSING
    # (N, 5, 2) float32 landmarks of the detection picked on DETECTED frames (kitlib.faces.detectors
    # LANDMARK_NAMES order), NaN elsewhere and where the detector gives none; None: not carried
    landmarks: np.ndarray | None = None

    @property
    def present(self) -> np.ndarray:
        """(N,) bool: the frame has a face box (detected, followed or bridged)."""
        return self.status != MISSING

    def summary(self) -> dict[str, int]:
        """Frame counts per status (the per-video face report's columns)."""
        counts = np.bincount(self.status, minlength=len(STATUS_NAMES))
        return dict(frames=int(len(self.status)), **{STATUS_NAMES[k]: int(counts[k])
                                                     for k in (DETECTED, FOLLOWED, BRIDGED, INTERPOLATED, MISSING)})


def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each of ``boxes`` (k, >=4) with one ``box`` (4,)."""
    x1 = np.maximum(boxes[:, 0], box[0])
    y1 = np.maximum(boxes[:, 1], box[1])
    x2 = np.minimum(boxes[:, 2], box[2])
    y2 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


@dataclass(frozen=True)
class FollowSettings:
    """When and how long a face the detector lost at the frame border is followed by appearance."""

    max_frames: int = 30          # follow at most this many frames after the last detection
    min_visible: float = 0.3      # stop once less than this share of the box lies inside the frame
    min_similarity: float = 0.6   # stop once the appearance match (masked NCC, -1..1) falls below this
    edge_margin: float = 0.5      # start only if the last box is within this many box sides of a border
    template_size: int = 32       # side of the grey appearance template, pixels

    def __post_init__(self) -> None:
        if self.max_frames < 0 or not 0 < self.min_visible <= 1 or not -1 <= self.min_similarity <= 1:
            raise ValueError(f"invalid follow settings {self}: max_frames >= 0, 0 < min_visible <= 1, "
                             f"-1 <= min_similarity <= 1")


def _grey_window(frame: np.ndarray, box: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Grey pixels (float32) of ``box`` in an RGB ``frame``, zero-padded past the border, resized to ``size``
    (w, h), and the matching in-frame mask (1 inside the frame, 0 in the padding)."""
    import cv2

    height, width = frame.shape[:2]
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    x1, y1 = max(int(np.ceil(box[2])), x0 + 1), max(int(np.ceil(box[3])), y0 + 1)
    grey = np.zeros((y1 - y0, x1 - x0), np.float32)
    inside = np.zeros_like(grey)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx1 > cx0 and cy1 > cy0:
        grey[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = cv2.cvtColor(frame[cy0:cy1, cx0:cx1], cv2.COLOR_RGB2GRAY)
        inside[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = 1.0
    grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    inside = (cv2.resize(inside, size, interpolation=cv2.INTER_AREA) > 0.5).astype(np.float32)
    return grey * inside, inside


def masked_ncc(image: np.ndarray, image_mask: np.ndarray, template: np.ndarray,
               template_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean normalised cross-correlation of ``template`` at every position in ``image``, counting
    only pixels valid in both masks (so zero padding past the frame border neither helps nor hurts).

    Returns (ncc, overlap): maps of shape (H - h + 1, W - w + 1); ``overlap`` is the share of the
    template's pixels that were valid. Flat windows (no variance) score 0.
    """
    import cv2

    def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return cv2.matchTemplate(np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32),
                                 cv2.TM_CCORR)

    image, template = image * image_mask, template * template_mask
    n = corr(image_mask, template_mask)
    safe_n = np.maximum(n, 1.0)
    sum_i, sum_ii = corr(image, template_mask), corr(image * image, template_mask)
    sum_t, sum_tt = corr(image_mask, template), corr(image_mask, template * template)
    sum_it = corr(image, template)
    cov = sum_it - sum_i * sum_t / safe_n
    var = np.clip(sum_ii - sum_i ** 2 / safe_n, 0, None) * np.clip(sum_tt - sum_t ** 2 / safe_n, 0, None)
    ncc = np.divide(cov, np.sqrt(var), out=np.zeros_like(cov), where=var > 1e-3 * safe_n ** 2)
    return ncc, n / max(float(template_mask.sum()), 1.0)


def visible_fraction(box: np.ndarray, *, frame_size: tuple[int, int]) -> float:
    """Share of ``box``'s area that lies inside a frame of ``frame_size`` (W, H)."""
    width, height = frame_size
    inter = (max(0.0, min(box[2], width) - max(box[0], 0.0)) * max(0.0, min(box[3], height) - max(box[1], 0.0)))
    area = (box[2] - box[0]) * (box[3] - box[1])
    return float(inter / area) if area > 0 else 0.0


class FaceTracker:
    """Causal association: picks one face per frame for one person, frame batch after frame batch.

    ``side`` "left"/"right": the face on that side (of two or more, the left-most / right-most;
    a face continuing the previous pick is preferred when it is not the other person's).
    No side: the largest face, but the face continuing the previous pick is kept unless another
    is more than ``switch_ratio`` times larger. Continuity = IoU with the previous pick of at
    least ``iou_keep``. Faces smaller than ``min_rel_area`` of the frame's largest are ignored
    (false detections in the background).

    With ``follow`` (and the frames passed to ``update``), a face whose last detection was near
    the frame border is followed through the frames where the detector misses it: the search
    window is the previous box moved by the recent velocity, the match is the masked NCC
    (``masked_ncc``) of the grey appearance at the last detection; following stops after
    ``follow.max_frames`` frames, when less than ``follow.min_visible`` of the box is inside the
    frame, or when the match falls below ``follow.min_similarity`` (a face that left or was
    covered), and never starts again before the next detection.
    """

    def __init__(self, *, frame_size: tuple[int, int], side: str | None, iou_keep: float = 0.3,
                 switch_ratio: float = 1.5, min_rel_area: float = 0.1, follow: FollowSettings | None = None):
        if side not in (None, "left", "right"):
            raise ValueError(f"side must be 'left', 'right' or None, got {side!r}")
        self.width, self.height = frame_size
        self.side = side
        self.iou_keep = iou_keep
        self.switch_ratio = switch_ratio
        self.min_rel_area = min_rel_area
        self.follow = follow if follow is not None and follow.max_frames > 0 else None
        self._previous: np.ndarray | None = None
        self._previous_live = False        # the previous frame had a pick (detected or followed)
        self._velocity = np.zeros(2)        # box centre motion, pixels per frame
        self._template: tuple[np.ndarray, np.ndarray] | None = None
        self._n_followed = 0

    def _pick(self, faces: np.ndarray) -> np.ndarray | None:
        area = (faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1])
        keep = (area > 0) & (area >= self.min_rel_area * area.max(initial=0.0))
        faces, area = faces[keep], area[keep]
        if len(faces) == 0:
            return None
        iou = box_iou(faces, self._previous) if self._previous is not None else np.zeros(len(faces))
        continuing = int(np.argmax(iou)) if iou.max() >= self.iou_keep else None
        if self.side is None:
            largest = int(np.argmax(area))
            if continuing is None or area[largest] > self.switch_ratio * area[continuing]:
                return faces[largest]
            return faces[continuing]
        centre_x = 0.5 * (faces[:, 0] + faces[:, 2])
        own, other = (np.argmin(centre_x), np.argmax(centre_x)) if self.side == "left" else \
                     (np.argmax(centre_x), np.argmin(centre_x))
        if len(faces) >= 2:
            if continuing is not None and continuing != other:
                return faces[continuing]
            return faces[own]
        on_own_side = centre_x[0] < self.width / 2 if self.side == "left" else centre_x[0] >= self.width / 2
        return faces[0] if (on_own_side or continuing is not None) else None

    def _near_border(self, box: np.ndarray) -> bool:
        side = max(box[2] - box[0], box[3] - box[1])
        gap = min(box[0], box[1], self.width - box[2], self.height - box[3])
        return bool(gap < self.follow.edge_margin * side)

    def _follow(self, frame: np.ndarray) -> np.ndarray | None:
        """The box of the lost face in ``frame`` by appearance, or None (stop following)."""
        f = self.follow
        if (not self._previous_live or self._template is None or self._n_followed >= f.max_frames
                or (self._n_followed == 0 and not self._near_border(self._previous))):
            return None
        box = self._previous.astype(np.float64)
        predicted = box + np.tile(self._velocity, 2)
        extent = np.maximum(box[2:] - box[:2], 1.0)                       # w, h
        radius = 0.15 * extent.max() + float(np.abs(self._velocity).max())
        scale = f.template_size / extent                                  # template pixels per frame pixel, x and y
        steps = np.ceil(radius * scale).astype(int)                       # search range in template pixels
        window = predicted + np.concatenate([-steps / scale, steps / scale])
        grey, inside = _grey_window(frame, window, tuple(int(v) for v in f.template_size + 2 * steps))
        ncc, overlap = masked_ncc(grey, inside, *self._template)
        ncc = np.where(overlap >= f.min_visible, ncc, -1.0)
        dy, dx = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
        if ncc[dy, dx] < f.min_similarity:
            return None
        found = predicted + np.tile((np.array([dx, dy]) - steps) / scale, 2)
        if visible_fraction(found, frame_size=(self.width, self.height)) < f.min_visible:
            return None
        return found.astype(np.float32)

    def _remember(self, box: np.ndarray, *, frame: np.ndarray | None, detected: bool) -> None:
        if self._previous is not None and self._previous_live:
            motion = 0.5 * (box[:2] + box[2:4] - self._previous[:2] - self._previous[2:4])
            self._velocity = 0.5 * self._velocity + 0.5 * motion
        else:
            self._velocity = np.zeros(2)
        self._previous, self._previous_live = box[:4].copy(), True
        if detected:
            self._n_followed = 0
            if self.follow is not None and frame is not None:
                size = (self.follow.template_size, self.follow.template_size)
                self._template = _grey_window(frame, box, size)

    def update(self, detections: Sequence[np.ndarray],
               frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Picks for a batch of frames: boxes (B, 4) float32, NaN where the person has no face, and
        (B,) bool, True where the box was followed (needs ``frames`` (B, H, W, 3) uint8 RGB), not detected."""
        picks = np.full((len(detections), 4), np.nan, np.float32)
        followed = np.zeros(len(detections), bool)
        if frames is not None and len(frames) != len(detections):
            raise ValueError(f"{len(frames)} frames but {len(detections)} detection lists")
        for i, faces in enumerate(detections):  # light loop: association depends on the previous pick
            faces = as_detections(faces)
            frame = frames[i] if frames is not None else None
            pick = self._pick(faces) if len(faces) else None
            box, followed[i] = self.advance(pick, frame)
            if box is not None:
                picks[i] = box
        return picks, followed

    @property
    def live_box(self) -> np.ndarray | None:
        """The previous frame's box (4,) when that frame had a pick (detected or followed), else None."""
        return self._previous if self._previous_live else None

    def advance(self, pick: np.ndarray | None, frame: np.ndarray | None) -> tuple[np.ndarray | None, bool]:
        """Take ``pick`` (the face chosen for this frame, or None) as this frame's box, or follow the lost
        face in ``frame``; returns (box (4,) or None, followed)."""
        if pick is not None:
            self._remember(np.asarray(pick[:4], np.float32), frame=frame, detected=True)
            return np.asarray(pick[:4], np.float32), False
        found = self._follow(frame) if self.follow is not None and frame is not None else None
        if found is None:
            self._previous_live = False
            return None, False
        self._n_followed += 1
        self._remember(found, frame=frame, detected=False)
        return found, True


def bridge_gaps(picks: np.ndarray, *, max_gap: int, followed: np.ndarray | None = None,
                skipped: np.ndarray | None = None, landmarks: np.ndarray | None = None) -> FaceTrack:
    """Interpolate picked boxes linearly over gaps of at most ``max_gap`` frames.

    ``picks`` (N, 4) with NaN rows where nothing was picked; ``followed`` (N,) marks picks that
    were followed, not detected (status FOLLOWED); ``skipped`` (N,) marks frames the detector did not
    look at (detection every k-th frame), bridged as INTERPOLATED. Frames before the first or after the last
    pick are MISSING (no extrapolation). On a stream whose later frames are not known yet, the
    status and box of frame i are final once picks up to frame i + max_gap are in. ``landmarks``
    (N, 5, 2) of the picked detections are kept on DETECTED frames only (never interpolated).
    """
    picks = np.asarray(picks, np.float32)
    n = len(picks)
    detected = np.isfinite(picks).all(axis=1)
    status = np.where(detected, DETECTED, MISSING).astype(np.uint8)
    if followed is not None:
        status[np.asarray(followed, bool) & detected] = FOLLOWED
    boxes = np.where(detected[:, None], picks, np.nan).astype(np.float32)
    hits = np.flatnonzero(detected)
    if len(hits) >= 2 and max_gap > 0:
        frames = np.arange(n)
        after = np.searchsorted(hits, frames, side="right")  # index into hits of the next pick
        inside = (after > 0) & (after < len(hits)) & ~detected
        prev_hit = hits[np.clip(after - 1, 0, len(hits) - 1)]
        next_hit = hits[np.clip(after, 0, len(hits) - 1)]
        bridged = inside & (next_hit - prev_hit - 1 <= max_gap)
        if bridged.any():
            for c in range(4):
                boxes[bridged, c] = np.interp(frames[bridged], hits, picks[hits, c])
            status[bridged] = BRIDGED
            if skipped is not None:  # frames the detector never saw: interpolated, not a detection gap
                status[bridged & np.asarray(skipped, bool)] = INTERPOLATED
    if landmarks is not None:
        landmarks = np.asarray(landmarks, np.float32).reshape(n, len(LANDMARK_NAMES), 2)
        landmarks = np.where((status == DETECTED)[:, None, None], landmarks, np.float32(np.nan))
    return FaceTrack(boxes=boxes, status=status, landmarks=landmarks)


def track_faces(detections: Sequence[np.ndarray], *, frame_size: tuple[int, int], side: str | None,
                max_gap: int, iou_keep: float = 0.3, switch_ratio: float = 1.5,
                frames: np.ndarray | None = None, follow: FollowSettings | None = None) -> FaceTrack:
    """One face per frame for the annotated person of a video (see ``FaceTracker``), gaps bridged.

    ``detections``: per frame a (k, 15) array from a ``FaceDetector``; ``frame_size`` (W, H);
    ``side`` "left"/"right" for two-person videos, else None; with ``frames`` (N, H, W, 3) and
    ``follow``, faces lost at the border are followed (FOLLOWED); gaps of at most ``max_gap``
    frames are interpolated (BRIDGED), longer ones stay MISSING.
    """
    tracker = FaceTracker(frame_size=frame_size, side=side, iou_keep=iou_keep, switch_ratio=switch_ratio,
                          follow=follow)
    picks, followed = tracker.update(detections, frames)
    return bridge_gaps(picks, max_gap=max_gap, followed=followed)


