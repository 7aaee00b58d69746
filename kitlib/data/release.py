"""The Aff-Wild2 EXPR release: annotation files, splits, test names, template, folds.

Layout (every folder name is a param, see ``params/base.yaml`` section ``data``)::

    <root>/videos/**/<videoid>.(mp4|avi|mkv|webm)     raw videos, with audio
    <root>/annotations/Train_Set/<txtid>.txt           one label per frame, -1 invalid
    <root>/annotations/Validation_Set/<txtid>.txt
    <root>/test/names.txt                              test annotation names, one per line
    <root>/test/template.txt                           organisers' submission template

An annotation file starts with the header ``Neutral,Anger,...,Other``; line i (1-based, after the
header) is the label of frame ``{i:05d}.jpg``. ``<videoid>_left`` / ``<videoid>_right`` annotate
the left and right person of the shared video ``<videoid>``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kitlib import CLASSES

log = logging.getLogger(__name__)


HEADER = ",".join(CLASSES)
SPLITS = ("Train_Set", "Validation_Set", "Test_Set")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
SIDES = ("left", "right")


@dataclass(frozen=True)
class Track:
    """One annotation file (or one test name): one person in one raw video."""

    txtid: str              # annotation file stem, e.g. "10-60-1280x720_right"
    videoid: str            # raw video stem, e.g. "10-60-1280x720"
    split: str              # one of SPLITS
    video_path: Path        # the raw video
    labels_path: Path | None  # None for the test set
    side: str | None        # "left" / "right" for two-person videos, else None


def videoid_of(txtid: str) -> tuple[str, str | None]:
    """Split an annotation name into its video id and the annotated side."""
    for side in SIDES:
        if txtid.endswith(f"_{side}"):
            return txtid[: -len(side) - 1], side
    return txtid, None


class DataError(ValueError):
    """A file of the release that does not read as it should; the message names the file."""


@dataclass
class DataIndex:
    """Every track found under a release root, and the files that could not be used (and why)."""

    tracks: list[Track]
    problems: list[tuple[str, str]]  # (file, reason)

    def split(self, name: str) -> list[Track]:
        return [t for t in self.tracks if t.split == name]

    def by_txtid(self) -> dict[str, Track]:
        return {t.txtid: t for t in self.tracks}


def _video_paths(videos_dir: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    found: dict[str, Path] = {}
    problems = []
    for path in sorted(videos_dir.rglob("*")):
        if path.suffix.lower() not in VIDEO_EXTENSIONS or not path.is_file():
            continue
        if path.stem in found:
            problems.append((str(path), f"duplicate video id {path.stem!r} (also {found[path.stem]}); the first is used"))
            continue
        found[path.stem] = path
    return found, problems


def discover(root: Path, *, videos_dir: str = "videos", annotations_dir: str = "annotations",
             test_names: str | Path | None = "test/names.txt") -> DataIndex:
    """Index the release: every annotation file and test name with its raw video.

    A track whose video cannot be found is left out and listed in ``problems``; a missing
    Train/Validation folder or test-name file is an error, since nothing sensible can follow.
    """
    root = Path(root)
    vdir = root / videos_dir
    if not vdir.is_dir():
        raise DataError(f"{vdir}: the videos folder does not exist (data.videos_dir)")
    videos, problems = _video_paths(vdir)
    tracks: list[Track] = []

    def add(txtid: str, split: str, labels_path: Path | None) -> None:
        videoid, side = videoid_of(txtid)
        video = videos.get(videoid) or videos.get(txtid)
        if video is None:
            problems.append((str(labels_path or txtid), f"no video {videoid!r} under {vdir}"))
            return
        tracks.append(Track(txtid=txtid, videoid=video.stem, split=split, video_path=video,
                            labels_path=labels_path, side=side))

    for split in SPLITS[:2]:
        adir = root / annotations_dir / split
        if not adir.is_dir():
            raise DataError(f"{adir}: annotation folder missing (data.annotations_dir)")
        for path in sorted(adir.glob("*.txt")):
            add(path.stem, split, path)
    if test_names is not None:
        for txtid in read_test_names(root / test_names):
            add(txtid, "Test_Set", None)
    log.info("data: %d tracks (%s) from %d videos, %d problems", len(tracks),
             ", ".join(f"{s}: {sum(t.split == s for t in tracks)}" for s in SPLITS),
             len({t.videoid for t in tracks}), len(problems))
    return DataIndex(tracks=tracks, problems=problems)


def read_test_names(path: Path) -> list[str]:
    """The test annotation names, one per line (blank lines and a .txt suffix tolerated)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: test-name file missing (data.test_names)")
    names = [line.strip().removesuffix(".txt") for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: names appear more than once")
    return names


def read_labels(path: Path) -> np.ndarray:
    """Per-frame labels of one annotation file: int64, index 0 = frame 1, -1 = invalid."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip().replace(" ", "") != HEADER:
        raise DataError(f"{path}: first line must be the header {HEADER!r}, got {lines[0][:80]!r}" if lines
                        else f"{path}: empty annotation file")
    body = [s.strip() for s in lines[1:]]
    while body and not body[-1]:
        body.pop()
    try:
        labels = np.array([int(s) for s in body], dtype=np.int64)
    except ValueError:
        bad = next(i for i, s in enumerate(body) if not s.lstrip("-").isdigit())
        raise DataError(f"{path}: line {bad + 2} is {body[bad]!r}, not an integer label") from None
    out_of_range = np.flatnonzero((labels < -1) | (labels >= len(CLASSES)))
    if out_of_range.size:
        i = int(out_of_range[0])
        raise DataError(f"{path}: line {i + 2} holds label {labels[i]}, outside -1..{len(CLASSES) - 1}")
    return labels


def align_labels(labels: np.ndarray, n_frames: int, *, policy: str = "truncate",
                 name: str = "") -> tuple[np.ndarray, str]:
    """Fit an annotation to the decoded frame count of its video.

    ``truncate`` (default): lines past the last decoded frame are dropped, frames past the last
    line get -1 (not scored); the returned note says what was done (empty when the lengths agree).
    ``strict``: any difference is a ``DataError``.
    """
    n_labels = len(labels)
    if n_labels == n_frames:
        return labels, ""
    diff = n_labels - n_frames
    what = f"{name}: annotation has {n_labels} lines, video decodes to {n_frames} frames"
    if policy == "strict":
        raise DataError(what + " (data.length_policy=strict)")
    if policy != "truncate":
        raise DataError(f"unknown data.length_policy {policy!r}; valid: truncate, strict")
    if diff > 0:
        return labels[:n_frames], f"{what}: dropped the last {diff} line(s)"
    return np.concatenate([labels, np.full(-diff, -1, dtype=labels.dtype)]), f"{what}: last {-diff} frame(s) set to -1"


