"""All face tracks of one video assigned together, frame by frame (one face, at most one track).

A two-person video has two annotation files (``_left`` / ``_right``); tracking each on its own lets
both take the same face when only one person is on screen (a face that starts right of the centre
and walks left is kept by ``_right`` by continuity and taken by ``_left`` by position). Here every
frame's faces are assigned to the video's tracks at once (``scipy.optimize.linear_sum_assignment``
on a score per track and face), so two tracks never share a face on a frame:

- continuity first: a face overlapping the track's previous box (IoU >= ``iou_keep``; after a
  detector miss, its last box of at most ``reacquire_frames`` frames ago) scores ``2 + IoU``, unless the strategy gives it up (``largest``: another face ``switch_ratio`` times
  larger; ``left`` / ``right`` / ``top``: the face became the opposite extreme of two or more);
- else the track's selection strategy (``kitlib.faces.selection``) ranks the faces, ``1 - rank/k``;
  faces the strategy rules out (a lone face on the other half for ``left``) are taken only when
  their appearance matches the track's person at ``reid_min`` or more;
- appearance: ``appearance_weight`` x the cosine match of the face's colour thumbnail with the
  track's person (``appearance``: an 8x8 RGB thumbnail, zero-mean, unit norm, averaged over the
  track's detections; 0.04 ms a face on 2 CPU cores), so after a miss, an occlusion or a shot cut the face that
  looks like the track's person wins a close call.

Per track the tracker counts identity switches (a pick that does not continue the previous box and
matches the track's person below ``same_person``); ``overlap_frames`` counts frames where two
tracks' final boxes overlap. ``track_video`` does a whole video in one call (the serial and the
pipelined extractors share this code through ``JointTracker``).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from kitlib.faces.detectors import LANDMARK_NAMES, as_detections, landmarks_of
from kitlib.faces.identity import (IDENTITY_STRATEGIES, FaceEmbedder, IdentitySettings, identity_method,
                                   identity_stats, plan_video)
from kitlib.faces.selection import OPPOSITE_DROPS, check_strategy, opposite, preference
from kitlib.faces.tracking import FaceTrack, FaceTracker, FollowSettings, box_iou, bridge_gaps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssignSettings:
    """How faces are assigned to the tracks of one video."""

    iou_keep: float = 0.3            # a face continues a track's previous box at this IoU or more
    switch_ratio: float = 1.5        # largest: switch to a face this many times larger than the continuing one
    min_rel_area: float = 0.1        # faces smaller than this share of the frame's largest are ignored
    appearance_weight: float = 1.0   # weight of the appearance match (cosine, -1..1) in the assignment
    same_person: float = 0.6         # a non-continuing pick matching the person below this is an identity switch (photo clip: same person 0.999, Collins vs Hopper 0.45)
    appearance_momentum: float = 0.9  # the person's thumbnail: running mean over detections with this momentum
    overlap_iou: float = 0.3         # two tracks' boxes at this IoU or more on one frame count as overlapping
    reacquire_frames: int = 30       # after a miss, a face overlapping the track's last box this recently still continues it
    reid_min: float = 0.9            # a face the strategy rules out is still the track's person at this appearance match


THUMB = 8  # side of the appearance thumbnail, pixels


def usable_faces(faces: np.ndarray, *, min_rel_area: float) -> np.ndarray:
    """One frame's detections (k, 15) without boxes of no area or smaller than ``min_rel_area`` x the largest."""
    faces = as_detections(faces)
    if not len(faces):
        return faces
    area = (faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1])
    return faces[(area > 0) & (area >= min_rel_area * area.max(initial=0.0))]


def appearance(frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Colour thumbnails (k, 3*THUMB*THUMB) of ``boxes`` in an RGB ``frame``: the inner 80 % of each box
    (clipped to the frame) resized to THUMB x THUMB, zero-mean, unit norm (cosine = dot product)."""
    import cv2

    height, width = frame.shape[:2]
    out = np.zeros((len(boxes), 3 * THUMB * THUMB), np.float32)
    for i, box in enumerate(np.asarray(boxes, np.float64)):
        w, h = box[2] - box[0], box[3] - box[1]
        x0, y0 = int(max(0, box[0] + 0.1 * w)), int(max(0, box[1] + 0.1 * h))
        x1, y1 = int(min(width, box[2] - 0.1 * w)), int(min(height, box[3] - 0.1 * h))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        thumb = cv2.resize(frame[y0:y1, x0:x1], (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)
        vec = (thumb - thumb.mean()).ravel()
        out[i] = vec / max(float(np.linalg.norm(vec)), 1e-6)
    return out


class JointTracker:
    """Causal joint assignment of each frame's faces to all tracks of one video (see the module docstring).

    ``strategies``: one selection strategy per track (``kitlib.faces.selection.STRATEGIES``);
    ``follow``: faces lost at the frame border are followed per track (``FaceTracker``). ``update``
    takes detections per frame; ``None`` marks a frame the detector did not look at (detection
    every k-th frame): no pick there, and the tracks stay live for the next detection.
    """

    def __init__(self, *, frame_size: tuple[int, int], strategies: Sequence[str],
                 settings: AssignSettings | None = None, follow: FollowSettings | None = None,
                 record_picks: bool = False):
        self.frame_size = frame_size
        self.strategies = [check_strategy(s) for s in strategies]
        self.settings = settings or AssignSettings()
        s = self.settings
        self.trackers = [FaceTracker(frame_size=frame_size, side=None, iou_keep=s.iou_keep, switch_ratio=s.switch_ratio,
                                     min_rel_area=s.min_rel_area, follow=follow) for _ in self.strategies]
        self.person: list[np.ndarray | None] = [None] * len(self.strategies)  # appearance of each track's person
        self.identity_switches = np.zeros(len(self.strategies), np.int64)
        self._last_box: list[np.ndarray | None] = [None] * len(self.strategies)   # last box, kept across misses
        self._age = np.zeros(len(self.strategies), np.int64)                     # frames since that box
        self.by_identity = np.zeros(len(self.strategies), np.int64)   # picks of the track's person (identity owners)
        self.by_position = np.zeros(len(self.strategies), np.int64)   # picks of a free face (the online rule)
        self.record_picks = record_picks
        self._picks: list[np.ndarray] = []                             # per frame (T,) face index taken, -1: none

    def _previous(self, t: int) -> np.ndarray | None:
        """Track ``t``'s box on the previous frame, else its last box if at most ``reacquire_frames`` old."""
        live = self.trackers[t].live_box
        if live is not None:
            return live
        return self._last_box[t] if self._age[t] <= self.settings.reacquire_frames else None

    def _scores(self, faces: np.ndarray, looks: np.ndarray | None, owners: np.ndarray | None = None) -> np.ndarray:
        """(T, k) score of giving face f to track t; -inf where the track may not take it. ``owners`` (k,):
        the track each face belongs to by identity (``kitlib.faces.identity``), -1: free (the online rule)."""
        s = self.settings
        k = len(faces)
        area = (faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1])
        scores = np.full((len(self.strategies), k), -np.inf)
        for t, (strategy, tracker) in enumerate(zip(self.strategies, self.trackers)):
            ranked = preference(faces, strategy, frame_size=self.frame_size)
            scores[t, ranked] = 1.0 - np.arange(len(ranked)) / k
            previous = self._previous(t)
            if previous is not None:
                iou = box_iou(faces, previous)
                dropped = opposite(faces, strategy) if strategy in OPPOSITE_DROPS else None
                for f in np.flatnonzero(iou >= s.iou_keep):
                    if f == dropped:
                        continue
                    if strategy == "largest" and area.max() > s.switch_ratio * area[f]:
                        continue
                    scores[t, f] = 2.0 + iou[f]
            if looks is not None and self.person[t] is not None:
                match = looks @ self.person[t]
                reid = ~np.isfinite(scores[t]) & (match >= s.reid_min)   # ruled out by position, but it is the person
                scores[t, reid] = 1.0 - len(ranked) / k
                scores[t] += s.appearance_weight * match
        if owners is not None:   # identity decided over the whole video outranks position and continuity
            for t in range(len(self.strategies)):
                scores[t, (owners >= 0) & (owners != t)] = -np.inf
                scores[t, owners == t] = 4.0
        return scores

    def _step(self, faces: np.ndarray | None, frame: np.ndarray | None,
              owners: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One frame: boxes (T, 4) NaN where none, followed (T,) bool, landmarks (T, 5, 2) of the picked
        detections (NaN where none was picked)."""
        n_tracks = len(self.strategies)
        boxes = np.full((n_tracks, 4), np.nan, np.float32)
        followed = np.zeros(n_tracks, bool)
        landmarks = np.full((n_tracks, len(LANDMARK_NAMES), 2), np.nan, np.float32)
        if faces is None:  # not looked at: the tracks wait for the next detection
            if self.record_picks:
                self._picks.append(np.full(n_tracks, -1, np.int64))
            return boxes, followed, landmarks
        faces = usable_faces(faces, min_rel_area=self.settings.min_rel_area)
        if owners is not None and len(owners) != len(faces):
            raise ValueError(f"identity owners for {len(owners)} faces, but the frame has {len(faces)} usable faces")
        picks: list[int | None] = [None] * n_tracks
        looks = appearance(frame, faces) if frame is not None and len(faces) else None
        if len(faces):
            scores = self._scores(faces, looks, owners)
            finite = np.isfinite(scores)
            rows, cols = linear_sum_assignment(np.where(finite, -scores, 1e6))
            for t, f in zip(rows, cols):
                if finite[t, f]:
                    picks[t] = int(f)
        s = self.settings
        if self.record_picks:
            self._picks.append(np.array([-1 if f is None else f for f in picks], np.int64))
        for t, tracker in enumerate(self.trackers):
            f = picks[t]
            if f is not None and owners is not None:
                self.by_identity[t] += int(owners[f] == t)
                self.by_position[t] += int(owners[f] != t)
            if f is not None and looks is not None:
                previous = self._previous(t)
                continuing = previous is not None and box_iou(faces[f:f + 1], previous)[0] >= s.iou_keep
                match = float(looks[f] @ self.person[t]) if self.person[t] is not None else 1.0
                if not continuing and match < s.same_person:
                    self.identity_switches[t] += 1
                person = looks[f] if self.person[t] is None else (
                    s.appearance_momentum * self.person[t] + (1 - s.appearance_momentum) * looks[f])
                self.person[t] = person / max(float(np.linalg.norm(person)), 1e-6)
            box, followed[t] = tracker.advance(faces[f] if f is not None else None, frame)
            if f is not None:
                landmarks[t] = landmarks_of(faces)[f]
            self._age[t] += 1
            if box is not None:
                boxes[t] = box
                self._last_box[t], self._age[t] = box, 0
        return boxes, followed, landmarks

    def update(self, detections: Sequence[np.ndarray | None], frames: np.ndarray | None = None,
               owners: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Picks for a batch of frames: boxes (T, B, 4) float32 (NaN: no face for that track), followed
        (T, B) bool and the picked detections' landmarks (T, B, 5, 2) float32 (NaN where the track took
        no detection: no face, followed, or a detector without landmarks); ``frames`` (B, H, W, 3)
        uint8 RGB give appearance and following; ``owners`` (per frame (k,) over the ``usable_faces``):
        the track each face belongs to by identity (``IdentityPlan.owners``), -1 where position decides."""
        if frames is not None and len(frames) != len(detections):
            raise ValueError(f"{len(frames)} frames but {len(detections)} detection lists")
        n_tracks, n_frames = len(self.strategies), len(detections)
        boxes = np.full((n_tracks, n_frames, 4), np.nan, np.float32)
        followed = np.zeros((n_tracks, n_frames), bool)
        landmarks = np.full((n_tracks, n_frames, len(LANDMARK_NAMES), 2), np.nan, np.float32)
        for i, faces in enumerate(detections):  # light loop: each frame's assignment depends on the previous one
            boxes[:, i], followed[:, i], landmarks[:, i] = self._step(
                faces, frames[i] if frames is not None else None, owners[i] if owners is not None else None)
        return boxes, followed, landmarks

    def pop_picks(self) -> list[np.ndarray]:
        """Per frame since the last call, (T,) the index of the usable face each track took (-1: none);
        recorded only with ``record_picks``."""
        picks, self._picks = self._picks, []
        return picks


def overlap_frames(tracks: Sequence[FaceTrack], *, min_iou: float = 0.3) -> np.ndarray:
    """Per track, the frames where its box overlaps (IoU >= ``min_iou``) another track's box."""
    boxes = np.stack([t.boxes for t in tracks]) if tracks else np.zeros((0, 0, 4), np.float32)
    out = np.zeros(len(tracks), np.int64)
    for a in range(len(tracks)):
        hit = np.zeros(boxes.shape[1], bool)
        for b in range(len(tracks)):
            if a == b:
                continue
            x1 = np.maximum(boxes[a, :, 0], boxes[b, :, 0])
            y1 = np.maximum(boxes[a, :, 1], boxes[b, :, 1])
            x2 = np.minimum(boxes[a, :, 2], boxes[b, :, 2])
            y2 = np.minimum(boxes[a, :, 3], boxes[b, :, 3])
            inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
            area_a = (boxes[a, :, 2] - boxes[a, :, 0]) * (boxes[a, :, 3] - boxes[a, :, 1])
            area_b = (boxes[b, :, 2] - boxes[b, :, 0]) * (boxes[b, :, 3] - boxes[b, :, 1])
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = inter / (area_a + area_b - inter)
            hit |= np.nan_to_num(iou, nan=0.0) >= min_iou
        out[a] = int(hit.sum())
    return out


def track_video(detections: Sequence[np.ndarray | None], *, frame_size: tuple[int, int], strategies: Sequence[str],
                max_gap: int, frames: np.ndarray | None = None, follow: FollowSettings | None = None,
                settings: AssignSettings | None = None, embedder: FaceEmbedder | None = None,
                identity: IdentitySettings | None = None) -> tuple[list[FaceTrack], list[dict]]:
    """The face tracks of ALL annotation files of one video, assigned jointly, gaps bridged.

    ``detections``: per frame a (k, 15) array, or None where the detector did not look (those
    frames, when bridged, are INTERPOLATED); ``strategies``: one per track; ``frames`` (N, H, W, 3)
    uint8 RGB for appearance and following. With an ``embedder`` (``kitlib.faces.identity``) and
    ``frames``, positional tracks follow the person decided over the whole video (``plan_video``).
    Returns one ``FaceTrack`` per strategy (with the picked detections' landmarks) and per track
    ``{"identity_switches", "overlap"}`` plus the identity report (``identity_stats``).
    """
    s = settings or AssignSettings()
    plan = None
    if embedder is not None and frames is not None and any(x in IDENTITY_STRATEGIES for x in strategies):
        from kitlib.faces.video import FrameBatch

        batch = FrameBatch(index=np.arange(1, len(frames) + 1), times_s=np.zeros(len(frames)), frames=frames)
        plan = plan_video([batch], detect=lambda _: list(detections), embedder=embedder, strategies=strategies,
                          frame_size=frame_size, usable=lambda f: usable_faces(f, min_rel_area=s.min_rel_area),
                          online=lambda: JointTracker(frame_size=frame_size, strategies=strategies, settings=s,
                                                      record_picks=True), settings=identity)
    tracker = JointTracker(frame_size=frame_size, strategies=strategies, settings=s, follow=follow,
                           record_picks=plan is not None)
    boxes, followed, landmarks = tracker.update(detections, frames, plan.owners if plan is not None else None)
    skipped = np.array([d is None for d in detections], bool)
    tracks = [bridge_gaps(boxes[t], max_gap=max_gap, followed=followed[t], skipped=skipped, landmarks=landmarks[t])
              for t in range(len(strategies))]
    overlap = overlap_frames(tracks, min_iou=tracker.settings.overlap_iou)
    report = identity_stats(plan, tracker, method=identity_method(embedder, "online"), strategies=strategies)
    stats = [dict(identity_switches=int(tracker.identity_switches[t]), overlap=int(overlap[t]), **report[t])
             for t in range(len(strategies))]
    return tracks, stats
