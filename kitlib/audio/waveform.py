"""The audio track of a raw video: decoded with PyAV, mono, resampled, on the video's clock.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kitlib.faces.video import VideoError

log = logging.getLogger(__name__)


class AudioError(VideoError):
    """The audio of a video cannot be read; the message names the file and the reason."""


class NoAudioError(AudioError):
    """The container has no audio stream (or one without a single decodable sample)."""

    def __init__(self, path: Path | str, reason: str = "the container has no audio stream"):
        super().__init__(path, reason)


@dataclass(frozen=True)
class AudioTrack:
    """A mono waveform and where it sits on the video's clock."""

    path: Path
    waveform: np.ndarray  # (S,) float32 in [-1, 1]
    sample_rate: int
    start_time_s: float   # time of the first sample, in the container's presentation clock
    duration_s: float     # S / sample_rate

    @property
    def end_time_s(self) -> float:
        return self.start_time_s + self.duration_s


def load_audio(path: Path, *, sample_rate: int = 16000) -> AudioTrack:
    """Decode the first audio stream of a (video) file to mono float32 at ``sample_rate``.

    Channels are averaged (an exact mean, not FFmpeg's downmix matrix); resampling is FFmpeg's
    swresample, streamed frame by frame so a long file never holds its native-rate audio at once.
    ``start_time_s`` is the presentation time of the first decoded frame (the stream's start
    time in the container when the frame carries none). Raises ``NoAudioError`` when there is no
    audio stream and ``AudioError`` for a missing, unreadable or corrupt file.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise AudioError(path, f"cannot open as a media file ({exc})") from exc
    with container:
        if not container.streams.audio:
            raise NoAudioError(path)
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        pieces: list[np.ndarray] = []
        n_samples = 0
        start_time_s: float | None = None
        try:
            for frame in container.decode(stream):
                if start_time_s is None and frame.pts is not None and frame.time_base is not None:
                    start_time_s = float(frame.pts * frame.time_base)
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
                    n_samples += pieces[-1].shape[0]
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
                n_samples += pieces[-1].shape[0]
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise AudioError(path, f"audio decoding failed after {n_samples / sample_rate:.2f} s ({exc})") from exc
        if n_samples == 0:
            raise NoAudioError(path, "the audio stream holds no decodable samples")
        if start_time_s is None:
            start_time_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    waveform = np.clip(np.concatenate(pieces), -1.0, 1.0).astype(np.float32, copy=False)
    return AudioTrack(path=path, waveform=waveform, sample_rate=sample_rate, start_time_s=start_time_s,
                      duration_s=len(waveform) / sample_rate)


