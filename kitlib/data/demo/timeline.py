"""The demo's per-frame plans: labels, -1 runs, which modality shows the class, face trajectories, and the class sounds.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kitlib import NUM_CLASSES
from kitlib.data.demo.faces import Identity

log = logging.getLogger(__name__)


# Class frequencies of the real release (expr_cv5_summary.json, global_class_hist / total).
REAL_CLASS_RATIO = np.array([0.2996, 0.0266, 0.0186, 0.0201, 0.1475, 0.1212, 0.0490, 0.3174])

# Sound of each class: harmonic tone, fundamental (Hz) and amplitude-modulation rate (Hz).
CLASS_F0_HZ = np.array([150.0, 190.0, 240.0, 300.0, 360.0, 420.0, 500.0, 600.0])
CLASS_AM_HZ = np.array([3.0, 7.5, 5.0, 10.0, 4.0, 2.0, 8.5, 6.0])

_INVALID_FRACTION = 0.08         # frames labelled -1 (runs of 0.3-2 s)
_ABSENT_SHARE = 0.65             # share of -1 runs where the face is gone (-> ~5% of frames)
_NOISE_FRACTION = 0.10           # frames whose cue shows another class (bursts of 1-3 frames)
_MODALITY_MODES = (0.5, 0.25, 0.25)   # chunk probabilities: both / visual off / audio off




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
    size: tuple[int, int] | None = None   # (width, height); None: the dataset's one size (the demo)
    fps: float | None = None              # None: the dataset's one frame rate (the demo)
    person_splits: tuple[str, ...] = ()   # per person, where its split differs from the video's (the release
                                          # has _left / _right files of one video in Train_Set and Validation_Set)

    def split_of(self, k: int) -> str:
        """The split of person ``k``'s annotation file."""
        return self.person_splits[k] if self.person_splits else self.split


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


