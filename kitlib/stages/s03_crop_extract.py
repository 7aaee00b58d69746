"""Notebook 03: faces, multi-scale crops and frame features (seed 000 sec. 3.2.1); Table 1.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kitlib import data
from kitlib.config import Config, notebook_config
from kitlib.stages.common import (data_problems_note, amp_dtype, data_index, device, extraction_report, feature_store, frame_labels,
                                  probe_table, read_report, report, start, video_table)
from kitlib.stages.s02_stage1_train import (adapted_backbone, main_state, pretrained_backbone, state_label, state_path,
                                            table1_states)
from kitlib.store import FeatureStore

log = logging.getLogger(__name__)

# what the notebook calls: the shared first steps, then this stage's own functions
__all__ = ['notebook_config', 'start', 'data_index', 'data_problems_note', 'frame_labels', 'read_report', 'follow_settings',
           'face_detector', 'face_selection', 'face_identity',
           'extract_visual', 'export_boxes', 'state_store', 'official_crop_store', 'crop_scale_probe',
           'OFFICIAL_CROP']


def follow_settings(cfg: Config):
    """``faces.follow_*`` as the tracker's ``FollowSettings``; None when following is off."""
    from kitlib.faces import FollowSettings

    f = cfg.faces
    if f.follow_max_frames <= 0:
        return None
    return FollowSettings(max_frames=f.follow_max_frames, min_visible=f.follow_min_visible,
                          min_similarity=f.follow_min_similarity)


def face_detector(cfg: Config, dev: torch.device | None = None):
    """The ``faces.detector`` backend built from ``faces.*`` (weights checked here, before any video is decoded)."""
    from kitlib.faces import build_detector

    f = cfg.faces
    weights = cfg.path(f.detector_weights) if f.detector_weights else None
    dev = dev or device(cfg)
    if f.detector == "boxes":
        if not f.boxes_file:
            raise ValueError("faces.detector is 'boxes' but faces.boxes_file is null")
        options = {"path": cfg.path(f.boxes_file)}
    elif f.detector in ("centerface", "scrfd"):
        options = {"weights": weights, "device": dev, "max_side": f.detect_max_side}
    elif f.detector == "face-alignment":
        options = {"weights_dir": weights, "device": dev, "max_side": f.detect_max_side}
    else:
        options = {"max_side": f.detect_max_side}
    return build_detector(f.detector, **{**options, **f.detector_options})


def face_selection(cfg: Config) -> dict[str, str]:
    """``faces.selection`` (txtid -> strategy); empty when null (every track: its side or ``faces.default_strategy``)."""
    from kitlib.faces.selection import check_strategy, read_selection

    check_strategy(cfg.faces.default_strategy)
    if cfg.faces.selection is None:
        return {}
    return read_selection(cfg.path(cfg.faces.selection))


def face_identity(cfg: Config, dev: torch.device | None = None):
    """``faces.identity`` as (embedder or None, the name the report gives to what decided): ArcFace from
    ``faces.identity_weights`` (null: None, the online rule, "online (no arcface weights)"), the
    ``colour-texture`` fallback, or ``online``. Missing weights fail here, before any video is decoded."""
    from kitlib.faces.identity import identity_method

    f = cfg.faces
    weights = cfg.path(f.identity_weights) if f.identity_weights else None
    embedder = _embedder(f.identity, weights, str(dev or device(cfg)))
    return embedder, identity_method(embedder, f.identity)


@functools.cache
def _embedder(name: str, weights: Path | None, dev: str):
    """One embedder per process for every extraction of the stage (Table 1's states, the official crops):
    the weights load once, and "arcface has no weights" is said once."""
    from kitlib.faces.identity import build_embedder

    return build_embedder(name, weights=weights, device=dev)


def _face_args(cfg: Config) -> dict:
    """The face-tracking keyword arguments of ``extract_visual_features`` from ``faces.*``."""
    if cfg.faces.detect_every < 1:
        raise ValueError(f"faces.detect_every must be >= 1, got {cfg.faces.detect_every}")
    # crop_centre_fraction: the authors save s·max(w, h) crops, then Resize(256) + CenterCrop(224)
    scales = [s * cfg.faces.crop_centre_fraction for s in cfg.faces.crop_scales]
    embedder, method = face_identity(cfg)
    return dict(crop_scales=scales, max_gap=cfg.faces.max_gap, follow=follow_settings(cfg),
                decode_batch=cfg.faces.decode_batch, selection=face_selection(cfg),
                default_strategy=cfg.faces.default_strategy, identity=embedder, identity_method=method)


def extract_visual(cfg: Config, index: data.DataIndex, *, tracks: list[data.Track] | None = None,
                   rank: int | None = None, dev: torch.device | None = None) -> pd.DataFrame:
    """Faces -> multi-scale crops -> backbone features for every track (resumable).

    ``tracks`` / ``rank`` / ``dev``: one shard of a sharded extraction (``kitlib.tools.distributed``):
    only these tracks, on this device, with the rank's own manifest and report (merged later).
    """
    from kitlib.visual.backbones import input_mean_std
    from kitlib.visual.extract import extract_visual_features
    from kitlib.visual.pipelined import extract_visual_features_pipelined

    v = cfg.visual
    dev = dev or device(cfg)
    extractors = {"serial": (extract_visual_features, {}),
                  "pipelined": (extract_visual_features_pipelined,
                                dict(decode_workers=v.decode_workers, queue_batches=v.queue_batches, compile=v.compile,
                                     weights_bf16=v.weights_bf16, pin_decoded=v.pin_decoded,
                                     detector_factory=(lambda: face_detector(cfg, dev)) if v.detect_in_workers else None))}
    if v.extractor not in extractors:
        raise ValueError(f"visual.extractor: {v.extractor!r} is not one of {sorted(extractors)}")
    extract, extractor_options = extractors[v.extractor]
    detector = face_detector(cfg, dev)   # first: missing weights fail before any decoding or training
    backbone, record = adapted_backbone(cfg)
    mean, std = input_mean_std(backbone)
    table = extract(
        index.tracks if tracks is None else tracks, feature_store(cfg, "visual", rank=rank), backbone,
        detector=detector, image_size=cfg.stage1.image_size, mean=mean, std=std, batch_size=cfg.visual.batch_size,
        device=dev, dtype=amp_dtype(cfg.visual.amp, dev, on_cpu=cfg.run.amp_on_cpu) or torch.float32, detect_every=cfg.faces.detect_every,
        manifest={"backbone": record, "params_digest": cfg.digest()}, **_face_args(cfg), **extractor_options)
    return extraction_report(cfg, "visual_extraction" + ("" if rank is None else f".rank{rank:05d}"), table)


def export_boxes(cfg: Config) -> Path:
    """The faces this run detected, as a precomputed-boxes CSV (``faces.detector: boxes``) for re-extraction,
    with their landmarks (``lx1 .. ly5``) where the features file has them."""
    from kitlib.faces import DETECTED, LANDMARK_COLUMNS
    from kitlib.store import write_text_atomic

    store = feature_store(cfg, "visual")
    path = store.root / "boxes.csv"
    if path.is_file():
        return path
    parts = []
    for txtid in store.keys():
        entry = store.load(txtid)
        hit = entry["status"] == DETECTED
        box = entry["boxes"][hit]
        columns = {"videoid": data.videoid_of(txtid)[0], "frame": entry["frame_index"][hit],
                   "x1": box[:, 0], "y1": box[:, 1], "x2": box[:, 2], "y2": box[:, 3], "score": 1.0}
        if "landmarks" in entry:   # features written before landmarks were carried have none
            marks = entry["landmarks"][hit].reshape(-1, len(LANDMARK_COLUMNS))
            columns |= {name: marks[:, k] for k, name in enumerate(LANDMARK_COLUMNS)}
        parts.append(pd.DataFrame(columns))
    table = pd.concat(parts, ignore_index=True).drop_duplicates()
    write_text_atomic(path, table.to_csv(index=False))
    return path


OFFICIAL_CROP = "official crop"   # Table 1's first column: the organisers' aligned face crops


def _state_backbone(cfg: Config, state: str) -> tuple[torch.nn.Module, dict] | None:
    """The backbone of a Table-1 state and its record; None (logged) when it has not been trained."""
    from kitlib.visual.backbones import checkpoint_hash, load_backbone

    if state == main_state(cfg):
        return adapted_backbone(cfg)
    if state == "pretrained":
        return pretrained_backbone(cfg).to(device(cfg)).eval(), {"state": state, "weights": cfg.stage1.weights}
    path = state_path(cfg, state)
    if not path.is_file():
        log.warning("Table 1: no backbone for state %s (%s); run 02_stage1_train", state, path)
        return None
    backbone, _ = load_backbone(path, device=device(cfg))
    return backbone.eval(), {"state": state, "checkpoint": str(path), "checkpoint_hash": checkpoint_hash(path)}


def _table1_tracks(index: data.DataIndex) -> list[data.Track]:
    return [t for t in index.tracks if t.split in ("Train_Set", "Validation_Set")]


def state_store(cfg: Config, index: data.DataIndex, state: str) -> FeatureStore | None:
    """Visual features of a Table-1 state for Train+Validation (extracted with this run's boxes); None if absent."""
    from kitlib.faces import build_detector
    from kitlib.visual.backbones import input_mean_std
    from kitlib.visual.extract import extract_visual_features

    if state == main_state(cfg):
        return feature_store(cfg, "visual")
    loaded = _state_backbone(cfg, state)
    if loaded is None:
        return None
    (backbone, record), dev = loaded, device(cfg)
    mean, std = input_mean_std(backbone)
    store = feature_store(cfg, f"visual_{state}")
    # the detections this run found, tracked again with the same settings: the same boxes, followed frames included
    table = extract_visual_features(
        _table1_tracks(index), store, backbone, detector=build_detector("boxes", path=export_boxes(cfg)),
        image_size=cfg.stage1.image_size, mean=mean, std=std, batch_size=cfg.visual.batch_size, device=dev,
        dtype=amp_dtype(cfg.visual.amp, dev, on_cpu=cfg.run.amp_on_cpu) or torch.float32, detect_every=cfg.faces.detect_every,
        manifest={"backbone": record, "params_digest": cfg.digest()}, **_face_args(cfg))
    report(cfg, f"visual_extraction_{state}", table)
    return store


def official_crop_store(cfg: Config, index: data.DataIndex, state: str) -> FeatureStore | None:
    """Table 1's "official face crop" features of a backbone state for Train+Validation (resumable).

    Encodes the release's ``data.cropped_aligned_dir`` images; None when that param is null (the
    column is skipped) or the state's backbone is absent. The per-track report goes to
    ``reports/official_crops_<state>.csv`` (unreadable images named there and in the log).
    """
    from kitlib.visual.backbones import input_mean_std
    from kitlib.visual.extract import extract_official_crop_features

    if cfg.data.cropped_aligned_dir is None:
        log.info("Table 1: data.cropped_aligned_dir is null, so the official face crop column is skipped")
        return None
    crops_root = cfg.data_path(cfg.data.cropped_aligned_dir)
    if not crops_root.is_dir():
        raise FileNotFoundError(f"data.cropped_aligned_dir: folder {crops_root} does not exist (the release's "
                                f"cropped_aligned/<txtid>/<00001>.jpg); set it to null to skip the official column")
    loaded = _state_backbone(cfg, state)
    if loaded is None:
        return None
    (backbone, record), dev = loaded, device(cfg)
    mean, std = input_mean_std(backbone)
    tracks = _table1_tracks(index)
    n_frames = video_table(cfg, index).set_index("videoid")["n_frames"].to_dict()
    store = feature_store(cfg, "visual_official" if state == main_state(cfg) else f"visual_official_{state}")
    table = extract_official_crop_features(
        tracks, store, backbone, crops_root=crops_root, n_frames={t.txtid: n_frames.get(t.videoid, 0) for t in tracks},
        image_size=cfg.stage1.image_size, mean=mean, std=std, batch_size=cfg.visual.batch_size, device=dev,
        dtype=amp_dtype(cfg.visual.amp, dev, on_cpu=cfg.run.amp_on_cpu) or torch.float32, frame_stride=cfg.data.cropped_aligned_stride,
        manifest={"backbone": {k: v for k, v in record.items() if k != "history"}, "params_digest": cfg.digest()})
    report(cfg, f"official_crops_{state}", table)
    return store


def crop_scale_probe(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray]) -> pd.DataFrame:
    """Table 1: linear-probe macro F1 of the official face crops (``data.cropped_aligned_dir``), of each
    re-crop scale and of the multi-scale mean, per backbone state."""
    settings: dict[str, tuple[str, int | None]] = {f"crop {s}": ("features_by_scale", i)
                                                   for i, s in enumerate(cfg.faces.crop_scales)}
    settings["multi-scale mean"] = ("features", None)
    tables = []
    for state in table1_states(cfg):
        official = official_crop_store(cfg, index, state)
        if official is not None:
            tables.append(probe_table(cfg, index, labels, official.kind, {OFFICIAL_CROP: ("features", None)}, "crop")
                          .assign(backbone=state_label(state)))
        store = state_store(cfg, index, state)
        if store is not None:
            tables.append(probe_table(cfg, index, labels, store.kind, settings, "crop")
                          .assign(backbone=state_label(state)))
    table = pd.concat(tables, ignore_index=True)[["backbone", "crop", "val_f1", "train_frames", "val_frames"]]
    report(cfg, "table1_crops", table)
    return table
