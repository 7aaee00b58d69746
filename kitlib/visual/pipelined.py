"""Pipelined visual extraction: the serial extractor's steps (seed 000 sec. 3.2.1, eqs. 6-7) overlapped.

``kitlib.visual.extract`` runs decode -> detect -> track -> crop -> backbone -> write strictly in
turn, with a pageable copy of every decoded batch and a host synchronisation after every backbone
batch, so on a GPU box the GPU waits for the CPU most of the time. This module keeps the same
per-video code (``extract._track_and_encode``: the registry's detector, the tracker, ``bridge_gaps``,
``crop_faces``; ``extract._save_tracks``: the same files, atomic per track) and overlaps the stages:

- **decode** (and, with ``detector_factory``, face detection) in ``decode_workers`` threads, one video
  each, running ahead of the GPU on the next videos (decord and OpenCV release the GIL while they
  work); tracking stays in order on the main thread; each worker hands over batches through a queue
  of at most ``queue_batches`` batches, so host memory stays flat on a 2-hour video; on CUDA, with
  ``pin_decoded``, the batches are copied into pinned (page-locked) host memory there (off by default:
  measured to cut parallel decode threefold on an H200 box);
- **upload** of each batch to the GPU as soon as it is taken (``non_blocking`` from pinned memory),
  overlapping with detection and tracking on the CPU; the crops are cut on the GPU from these
  full-resolution frames;
- **backbone** in bf16 weights (no per-op autocast casts; timm's ViT attention is SDPA), optionally
  ``torch.compile``; the features stay on the GPU, so no batch waits for the host;
- **write** in a background thread: one device-to-host copy per video into pinned memory, then the
  writer waits for it and saves the tracks while the next video runs. At most two videos wait.

On the CPU the same code runs (no pinning, no upload); decode and writing still overlap the model.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kitlib.data import Track
from kitlib.faces import FaceDetector, FollowSettings, crop_faces, normalize
from kitlib.faces.assign import AssignSettings
from kitlib.faces.identity import FaceEmbedder
from kitlib.faces.video import FrameBatch, VideoInfo, iter_frames, probe
from kitlib.progress import tqdm
from kitlib.store import FeatureStore, disk_full
from kitlib.visual.extract import (_encoder_args, _error_rows, _save_tracks, _strategies, _track_and_encode,
                                   _VideoPass, _videos_to_do, _visual_report, _visual_settings)

log = logging.getLogger(__name__)

_END = object()  # end of a video's batches


@dataclass
class StageTimes:
    """Where the main thread spent its time (seconds), for the benchmarks; filled when passed in."""

    wait_decode: float = 0.0    # waiting for a decoded batch (decode is the bottleneck when large)
    upload: float = 0.0         # host -> device copies issued
    track_encode: float = 0.0   # detection, tracking, crops and backbone launches (the GPU runs behind)
    wait_writer: float = 0.0    # waiting for the writer (a full write queue)
    frames: int = 0
    videos: int = 0


class _Decoder:
    """Decodes one video on a worker thread into a bounded queue: first its ``VideoInfo``, then its
    batches (copied into pinned memory when ``pin``), then ``_END``; an error is handed over in turn."""

    def __init__(self, path: Path, *, decode_batch: int, max_batches: int, pin: bool,
                 detector: Callable[[], FaceDetector] | None = None):
        self.path = path
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, max_batches))
        self.cancel = threading.Event()  # set by the consumer: the worker stops at its next batch
        self._decode_batch, self._pin, self._detector = decode_batch, pin, detector

    def _put(self, item: Any) -> bool:
        while not self.cancel.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            if not self._put(probe(self.path)):
                return
            detector = self._detector() if self._detector is not None else None
            for batch in iter_frames(self.path, batch_size=self._decode_batch):
                if detector is not None:  # detection ahead, in this worker: parallel across videos
                    with torch.inference_mode():  # thread-local: a CNN detector records no graph here either
                        batch = replace(batch, detections=detector.detect(batch.frames, frame_index=batch.index))
                if self._pin:  # page-locked, so the upload runs asynchronously on the copy engine
                    pinned = torch.from_numpy(batch.frames).pin_memory()
                    batch = replace(batch, frames=pinned.numpy(), pixels=pinned)
                if not self._put(batch):
                    return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it in order
            self._put(exc)

    def _get(self) -> Any:
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def info(self) -> VideoInfo:
        return self._get()

    def batches(self, device: torch.device, times: StageTimes) -> Iterator[FrameBatch]:
        """The video's batches in order, each uploaded to ``device`` as it is taken (``FrameBatch.pixels``)."""
        while True:
            waited = time.perf_counter()
            item = self._get()
            times.wait_decode += time.perf_counter() - waited
            if item is _END:
                return
            if device.type == "cuda":
                started = time.perf_counter()
                host = item.pixels if item.pixels is not None else torch.from_numpy(item.frames)
                item = replace(item, pixels=host.to(device, non_blocking=True).permute(0, 3, 1, 2))
                times.upload += time.perf_counter() - started
            else:
                item = replace(item, pixels=None)
            times.frames += len(item.index)
            yield item


def _encode_on_device(frames: torch.Tensor, boxes: np.ndarray, *, backbone: torch.nn.Module,
                      crop_scales: Sequence[float], image_size: int, mean: Sequence[float], std: Sequence[float],
                      batch_size: int, dim: int, autocast, input_dtype: torch.dtype) -> torch.Tensor:
    """Features (n, S, D) float16 on the frames' device of the faces in ``frames`` (n, 3, H, W) at
    ``boxes`` (zeros where no box): ``extract._encode`` without its per-batch copy to the host."""
    n, n_scales = len(frames), len(crop_scales)
    out = torch.zeros((n, n_scales, dim), dtype=torch.float16, device=frames.device)
    present = np.flatnonzero(np.isfinite(boxes).all(axis=1))
    if not len(present):
        return out
    rows_all = torch.from_numpy(present).to(frames.device, non_blocking=True)
    boxes_all = torch.from_numpy(np.ascontiguousarray(boxes[present])).to(frames.device, non_blocking=True)
    frames_per_pass = max(1, batch_size // n_scales)  # batch_size counts crops (images) per forward
    for start in range(0, len(present), frames_per_pass):
        rows = rows_all[start:start + frames_per_pass]
        crops = crop_faces(frames[rows], boxes_all[start:start + frames_per_pass], scales=crop_scales,
                           out_size=image_size)
        images = normalize(crops, mean, std).flatten(0, 1).to(input_dtype)  # (k*S, 3, size, size)
        with autocast():
            feats = backbone(images)
        out[rows] = feats.reshape(len(rows), n_scales, dim).to(torch.float16)
    return out


def _to_host(done: _VideoPass, device: torch.device) -> torch.cuda.Event | None:
    """Start one device-to-host copy per track of the video's features (pinned on CUDA); the event to wait on."""
    for state in done.states:
        on_device = torch.cat(state.by_scale) if state.by_scale else torch.zeros(0)
        if device.type == "cuda":
            host = torch.empty(on_device.shape, dtype=on_device.dtype, pin_memory=True)
            host.copy_(on_device, non_blocking=True)
        else:
            host = on_device
        state.by_scale = [host]
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()
    return event


def _write(done: _VideoPass, store: FeatureStore, event: torch.cuda.Event | None) -> list[dict[str, Any]]:
    """Writer thread: wait for the video's features to reach the host, then save them (``extract._save_tracks``)."""
    if event is not None:
        event.synchronize()
    for state in done.states:
        state.by_scale = [t.numpy() for t in state.by_scale]
    return _save_tracks(done, store)


def prepare_backbone(backbone: torch.nn.Module, *, device: torch.device, dtype: torch.dtype, weights_bf16: bool,
                     compile: bool) -> tuple[torch.nn.Module, torch.dtype, bool]:
    """The backbone on ``device`` for inference: (model, input dtype, autocast wanted).

    On CUDA with a half ``dtype`` and ``weights_bf16`` the weights are cast (in place) to ``dtype`` and
    the inputs follow, which skips autocast's per-op casts; ``compile`` wraps it in ``torch.compile``.
    """
    backbone = backbone.to(device).eval()
    half = dtype in (torch.bfloat16, torch.float16)   # the caller chose the device path (CUDA; the CPU in tests)
    input_dtype, use_autocast = torch.float32, half
    if half and weights_bf16:
        backbone = backbone.to(dtype)
        input_dtype, use_autocast = dtype, False
    if compile:
        backbone = torch.compile(backbone)
    return backbone, input_dtype, use_autocast


def extract_visual_features_pipelined(
        tracks: Sequence[Track], store: FeatureStore, backbone: torch.nn.Module, *, detector: FaceDetector,
        crop_scales: Sequence[float] = (0.9, 1.2, 1.5), image_size: int, mean: Sequence[float], std: Sequence[float],
        batch_size: int = 256, max_gap: int = 15, follow: FollowSettings | None = None, device: torch.device,
        dtype: torch.dtype = torch.float32, decode_batch: int = 128, manifest: dict[str, Any],
        decode_workers: int | None = None, queue_batches: int = 2, compile: bool = False, weights_bf16: bool = True,
        pin_decoded: bool = False, detector_factory: Callable[[], FaceDetector] | None = None,
        selection: Mapping[str, str] | None = None, default_strategy: str = "largest",
        assign: AssignSettings | None = None, detect_every: int = 1,
        identity: FaceEmbedder | None = None, identity_method: str = "online",
        stage_times: StageTimes | None = None) -> pd.DataFrame:
    """``extract.extract_visual_features`` with its stages overlapped (module docstring): the same
    arguments, files, report and manifest, plus ``decode_workers`` (videos decoded ahead in parallel;
    None = min(cores, 8)), ``queue_batches`` (decoded batches each worker may hold), ``compile``,
    ``weights_bf16`` (see ``prepare_backbone``), ``pin_decoded`` (CUDA: the decode workers copy each batch into
    pinned memory for an asynchronous upload; off by default: on an H200 box, 8 threads decoding 1080p fell
    from 577 to 187 frames/s with it, ``benchmarks/gpu_profile.py``), ``detector_factory`` (builds a detector like ``detector``:
    each decode worker then detects the faces of its own video ahead, with its own detector, so a CPU
    detector such as Haar scales with the cores; None: detection in the main thread) and
    ``stage_times`` (filled with where the time went).
    """
    device = torch.device(device)
    times = stage_times if stage_times is not None else StageTimes()
    encode_args = _encoder_args(backbone.to(device).eval(), crop_scales=crop_scales, image_size=image_size,
                                mean=mean, std=std, batch_size=batch_size, device=device, dtype=dtype)
    model, input_dtype, use_autocast = prepare_backbone(backbone, device=device, dtype=dtype,
                                                        weights_bf16=weights_bf16, compile=compile)
    encode_args.update(backbone=model, autocast=encode_args["autocast"] if use_autocast else nullcontext)
    dim = encode_args["dim"]
    workers = min(os.cpu_count() or 1, 8) if decode_workers is None else max(1, int(decode_workers))

    by_video, rows = _videos_to_do(tracks, store)
    videos = list(by_video.items())
    log.info("visual features (pipelined): %d tracks in %d videos to do, %d decode workers x %d batches of %d "
             "frames, scales %s, image %d px, detector %s, device %s, weights %s%s",
             sum(len(g) for _, g in videos), len(videos), workers, queue_batches, decode_batch, list(crop_scales),
             image_size, getattr(detector, "name", detector), device, input_dtype, ", compiled" if compile else "")
    decoders: deque[tuple[str, list[Track], _Decoder]] = deque()
    pending: deque[tuple[list[Track], Future]] = deque()
    frames_bar = tqdm(desc="frames", unit="frame", leave=False, position=1)
    next_video = 0
    local = threading.local()  # one detector per decode worker thread (detectors need not be thread-safe)

    def video_detector(videoid: str) -> Callable[[], FaceDetector]:
        def build() -> FaceDetector:
            if not hasattr(local, "detector"):
                local.detector = detector_factory()
            return local.detector.for_video(videoid)
        return build

    def collect(block_until: int) -> None:  # report rows of finished writes; wait while more than block_until
        while pending and (len(pending) > block_until or pending[0][1].done()):
            todo, future = pending.popleft()
            waited = time.perf_counter()
            try:
                rows.extend(future.result())
            except Exception as exc:  # a failed write is that video's error, as in the serial loop
                if disk_full(exc):  # a full disk fails every later video too: stop at the first
                    raise
                rows.extend(_error_rows(todo, exc, waited))
            times.wait_writer += time.perf_counter() - waited

    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as decode_pool, \
            ThreadPoolExecutor(1, thread_name_prefix="write") as writer, torch.inference_mode():
        try:
            for _ in tqdm(range(len(videos)), desc="videos", unit="video", position=0):
                while next_video < len(videos) and len(decoders) < workers:  # keep the decode workers busy
                    videoid, todo = videos[next_video]
                    decoder = _Decoder(todo[0].video_path, decode_batch=decode_batch, max_batches=queue_batches,
                                       pin=pin_decoded and device.type == "cuda",
                                       detector=video_detector(videoid) if detector_factory is not None else None)
                    decode_pool.submit(decoder.run)
                    decoders.append((videoid, todo, decoder))
                    next_video += 1
                videoid, todo, decoder = decoders.popleft()
                started = time.perf_counter()
                try:
                    info = decoder.info()
                    done = _track_and_encode(todo, detector=detector, max_gap=max_gap, follow=follow,
                                             decode_batch=decode_batch, device=device, frames_bar=frames_bar,
                                             strategies=_strategies(todo, selection, default_strategy),
                                             assign=assign, detect_every=detect_every,
                                             identity=identity, identity_method=identity_method,
                                             batches=decoder.batches(device, times), info=info,
                                             encode=_encode_on_device, input_dtype=input_dtype, **encode_args)
                    event = _to_host(done, device)
                except Exception as exc:  # one bad video never stops the run; it is reported
                    if disk_full(exc):  # a full disk fails every later video too: stop at the first
                        raise
                    decoder.cancel.set()
                    rows.extend(_error_rows(todo, exc, started))
                    continue
                finally:
                    times.track_encode += time.perf_counter() - started
                times.videos += 1
                pending.append((todo, writer.submit(_write, done, store, event)))
                collect(block_until=2)  # at most two videos' features wait for the writer
            collect(block_until=0)
        finally:  # an interrupted run: the decode workers stop at their next batch
            for _, _, decoder in decoders:
                decoder.cancel.set()
    frames_bar.close()
    times.track_encode -= times.wait_decode + times.upload
    return _visual_report(rows, store, manifest=manifest, settings=_visual_settings(
        crop_scales=crop_scales, image_size=image_size, detector=detector, dim=dim, detect_every=detect_every,
        default_strategy=default_strategy, assign=assign, max_gap=max_gap, follow=follow, mean=mean, std=std,
        identity=identity.name if identity is not None else identity_method))
