"""Raw-video decoding with decord (or PyAV where decord has no wheel): frames in batches, frame times
from the container. ``KITLIB_VIDEO_BACKEND=pyav`` (or ``decord``) forces one; by default decord when
it is installed.

Frame numbers are 1-based everywhere in the kit, as in the annotation files (line i = frame
``{i:05d}.jpg``). Frame times are read from the container's timestamps, not derived from the
nominal fps, because real Aff-Wild2 files have variable frame rates and odd durations.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class VideoError(RuntimeError):
    """A video that cannot be decoded; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    n_frames: int
    fps: float
    width: int
    height: int
    duration_s: float


@dataclass(frozen=True)
class FrameBatch:
    index: np.ndarray    # (B,) int64, 1-based frame numbers
    times_s: np.ndarray  # (B,) float64, presentation time of each frame's start
    frames: np.ndarray   # (B, H, W, 3) uint8 RGB
    pixels: Any = None   # the same frames uploaded ahead as a (B, 3, H, W) uint8 torch tensor on the compute
                         # device (kitlib.visual.pipelined); None = not uploaded
    detections: Any = None  # per frame (k, 15) detections found ahead by a decode worker; None = not yet

    def tail(self, start: int) -> "FrameBatch":
        """The frames from position ``start`` on (views, no copy)."""
        return replace(self, index=self.index[start:], times_s=self.times_s[start:], frames=self.frames[start:],
                       pixels=None if self.pixels is None else self.pixels[start:],
                       detections=None if self.detections is None else self.detections[start:])


def backend() -> str:
    """``decord`` or ``pyav``: ``$KITLIB_VIDEO_BACKEND`` if set, else decord when it imports, else PyAV."""
    forced = os.environ.get("KITLIB_VIDEO_BACKEND")
    if forced:
        if forced not in ("decord", "pyav"):
            raise ValueError(f"KITLIB_VIDEO_BACKEND must be decord or pyav, not {forced!r}")
        return forced
    try:
        import decord  # noqa: F401
    except ImportError:
        return "pyav"
    return "decord"


def _open(path: Path):
    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "file not found")
    try:
        if backend() == "pyav":
            from kitlib.faces.pyav_reader import PyAVReader

            reader = PyAVReader(path)
        else:
            import decord

            reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=0)
    except Exception as exc:  # decord raises DECORDError / RuntimeError with C++ text; PyAV its own errors
        raise VideoError(path, f"cannot open as a video ({str(exc).splitlines()[0][:200]})") from exc
    if len(reader) == 0:
        raise VideoError(path, "the container holds no video frames")
    return reader


def probe(path: Path | str) -> VideoInfo:
    """Frame count, fps, size and duration of a video, or a ``VideoError`` naming the file."""
    reader = _open(Path(path))
    n = len(reader)
    height, width = (reader.height, reader.width) if hasattr(reader, "height") else reader[0].shape[:2]
    stamps = reader.get_frame_timestamp(np.array([n - 1]))
    return VideoInfo(path=Path(path), n_frames=n, fps=float(reader.get_avg_fps()), width=int(width),
                     height=int(height), duration_s=float(stamps[0, 1]))


def frame_times(path: Path | str) -> np.ndarray:
    """Start time in seconds of every frame, from the container's timestamps."""
    reader = _open(Path(path))
    return reader.get_frame_timestamp(np.arange(len(reader)))[:, 0].astype(np.float64)


def iter_frames(path: Path | str, *, batch_size: int = 64, step: int = 1) -> Iterator[FrameBatch]:
    """Decode a video front to back in batches of ``batch_size`` frames (every ``step``-th frame).

    A file that breaks part-way (truncated, corrupt packets) raises ``VideoError`` naming the file
    and the first frame that could not be decoded; the batches before it have been yielded.
    """
    path = Path(path)
    reader = _open(path)
    n = len(reader)
    wanted = np.arange(0, n, step)
    for start in range(0, len(wanted), batch_size):
        idx = wanted[start:start + batch_size]
        try:
            frames = reader.get_batch(idx.tolist())
            frames = frames if isinstance(frames, np.ndarray) else frames.asnumpy()
            times = reader.get_frame_timestamp(idx)[:, 0]
        except Exception as exc:
            raise VideoError(path, f"decoding failed at frame {int(idx[0]) + 1} of {n} "
                                   f"({str(exc).splitlines()[0][:200]})") from exc
        yield FrameBatch(index=idx.astype(np.int64) + 1, times_s=times.astype(np.float64), frames=frames)
