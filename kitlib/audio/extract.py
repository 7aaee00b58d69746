"""Frame-aligned audio features for a list of annotation tracks: one ``.npz`` per track in a
``FeatureStore``, a report row per track, resumable.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kitlib.audio.alignment import align_to_frames, frame_centre_times
from kitlib.audio.encoders import AudioEncoder, encode, encode_many
from kitlib.audio.waveform import AudioTrack, NoAudioError, load_audio
from kitlib.data import Track
from kitlib.faces.video import VideoError, frame_times, probe
from kitlib.progress import tqdm
from kitlib.store import FeatureStore, disk_full

log = logging.getLogger(__name__)


def _coverage_status(audio: AudioTrack, times: np.ndarray, video_end_s: float, tolerance_s: float) -> str:
    """'ok', 'audio shorter by X s' (ends early or starts late) or 'audio longer by X s'."""
    short = max(0.0, video_end_s - audio.end_time_s) + max(0.0, audio.start_time_s - float(times[0]))
    longer = max(0.0, audio.end_time_s - video_end_s)
    if short > tolerance_s:
        return f"audio shorter by {short:.2f} s"
    if longer > tolerance_s:
        return f"audio longer by {longer:.2f} s"
    return "ok"


def _window_key(window_s: float) -> str:
    return f"window_{int(round(window_s * 1000))}"


def extract_audio_features(tracks: Sequence[Track], store: FeatureStore, encoder: AudioEncoder, *,
                           sample_rate: int = 16000, chunk_s: float = 30.0, overlap_s: float = 5.0,
                           layers: str | int = "last", method: str = "window", align_window_s: float = 0.5,
                           manifest: dict[str, Any], extra_windows_s: Sequence[float] = (),
                           length_tolerance_s: float = 0.1, empty: str = "mask", frame_time: str = "container",
                           batch_videos: int = 1, batch_chunks: int = 8) -> pd.DataFrame:
    """Encode each raw video's audio once and save frame-aligned features for each of its tracks.

    Per track: ``frame_index`` 1..N (the video's frames), ``features`` (N, D) with ``method`` /
    ``align_window_s``, ``mask``, ``times_s`` (frame start times from the container). With
    ``extra_windows_s`` (Table 2) also ``nearest`` and ``window_<ms>`` for each extra window, each
    with a ``<name>_mask``, so the alignments can be compared without re-encoding. ``empty``: an
    empty window is masked or takes the nearest encoder step (``align_to_frames``); ``frame_time``:
    windows centre on the container's frame start times (``container``) or on ``(i + 0.5) / fps``
    (``centre``, the reference code).

    Never fatal per video: a video without audio is saved all-masked ("no audio"); audio shorter
    or longer than the video is reported and the uncovered frames masked; a video or audio that
    cannot be decoded is reported ("error: ...") and not saved, so a re-run retries it. Tracks
    already in the store are skipped ("resumed"). The manifest (``manifest`` plus the audio
    settings) is written at the end. Returns one report row per track.

    ``batch_videos`` > 1 encodes that many videos together, their chunks ``batch_chunks`` at a time
    (``encoders.encode_many``: large batches for a GPU); 1 encodes each video on its own (``encode``).
    """
    by_video: dict[Path, list[Track]] = {}
    for track in tracks:
        by_video.setdefault(Path(track.video_path), []).append(track)
    windows = [w for w in dict.fromkeys(float(w) for w in extra_windows_s)]
    rows: list[dict[str, Any]] = []

    def report(group: Sequence[Track], status: str, *, frames: int = 0, audio_s: float = float("nan"),
               video_s: float = float("nan"), with_audio: int = 0, seconds: float = 0.0) -> None:
        for track in group:
            rows.append(dict(txtid=track.txtid, videoid=track.videoid, frames=frames, audio_s=audio_s,
                             video_s=video_s, frames_with_audio=with_audio, status=status, seconds=seconds))

    def prepare(video_path: Path) -> dict[str, Any]:  # frame times and the waveform (None: no audio track)
        times = frame_times(video_path)
        step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
        try:
            audio = load_audio(video_path, sample_rate=sample_rate)
        except NoAudioError:
            audio = None
        centres = frame_centre_times(len(times), probe(video_path).fps) if frame_time == "centre" else times
        return dict(times=times, centres=centres, video_end_s=float(times[-1]) + step, audio=audio)

    def finish(group: list[Track], todo: list[Track], job: dict[str, Any], feats: np.ndarray,
               feat_times: np.ndarray) -> None:  # align to the frames and save each track of the video
        times, centres, audio, video_end_s = job["times"], job["centres"], job["audio"], job["video_end_s"]
        if audio is None:
            status, audio_s = "no audio", 0.0
        else:
            status, audio_s = _coverage_status(audio, times, video_end_s, length_tolerance_s), audio.duration_s
        aligned, mask = align_to_frames(feats, feat_times, centres, method=method, align_window_s=align_window_s,
                                        empty=empty)
        extra: dict[str, np.ndarray] = {}
        if windows:
            for key, kwargs in [("nearest", dict(method="nearest")), ("interpolate", dict(method="interpolate"))] + [
                    (_window_key(w), dict(method="window", align_window_s=w)) for w in windows]:
                values, values_mask = align_to_frames(feats, feat_times, centres, empty=empty, **kwargs)
                extra[key], extra[f"{key}_mask"] = values.astype(np.float16), values_mask
        for track in todo:
            store.save(track.txtid, frame_index=np.arange(1, len(times) + 1), features=aligned, mask=mask,
                       times_s=times, **extra)
        report(todo, status, frames=len(times), audio_s=audio_s, video_s=video_end_s - float(times[0]),
               with_audio=int(mask.sum()), seconds=time.perf_counter() - job["tic"])
        report([t for t in group if t not in todo], "resumed")

    def failed(group: list[Track], todo: list[Track], video_path: Path, exc: Exception, tic: float) -> None:
        reason = exc.reason if isinstance(exc, VideoError) else f"{type(exc).__name__}: {exc}"
        log.warning("%s: skipped (%s)", video_path, reason, exc_info=not isinstance(exc, VideoError))
        report(todo, f"error: {reason}", seconds=time.perf_counter() - tic)
        report([t for t in group if t not in todo], "resumed")

    videos = list(by_video.items())
    bar = tqdm(total=len(videos), desc="audio features", unit="video")
    for first in range(0, len(videos), max(1, batch_videos)):  # videos whose chunks share the encoder's batches
        jobs: list[tuple[Path, list[Track], list[Track], dict[str, Any]]] = []
        for video_path, group in videos[first:first + max(1, batch_videos)]:
            todo = [t for t in group if not store.done(t.txtid)]
            if not todo:
                report(group, "resumed")
                continue
            tic = time.perf_counter()
            try:
                jobs.append((video_path, group, todo, {**prepare(video_path), "tic": tic}))
            except Exception as exc:  # one bad video must not end a multi-video run
                if disk_full(exc):  # a full disk fails every later video too: stop at the first
                    raise
                failed(group, todo, video_path, exc, tic)
        with_audio = [job for job in jobs if job[3]["audio"] is not None]
        try:
            if batch_videos > 1 and len(with_audio) > 1:
                encoded = encode_many([j[3]["audio"].waveform for j in with_audio], encoder, sample_rate=sample_rate,
                                      chunk_s=chunk_s, overlap_s=overlap_s, layers=layers, batch_chunks=batch_chunks,
                                      start_times_s=[j[3]["audio"].start_time_s for j in with_audio], progress=True)
            else:
                encoded = [encode(j[3]["audio"].waveform, encoder, sample_rate=sample_rate, chunk_s=chunk_s,
                                  overlap_s=overlap_s, layers=layers, start_time_s=j[3]["audio"].start_time_s,
                                  progress=True) for j in with_audio]
        except Exception as exc:  # the batch failed as a whole: encode its videos one by one, each reported
            log.warning("audio batch of %d videos failed (%s); encoding them one by one", len(with_audio), exc)
            encoded = None
        by_path = dict(zip([j[0] for j in with_audio], encoded)) if encoded is not None else {}
        for video_path, group, todo, job in jobs:
            try:
                if job["audio"] is None:
                    feats, feat_times = np.zeros((0, encoder.hidden_size), np.float32), np.zeros(0)
                elif video_path in by_path:
                    feats, feat_times = by_path[video_path]
                else:
                    feats, feat_times = encode(job["audio"].waveform, encoder, sample_rate=sample_rate,
                                               chunk_s=chunk_s, overlap_s=overlap_s, layers=layers,
                                               start_time_s=job["audio"].start_time_s, progress=True)
                finish(group, todo, job, feats, feat_times)
            except Exception as exc:  # one bad video must not end a multi-video run
                if disk_full(exc):  # a full disk fails every later video too: stop at the first
                    raise
                failed(group, todo, video_path, exc, job["tic"])
        bar.update(min(len(videos), first + max(1, batch_videos)) - first)
    bar.close()

    table = pd.DataFrame(rows, columns=["txtid", "videoid", "frames", "audio_s", "video_s", "frames_with_audio",
                                        "status", "seconds"])
    counts = table.status.str.split(r" by |:", regex=True).str[0].value_counts().to_dict()
    store.write_manifest({
        **manifest,
        "audio": dict(encoder=str(encoder.path) if encoder.path else None, config_hash=encoder.config_hash,
                      model_type=encoder.model.config.model_type, hidden_size=encoder.hidden_size,
                      layers=layers, sample_rate=sample_rate, do_normalize=encoder.do_normalize,
                      chunk_s=chunk_s, overlap_s=overlap_s, method=method, align_window_s=align_window_s,
                      empty_window=empty, frame_time=frame_time,
                      extra_alignments=(["nearest", "interpolate"] + [_window_key(w) for w in windows]) if windows else [],
                      frame_hop_s=encoder.geometry.hop_samples / sample_rate,
                      frame_window_s=encoder.geometry.receptive_field / sample_rate,
                      dtype=str(encoder.dtype), device=str(encoder.device)),
        "audio_status_counts": counts,
    })
    log.info("audio features: %d videos, %d tracks -> %s", len(by_video), len(table), counts)
    return table
