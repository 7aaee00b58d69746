"""Multi-scale frame-level visual features from raw videos (seed 000, sec. 3.2.1, eqs. 6-7).

For every frame ``t`` of a video the annotated person's face is re-cropped at each scale ``s``
(``crop_scales``, 0.9 / 1.2 / 1.5 in the paper), encoded by the (Stage-I adapted) DINOv2 backbone,
``f_t^{v,s} = E_v(x_t^(s))`` (eq. 6), and averaged over the scales, ``f_t^v = mean_s f_t^{v,s}``
(eq. 7). The pipeline streams decode -> detect -> track -> crop -> backbone without writing any
image to disk, with a bounded buffer of frames, so a 10-minute video fits in memory.

``extract_official_crop_features`` encodes the organisers' aligned face crops instead (Table 1's
"official face crop" column, sec. 4.4), with the same backbone batching and normalisation.
"""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kitlib.data import Track
from kitlib.faces import (BRIDGED, DETECTED, FOLLOWED, MISSING, FaceDetector, FaceTrack, FollowSettings, bridge_gaps,
                          crop_faces, normalize)
from kitlib.faces.assign import AssignSettings, JointTracker, overlap_frames, usable_faces
from kitlib.faces.detectors import detector_record
from kitlib.faces.identity import IDENTITY_COLUMNS, IDENTITY_STRATEGIES, FaceEmbedder, identity_stats, plan_video
from kitlib.faces.selection import strategies_of
from kitlib.faces.tracking import INTERPOLATED
from kitlib.faces.video import FrameBatch, VideoError, VideoInfo, iter_frames, probe
from kitlib.progress import tqdm
from kitlib.store import FeatureStore, disk_full

log = logging.getLogger(__name__)


REPORT_COLUMNS: tuple[str, ...] = ("txtid", "videoid", "video", "strategy", "frames", "detected", "followed",
                                   "bridged", "interpolated", "missing", "identity_switches", "overlap",
                                   *IDENTITY_COLUMNS, "status", "seconds")
OFFICIAL_REPORT_COLUMNS: tuple[str, ...] = ("txtid", "frames", "images", "unreadable", "missing", "status",
                                            "problems", "seconds")


def feature_dim(backbone: torch.nn.Module, *, image_size: int, device: torch.device) -> int:
    """Run one blank image through ``backbone`` to check it returns (B, D) features; returns D."""
    with torch.inference_mode():
        out = backbone(torch.zeros(1, 3, image_size, image_size, device=device))
    if out.ndim != 2 or out.shape[0] != 1:
        raise ValueError(f"the backbone must return (B, D) pooled features (timm model built with "
                         f"num_classes=0); it returned {tuple(out.shape)}")
    return int(out.shape[1])


@dataclass
class _TrackFeatures:
    """What is gathered for one annotation file while its video streams by."""

    track: Track
    strategy: str                                              # which face is this track's person (faces.selection)
    picks: list[np.ndarray] = field(default_factory=list)      # per decode batch (B, 4), NaN = no pick
    followed: list[np.ndarray] = field(default_factory=list)   # per decode batch (B,) bool, pick was followed
    landmarks: list[np.ndarray] = field(default_factory=list)  # per decode batch (B, 5, 2), NaN = no detection picked
    by_scale: list[np.ndarray] = field(default_factory=list)   # per processed chunk (n, S, D) float16
    boxes: list[np.ndarray] = field(default_factory=list)      # per processed chunk (n, 4) float32
    status: list[np.ndarray] = field(default_factory=list)     # per processed chunk (n,) uint8


def _encode(frames: torch.Tensor, boxes: np.ndarray, *, backbone: torch.nn.Module, crop_scales: Sequence[float],
            image_size: int, mean: Sequence[float], std: Sequence[float], batch_size: int, dim: int,
            autocast: Callable[[], AbstractContextManager]) -> np.ndarray:
    """Features (n, S, D) float16 of the faces in ``frames`` (n, 3, H, W) at ``boxes``; zeros where no box."""
    n, n_scales = len(frames), len(crop_scales)
    out = np.zeros((n, n_scales, dim), np.float16)
    present = np.flatnonzero(np.isfinite(boxes).all(axis=1))
    frames_per_pass = max(1, batch_size // n_scales)  # batch_size counts crops (images) per forward
    box_t = torch.from_numpy(boxes)
    for start in range(0, len(present), frames_per_pass):
        rows = present[start:start + frames_per_pass]
        rows_t = torch.from_numpy(rows).to(frames.device)
        crops = crop_faces(frames[rows_t], box_t[rows].to(frames.device), scales=crop_scales, out_size=image_size)
        images = normalize(crops, mean, std).flatten(0, 1)  # (n*S, 3, size, size)
        with autocast():
            feats = backbone(images)
        out[rows] = feats.float().reshape(len(rows), n_scales, dim).cpu().numpy().astype(np.float16)
    return out


def _encoder_args(backbone: torch.nn.Module, *, crop_scales: Sequence[float], image_size: int,
                  mean: Sequence[float], std: Sequence[float], batch_size: int, device: torch.device,
                  dtype: torch.dtype) -> dict[str, Any]:
    """The keyword arguments of ``_encode`` for ``backbone`` on ``device`` (checks its output, picks autocast)."""
    dim = feature_dim(backbone, image_size=image_size, device=device)
    use_autocast = dtype in (torch.bfloat16, torch.float16)   # the caller chose the device path (stages: amp_dtype)

    def autocast():  # bf16/fp16 autocast wherever the caller asks for it (CUDA; the CPU in tests and rehearsals)
        return torch.autocast(device_type=device.type, dtype=dtype) if use_autocast else nullcontext()
    return dict(backbone=backbone, crop_scales=tuple(crop_scales), image_size=image_size, mean=mean, std=std,
                batch_size=batch_size, dim=dim, autocast=autocast)


def _frames_on_device(buffer: list[FrameBatch], take: int, device: torch.device) -> torch.Tensor:
    """The first ``take`` buffered frames as one (take, 3, H, W) uint8 tensor on ``device`` (batches
    uploaded ahead, ``FrameBatch.pixels``, are used as they are)."""
    parts, left = [], take
    for b in buffer:
        if left <= 0:
            break
        n = min(left, len(b.index))
        parts.append(b.pixels[:n] if b.pixels is not None
                     else torch.from_numpy(b.frames[:n]).to(device).permute(0, 3, 1, 2))
        left -= n
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _process_ready(buffer: list[FrameBatch], states: list[_TrackFeatures], *, n_ready: int, n_done: int,
                   max_gap: int, skipped: list[np.ndarray], device: torch.device,
                   encode: Callable[..., Any] | None = None, **encode_args) -> list[FrameBatch]:
    """Encode the buffered frames whose face boxes are final (frame numbers <= ``n_ready``).

    ``encode`` (default ``_encode``) turns (frames, boxes) into the (n, S, D) features kept per track.
    """
    if not buffer or n_ready <= n_done:
        return buffer
    encode = encode or _encode
    index = np.concatenate([b.index for b in buffer])
    take = int(np.searchsorted(index, n_ready, side="right"))
    frames_t = _frames_on_device(buffer, take, device)
    for state in states:
        track = bridge_gaps(np.concatenate(state.picks), max_gap=max_gap, followed=np.concatenate(state.followed),
                            skipped=np.concatenate(skipped))
        sl = slice(int(index[0]) - 1, int(index[0]) - 1 + take)
        boxes, status = track.boxes[sl], track.status[sl]
        state.by_scale.append(encode(frames_t, boxes, **encode_args))
        state.boxes.append(boxes)
        state.status.append(status)
    rest, start = [], 0
    for b in buffer:  # the frames not encoded yet, as views of their batches
        if start + len(b.index) > take:
            rest.append(b.tail(max(0, take - start)))
        start += len(b.index)
    return rest


def _detect(detector: FaceDetector, batch: FrameBatch, detect_every: int) -> list[np.ndarray | None]:
    """Detections of a decoded batch; None on frames skipped by ``detect_every`` (frame n is looked at when
    (n - 1) % detect_every == 0, so the choice does not depend on the decode chunking)."""
    look = (batch.index - 1) % detect_every == 0
    found = iter(detector.detect(batch.frames[look], frame_index=batch.index[look]) if look.any() else [])
    return [next(found) if hit else None for hit in look]


@dataclass
class _VideoPass:
    """One video after decode, detection, joint tracking and encoding: what ``_save_tracks`` writes."""

    video_path: Path
    states: list[_TrackFeatures]
    n_seen: int
    times_s: np.ndarray
    started: float
    identity_switches: np.ndarray   # per track (JointTracker)
    overlap_iou: float              # boxes of two tracks overlapping more than this count as an overlap frame
    identity: list[dict[str, Any]]  # per track, the IDENTITY_COLUMNS (kitlib.faces.identity.identity_stats)


def _track_and_encode(tracks: list[Track], *, detector: FaceDetector, max_gap: int, follow: FollowSettings | None,
                      decode_batch: int, device: torch.device, frames_bar: tqdm, strategies: list[str],
                      assign: AssignSettings | None = None, detect_every: int = 1,
                      batches: Iterable[FrameBatch] | None = None, info: VideoInfo | None = None,
                      identity: FaceEmbedder | None = None, identity_method: str = "online",
                      **encode_args) -> _VideoPass:
    """Decode one video once (or read its ``batches``, decoded ahead with ``info``), detect, track all of
    its ``tracks`` jointly (``JointTracker``: no two take one face on a frame) and encode the face crops;
    the features stay in the returned states. With an ``identity`` embedder and a positional track,
    a first pass decodes, detects and embeds the whole video (``kitlib.faces.identity.plan_video``) and
    the second follows each track's person; else ``identity_method`` names the online rule in the report."""
    started = time.perf_counter()
    video_path = tracks[0].video_path
    info = info or probe(video_path)
    video_detector = detector.for_video(tracks[0].videoid)
    states = [_TrackFeatures(track=t, strategy=s) for t, s in zip(tracks, strategies)]
    frame_size = (info.width, info.height)
    plan = None
    if identity is not None and any(s in IDENTITY_STRATEGIES for s in strategies):
        settings = assign or AssignSettings()
        frames_bar.reset(total=info.n_frames)
        frames_bar.set_description(f"{tracks[0].videoid} identity")
        plan = plan_video(iter_frames(video_path, batch_size=decode_batch),
                          detect=lambda batch: _detect(video_detector, batch, detect_every), embedder=identity,
                          strategies=strategies, frame_size=frame_size,
                          usable=lambda faces: usable_faces(faces, min_rel_area=settings.min_rel_area),
                          online=lambda: JointTracker(frame_size=frame_size, strategies=strategies, settings=settings,
                                                      record_picks=True),
                          progress=frames_bar.update)
    joint = JointTracker(frame_size=frame_size, strategies=strategies, settings=assign, follow=follow,
                         record_picks=plan is not None)
    frames_bar.reset(total=info.n_frames)
    frames_bar.set_description(tracks[0].videoid)
    buffer: list[FrameBatch] = []
    times: list[np.ndarray] = []
    skipped: list[np.ndarray] = []
    n_seen = n_done = 0
    for batch in iter_frames(video_path, batch_size=decode_batch) if batches is None else batches:
        # found ahead by a decode worker (every frame), or now (every detect_every-th frame)
        owners = None
        if plan is not None:   # the first pass's detections, and whose face each one is
            if int(batch.index[-1]) > len(plan.detections):
                raise VideoError(video_path, f"decoded {int(batch.index[-1])} frames, {len(plan.detections)} in the "
                                             f"identity pass")
            detections = [plan.detections[i - 1] for i in batch.index]
            owners = [plan.owners[i - 1] for i in batch.index]
        else:
            detections = list(batch.detections) if batch.detections is not None else \
                _detect(video_detector, batch, detect_every)
        picks, followed, landmarks = joint.update(detections, batch.frames, owners)
        for i, state in enumerate(states):
            state.picks.append(picks[i])
            state.followed.append(followed[i])
            state.landmarks.append(landmarks[i])
        skipped.append(np.array([d is None for d in detections], bool))
        buffer.append(batch)
        times.append(batch.times_s)
        n_seen = int(batch.index[-1])
        n_ready = n_seen - max_gap  # boxes of frames up to here no longer depend on frames to come
        buffer = _process_ready(buffer, states, n_ready=n_ready, n_done=n_done, max_gap=max_gap, skipped=skipped,
                                device=device, **encode_args)
        n_done = max(n_done, n_ready)
        frames_bar.update(len(batch.index))
    if n_seen == 0:
        raise VideoError(video_path, "no frames could be decoded")
    _process_ready(buffer, states, n_ready=n_seen, n_done=n_done, max_gap=max_gap, skipped=skipped, device=device,
                   **encode_args)
    return _VideoPass(video_path=video_path, states=states, n_seen=n_seen, times_s=np.concatenate(times),
                      started=started, identity_switches=np.asarray(joint.identity_switches),
                      overlap_iou=joint.settings.overlap_iou,
                      identity=identity_stats(plan, joint, method=identity_method, strategies=strategies))


def _save_tracks(done: _VideoPass, store: FeatureStore) -> list[dict[str, Any]]:
    """Save the features of each track of one video pass (atomic per track); one report row per track."""
    rows = []
    n_seen, video_path, states = done.n_seen, done.video_path, done.states
    final = [FaceTrack(boxes=np.concatenate(st.boxes), status=np.concatenate(st.status),
                       landmarks=np.concatenate(st.landmarks)) for st in states]
    overlap = overlap_frames(final, min_iou=done.overlap_iou)
    for i, (state, track) in enumerate(zip(states, final)):
        by_scale = np.concatenate(state.by_scale)
        status = track.status
        mask = status != MISSING
        frame_features = by_scale.astype(np.float32).mean(axis=1)  # eq. 7; zeros where no face
        store.save(state.track.txtid, frame_index=np.arange(1, n_seen + 1), features=frame_features, mask=mask,
                   features_by_scale=by_scale, status=status.astype(np.uint8), boxes=track.boxes.astype(np.float32),
                   landmarks=track.landmarks.astype(np.float32), times_s=done.times_s.astype(np.float64))
        counts = np.bincount(status, minlength=INTERPOLATED + 1)
        found = bool(mask.any())
        if not found:
            log.warning("%s: no face of the %s person in any of the %d frames of %s; saved all-masked",
                        state.track.txtid, state.strategy, n_seen, video_path)
        if overlap[i]:
            log.warning("%s: its face box overlaps another track's of the same video on %d frames",
                        state.track.txtid, int(overlap[i]))
        if done.identity[i]["identity_warning"]:
            log.warning("%s: %s (reports/visual_extraction.csv, identity_warning)", state.track.txtid,
                        done.identity[i]["identity_warning"])
        rows.append(dict(txtid=state.track.txtid, videoid=state.track.videoid, video=str(video_path),
                         strategy=state.strategy, frames=n_seen, detected=int(counts[DETECTED]),
                         followed=int(counts[FOLLOWED]), bridged=int(counts[BRIDGED]),
                         interpolated=int(counts[INTERPOLATED]), missing=int(counts[MISSING]),
                         identity_switches=int(done.identity_switches[i]), overlap=int(overlap[i]),
                         **done.identity[i], status="ok" if found else "no face", seconds=round(time.perf_counter() - done.started, 2)))
    return rows


def _extract_video(tracks: list[Track], store: FeatureStore, **options) -> list[dict[str, Any]]:
    """Decode one video once and save the features of each of its ``tracks``; one report row per track."""
    return _save_tracks(_track_and_encode(tracks, **options), store)


def _videos_to_do(tracks: Sequence[Track], store: FeatureStore) -> tuple[dict[str, list[Track]], list[dict[str, Any]]]:
    """The tracks still to extract, grouped by video (in order), and the report rows of those already done."""
    by_video: dict[str, list[Track]] = defaultdict(list)
    for track in tracks:
        by_video[track.videoid].append(track)
    todo: dict[str, list[Track]] = {}
    rows: list[dict[str, Any]] = []
    for videoid, group in by_video.items():
        for t in group:
            if store.done(t.txtid):
                rows.append(dict(txtid=t.txtid, videoid=videoid, video=str(t.video_path),
                                 status="skipped (done)", seconds=0.0))
        left = [t for t in group if not store.done(t.txtid)]
        if left:
            todo[videoid] = left
    return todo, rows


def _error_rows(todo: list[Track], exc: BaseException, started: float) -> list[dict[str, Any]]:
    """One "error: ..." report row per track of a video that failed (logged); the run goes on."""
    reason = exc.reason if isinstance(exc, VideoError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, VideoError):
        log.warning("%s: %s", todo[0].video_path, reason)
    else:
        log.error("%s failed", todo[0].video_path, exc_info=exc)
    return [dict(txtid=t.txtid, videoid=t.videoid, video=str(t.video_path), status=f"error: {reason}",
                 seconds=round(time.perf_counter() - started, 2)) for t in todo]


def _visual_report(rows: list[dict[str, Any]], store: FeatureStore, *, manifest: dict[str, Any],
                   settings: dict[str, Any]) -> pd.DataFrame:
    """The run report (``REPORT_COLUMNS``), its log line, and the store manifest (``manifest`` + ``settings``)."""
    report = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    for col in ("frames", "detected", "followed", "bridged", "interpolated", "missing", "identity_switches", "overlap",
                "person", "by_identity", "by_position", "switches_avoided", "frames_changed"):
        report[col] = report[col].astype("Int64")
    n_ok = int((report["status"] == "ok").sum())
    n_noface = int((report["status"] == "no face").sum())
    n_err = int(report["status"].str.startswith("error").sum())
    skipped = int((report["status"] == "skipped (done)").sum())
    log.info("visual features: %d tracks saved (%d of them without any face), %d skipped (done), %d failed; "
             "%d frames, %d with a face", n_ok + n_noface, n_noface, skipped, n_err, int(report["frames"].sum()),
             int((report["detected"] + report["followed"] + report["bridged"] + report["interpolated"]).sum()))
    if report["by_identity"].sum() > 0:
        log.info("face identity: %d picks of the track's person decided over the whole video, %d by position; "
                 "%d person switches of the online rule avoided; %d tracks with persons too close to tell apart",
                 int(report["by_identity"].sum()), int(report["by_position"].sum()),
                 int(report["switches_avoided"].sum()), int((report["identity_warning"].fillna("") != "").sum()))
    store.write_manifest({**manifest, **settings})
    return report


def _visual_settings(*, crop_scales: Sequence[float], image_size: int, detector: FaceDetector, dim: int,
                     detect_every: int, default_strategy: str, assign: AssignSettings | None, max_gap: int,
                     follow: FollowSettings | None, mean: Sequence[float], std: Sequence[float],
                     identity: str = "online") -> dict[str, Any]:
    """What the store manifest records about how the features were made (both extractors)."""
    return {"crop_scales": list(crop_scales), "image_size": image_size,
            "detector": getattr(detector, "name", type(detector).__name__), "feature_dim": dim,
            "detector_settings": detector_record(detector), "detect_every": detect_every,
            "default_strategy": default_strategy,
            "assign": vars(assign) if assign is not None else vars(AssignSettings()),
            "max_gap": max_gap, "follow": None if follow is None else vars(follow), "mean": list(mean), "std": list(std),
            "identity": identity}


def _strategies(todo: list[Track], selection: Mapping[str, str] | None, default_strategy: str) -> list[str]:
    """Which face is each track's person (``kitlib.faces.selection``), in ``todo``'s order."""
    return strategies_of(todo, selection or {}, default=default_strategy)


def extract_visual_features(tracks: Sequence[Track], store: FeatureStore, backbone: torch.nn.Module, *,
                            detector: FaceDetector, crop_scales: Sequence[float] = (0.9, 1.2, 1.5),
                            image_size: int, mean: Sequence[float], std: Sequence[float], batch_size: int = 64,
                            max_gap: int = 15, follow: FollowSettings | None = None, device: torch.device,
                            dtype: torch.dtype = torch.float32, decode_batch: int = 128,
                            selection: Mapping[str, str] | None = None, default_strategy: str = "largest",
                            assign: AssignSettings | None = None, detect_every: int = 1,
                            identity: FaceEmbedder | None = None, identity_method: str = "online",
                            manifest: dict[str, Any]) -> pd.DataFrame:
    """Multi-scale face features (eqs. 6-7) for every track, saved in ``store``; returns the run report.

    Tracks of one video (``_left`` / ``_right``) share one decode and one detection pass. Per
    track the store gets ``features`` (N, D) = mean over scales, ``mask`` (N,) face present
    (detected, followed or bridged), ``features_by_scale`` (N, S, D) float16, ``status`` (N,) uint8 (see
    ``kitlib.faces``), ``boxes`` (N, 4) float32, ``landmarks`` (N, 5, 2) float32 (the picked detection's
    5 landmarks, ``kitlib.faces.LANDMARK_NAMES`` order, on DETECTED frames; NaN elsewhere and for
    detectors without landmarks) and ``times_s`` (N,) float64; frames without a face
    have zero features. ``batch_size`` counts crops per backbone forward, ``decode_batch`` frames
    per decode/detect step. ``follow`` (None: off) follows faces the detector loses at the frame
    border (``kitlib.faces.FaceTracker``). ``selection`` (txtid -> strategy, ``kitlib.faces.selection``)
    says which face is each track's person (unlisted: the ``_left`` / ``_right`` side, else
    ``default_strategy``); all tracks of a video are assigned jointly (``assign``). The detector runs
    on every ``detect_every``-th frame; frames between are INTERPOLATED (bridged within ``max_gap``).
    ``identity`` (``kitlib.faces.identity``; None: the online rule, named ``identity_method`` in the
    report): positional tracks follow the person decided over the whole video (a first pass per video).
    Tracks already in the store are skipped (resume). A video that fails
    (undecodable, or any other error) gets "error: ..." rows and the run goes on; a track whose
    person is never found is saved all-masked with status "no face". Report columns:
    ``REPORT_COLUMNS``. The store manifest (``manifest`` + crop settings, detector, feature dim)
    is written at the end.
    """
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    encode_args = _encoder_args(backbone, crop_scales=crop_scales, image_size=image_size, mean=mean, std=std,
                                batch_size=batch_size, device=device, dtype=dtype)
    dim = encode_args["dim"]

    by_video, rows = _videos_to_do(tracks, store)
    log.info("visual features: %d tracks in %d videos to do, scales %s, image %d px, detector %s, device %s",
             sum(map(len, by_video.values())), len(by_video), list(crop_scales), image_size,
             getattr(detector, "name", detector), device)
    frames_bar = tqdm(desc="frames", unit="frame", leave=False, position=1)
    with torch.inference_mode():
        for videoid, todo in tqdm(by_video.items(), desc="videos", unit="video", position=0):
            started = time.perf_counter()
            try:
                strategies = _strategies(todo, selection, default_strategy)
                rows.extend(_extract_video(todo, store, detector=detector, max_gap=max_gap, follow=follow,
                                           decode_batch=decode_batch, device=device, frames_bar=frames_bar,
                                           strategies=strategies, assign=assign, detect_every=detect_every,
                                           identity=identity, identity_method=identity_method, **encode_args))
            except Exception as exc:  # one bad video never stops the run; it is reported
                if disk_full(exc):  # a full disk fails every later video too: stop at the first
                    raise
                rows.extend(_error_rows(todo, exc, started))
    frames_bar.close()
    return _visual_report(rows, store, manifest=manifest, settings=_visual_settings(
        crop_scales=crop_scales, image_size=image_size, detector=detector, dim=dim, detect_every=detect_every,
        default_strategy=default_strategy, assign=assign, max_gap=max_gap, follow=follow, mean=mean, std=std,
        identity=identity.name if identity is not None else identity_method))


def _read_official_crops(folder: Path, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The crops ``<folder>/<number:05d>.jpg`` that exist: (images (k, H, W, 3) uint8, their numbers, problems).

    An image that cannot be decoded, or whose size differs from the track's first readable
    crop, is left out and described in ``problems`` (file: reason); the track goes on.
    """
    from kitlib.visual.images import load_rgb

    images, kept, problems = [], [], []
    for number in numbers:  # one JPEG decode per frame; the backbone pass dominates
        path = folder / f"{int(number):05d}.jpg"
        try:
            image = np.asarray(load_rgb(path))
        except ValueError as err:
            problems.append(f"{path}: {err.__cause__ or err}")
            continue
        if images and image.shape != images[0].shape:
            problems.append(f"{path}: size {image.shape[1]}x{image.shape[0]}, the track's crops are "
                            f"{images[0].shape[1]}x{images[0].shape[0]}")
            continue
        images.append(image)
        kept.append(int(number))
    stacked = np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
    return stacked, np.asarray(kept, np.int64), problems


def extract_official_crop_features(tracks: Sequence[Track], store: FeatureStore, backbone: torch.nn.Module, *,
                                   crops_root: Path, n_frames: Mapping[str, int], image_size: int,
                                   mean: Sequence[float], std: Sequence[float], batch_size: int = 64,
                                   device: torch.device, dtype: torch.dtype = torch.float32,
                                   frame_stride: int = 1, chunk_frames: int = 512,
                                   manifest: dict[str, Any]) -> pd.DataFrame:
    """Backbone features of the organisers' face crops ``<crops_root>/<txtid>/<00001>.jpg`` (Table 1, "official").

    The release's ``cropped_aligned`` layout: one folder per annotation file (``_left`` /
    ``_right`` included), 5-digit 1-based frame numbers, no file where no face was found. Each
    image is resized to ``image_size`` and normalised exactly as the re-crops are (``_encode`` with
    one scale of 1.0 around the whole image). Per track the store gets ``features`` (N, D), zeros
    where there is no usable image, and ``mask`` (N,) = the image exists and could be read, for
    frames 1..``n_frames[txtid]`` (the decoded video length, so labels align). Unreadable images
    are logged and listed in the report's ``problems``; ``frame_stride`` > 1 encodes only frames
    1, 1 + stride, ... (the others stay masked: a cheaper Table-1 column on a slow machine); a missing track folder gives an
    "error: ..." row and no file. Tracks already in the store are skipped (resume). Report
    columns: ``OFFICIAL_REPORT_COLUMNS``. The store manifest is written at the end.
    """
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    encode_args = _encoder_args(backbone, crop_scales=(1.0,), image_size=image_size, mean=mean, std=std,
                                batch_size=batch_size, device=device, dtype=dtype)
    dim = encode_args["dim"]
    crops_root = Path(crops_root)
    rows: list[dict[str, Any]] = []
    if frame_stride < 1:
        raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
    log.info("official face crops: %d tracks from %s, every %d frame(s), image %d px, device %s", len(tracks),
             crops_root, frame_stride, image_size, device)
    with torch.inference_mode():
        for track in tqdm(tracks, desc="official crops", unit="track"):
            started = time.perf_counter()
            if store.done(track.txtid):
                rows.append(dict(txtid=track.txtid, status="skipped (done)", seconds=0.0))
                continue
            folder = crops_root / track.txtid
            n = int(n_frames.get(track.txtid, 0))
            if not folder.is_dir() or n <= 0:
                reason = f"no crop folder {folder}" if not folder.is_dir() else "video length unknown (undecodable?)"
                log.warning("%s: %s", track.txtid, reason)
                rows.append(dict(txtid=track.txtid, frames=n, status=f"error: {reason}", seconds=0.0))
                continue
            present = {e.name for e in os.scandir(folder)}
            numbers = np.arange(1, n + 1)
            listed = numbers[np.fromiter((f"{i:05d}.jpg" in present for i in numbers), bool, count=n)]
            images_found = len(listed)
            listed = listed[(listed - 1) % frame_stride == 0]
            features = np.zeros((n, dim), np.float16)
            mask = np.zeros(n, bool)
            problems: list[str] = []
            for start in range(0, len(listed), chunk_frames):
                images, kept, bad = _read_official_crops(folder, listed[start:start + chunk_frames])
                problems += bad
                if not len(kept):
                    continue
                frames_t = torch.from_numpy(images).to(device).permute(0, 3, 1, 2)
                whole = np.tile(np.array([[0, 0, images.shape[2], images.shape[1]]], np.float32), (len(kept), 1))
                features[kept - 1] = _encode(frames_t, whole, **encode_args)[:, 0]
                mask[kept - 1] = True
            for problem in problems:
                log.warning("unreadable official face crop %s", problem)
            store.save(track.txtid, frame_index=numbers, features=features, mask=mask)
            rows.append(dict(txtid=track.txtid, frames=n, images=images_found, unreadable=len(problems),
                             missing=int(n - mask.sum()), status="ok" if mask.any() else "no face",
                             problems="; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""),
                             seconds=round(time.perf_counter() - started, 2)))
    report = pd.DataFrame(rows, columns=list(OFFICIAL_REPORT_COLUMNS))
    for col in ("frames", "images", "unreadable", "missing"):
        report[col] = report[col].astype("Int64")
    log.info("official face crops: %d tracks saved, %d skipped (done), %d failed; %d frames, %d with a crop, "
             "%d unreadable", int(report["status"].isin(["ok", "no face"]).sum()),
             int((report["status"] == "skipped (done)").sum()), int(report["status"].str.startswith("error").sum()),
             int(report["frames"].sum()), int((report["frames"] - report["missing"]).sum()),
             int(report["unreadable"].sum()))
    store.write_manifest({**manifest, "crops_root": str(crops_root), "frame_stride": frame_stride,
                          "image_size": image_size, "feature_dim": dim,
                          "mean": list(mean), "std": list(std)})
    return report


