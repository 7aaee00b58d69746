"""Where params become calls: one function per pipeline step, taking the resolved ``Config``.

The notebooks call these (and ``kitlib.plots``) and nothing else does the wiring, so a stage's
behaviour is the same in JupyterLab, under papermill and in the tests. The heavy code lives in the
stage modules (``faces``, ``visual``, ``stage1``, ``audio``, ``fusion``, ``smoothing``,
``submission``); this module only reads params, picks paths inside the run folder and records
reports there.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kitlib import config, data, runtime
from kitlib.config import Config
from kitlib.store import FeatureStore, write_json_atomic

log = logging.getLogger("kitlib.pipeline")


# ---------------------------------------------------------------- run folder and data
def start(cfg: Config) -> Path:
    """Every notebook's first call: logging, seeds, the run folder, and the demo data if asked for."""
    runtime.setup_logging()
    runtime.seed_everything(cfg.run.seed)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.generate_demo:
        ensure_demo(cfg)
    return cfg.run_dir


def ensure_demo(cfg: Config) -> dict:
    """Generate the embedded demo dataset into ``data.root`` unless it is already complete."""
    from kitlib import demo

    d = cfg.demo
    return demo.generate_demo(cfg.path(cfg.data.root), seed=d.seed, n_train=d.n_train, n_val=d.n_val, n_test=d.n_test,
                              seconds=tuple(d.seconds), fps=d.fps, size=tuple(d.size), sample_rate=d.sample_rate,
                              images_per_class=d.images_per_class)


def device(cfg: Config) -> torch.device:
    return runtime.pick_device(cfg.run.device)


def amp_dtype(name: str, dev: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``bf16`` / ``fp16`` on CUDA; None (full precision) on CPU or for ``none``."""
    valid = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
    if name not in valid:
        raise config.ConfigError(f"amp must be one of {', '.join(valid)}, got {name!r}")
    return valid[name] if dev.type == "cuda" else None


def report(cfg: Config, name: str, table: pd.DataFrame) -> Path:
    """Write a report table (bad input, coverage, ablations) as ``<run>/reports/<name>.csv``."""
    path = cfg.run_dir / "reports" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def data_index(cfg: Config) -> data.DataIndex:
    """All tracks of the release; files that could not be used go to ``reports/data_problems.csv``."""
    index = data.discover(cfg.path(cfg.data.root), videos_dir=cfg.data.videos_dir,
                          annotations_dir=cfg.data.annotations_dir, test_names=cfg.data.test_names)
    report(cfg, "data_problems", pd.DataFrame(index.problems, columns=["file", "reason"]))
    return index


def video_table(cfg: Config, index: data.DataIndex) -> pd.DataFrame:
    """Decoded frame count, fps and duration of every video (cached in ``reports/videos.csv``).

    A video that cannot be decoded gets its error in the ``error`` column and is left out by the
    later stages, which report it again; the rest of the run goes on.
    """
    from tqdm.auto import tqdm

    from kitlib.video import VideoError, probe

    path = cfg.run_dir / "reports" / "videos.csv"
    if path.is_file():
        return pd.read_csv(path, keep_default_na=False)
    rows = []
    videos = sorted({(t.videoid, t.video_path) for t in index.tracks})
    for videoid, video_path in tqdm(videos, desc="probe videos", unit="video"):
        try:
            info = probe(video_path)
            rows.append({"videoid": videoid, "video": str(video_path), "n_frames": info.n_frames, "fps": info.fps,
                         "width": info.width, "height": info.height, "duration_s": info.duration_s, "error": ""})
        except VideoError as exc:
            rows.append({"videoid": videoid, "video": str(video_path), "n_frames": 0, "fps": 0.0, "width": 0,
                         "height": 0, "duration_s": 0.0, "error": exc.reason})
    table = pd.DataFrame(rows)
    report(cfg, "videos", table)
    bad = table[table["error"] != ""]
    if len(bad):
        log.warning("%d of %d videos cannot be decoded (reports/videos.csv): %s", len(bad), len(table),
                    "; ".join(f"{v}: {e}" for v, e in zip(bad["video"], bad["error"])))
    return table


def frame_labels(cfg: Config, index: data.DataIndex) -> dict[str, np.ndarray]:
    """Labels of every annotated track, fitted to its video's decoded frame count (``data.length_policy``).

    Each length mismatch is logged and listed in ``reports/length_mismatches.csv``.
    """
    n_frames = video_table(cfg, index).set_index("videoid")["n_frames"].to_dict()
    labels, notes = {}, []
    for t in index.tracks:
        if t.labels_path is None or not n_frames.get(t.videoid):
            continue
        raw = data.read_labels(t.labels_path)
        aligned, note = data.align_labels(raw, int(n_frames[t.videoid]), policy=cfg.data.length_policy,
                                          name=str(t.labels_path))
        labels[t.txtid] = aligned
        if note:
            log.warning(note)
            notes.append({"txtid": t.txtid, "annotation_lines": len(raw),
                          "decoded_frames": int(n_frames[t.videoid]), "action": note.split(": ")[-1]})
    report(cfg, "length_mismatches", pd.DataFrame(notes, columns=["txtid", "annotation_lines", "decoded_frames", "action"]))
    return labels


def folds(cfg: Config, index: data.DataIndex) -> dict[str, int]:
    """Video-level folds over Train+Validation (``data.folds_file`` if given, else computed)."""
    if cfg.data.folds_file:
        return data.read_folds(cfg.data_path(cfg.data.folds_file))
    annotated = [t for t in index.tracks if t.labels_path is not None]
    return data.make_folds(data.label_histograms(annotated), n_folds=cfg.data.n_folds, seed=cfg.data.fold_seed,
                           trials=cfg.data.fold_trials)


# ---------------------------------------------------------------- Stage I
def padaug(cfg: Config):
    from kitlib.padaug import PadAug

    return PadAug(p=cfg.stage1.padaug_p, max_frac=cfg.stage1.padaug_max_frac) if cfg.stage1.padaug else None


def stage1_items(cfg: Config) -> tuple[list, list]:
    """(train, val) image items of the Stage-I dataset named by ``stage1.dataset``."""
    from kitlib import images

    root = cfg.data_path(cfg.stage1.images_root)
    splits = {"train": "Train_Set", "val": "Validation_Set"}
    annotations = cfg.data_path(cfg.data.annotations_dir)
    readers = {"class_folder": lambda split: images.class_folder_items(root / split),
               "affectnet": lambda split: images.affectnet_items(root, split),
               "rafdb": lambda split: images.rafdb_items(root, split),
               "affwild2": lambda split: images.affwild2_frame_items(root, annotations / splits[split])}
    if cfg.stage1.dataset not in readers:
        raise config.ConfigError(f"stage1.dataset {cfg.stage1.dataset!r} unknown; valid: {', '.join(readers)}")
    return readers[cfg.stage1.dataset]("train"), readers[cfg.stage1.dataset]("val")


def backbone_path(cfg: Config) -> Path:
    """The adapted backbone this run uses: ``stage1.checkpoint`` or the one Stage I wrote."""
    return cfg.path(cfg.stage1.checkpoint) if cfg.stage1.checkpoint else cfg.run_dir / "stage1" / "backbone.safetensors"


def pretrained_backbone(cfg: Config) -> torch.nn.Module:
    """The ``stage1.arch`` backbone before adaptation (local ``stage1.weights``, or random init when null)."""
    from kitlib.backbone import build_backbone

    weights = cfg.path(cfg.stage1.weights) if cfg.stage1.weights else None
    return build_backbone(arch=cfg.stage1.arch, weights=weights, img_size=cfg.stage1.image_size,
                          overrides=cfg.stage1.arch_overrides)


def train_stage1(cfg: Config, *, head: str | None = None, use_padaug: bool | None = None,
                 out_path: Path | None = None) -> dict:
    """Stage-I adaptation with the params (head / PadAug can be switched for the Table-1 ablation)."""
    from kitlib import stage1

    s, dev = cfg.stage1, device(cfg)
    train_items, val_items = stage1_items(cfg)
    use_padaug = s.padaug if use_padaug is None else use_padaug
    result = stage1.train_stage1(
        backbone=pretrained_backbone(cfg), train_items=train_items, val_items=val_items, head_kind=head or s.head,
        num_experts=s.num_experts, epochs=s.epochs, batch_size=s.batch_size, lr_backbone=s.lr_backbone,
        lr_head=s.lr_head, weight_decay=s.weight_decay, mixup_alpha=s.mixup_alpha, label_smoothing=s.label_smoothing,
        padaug=padaug(cfg) if use_padaug else None, n_frozen_blocks=s.n_frozen_blocks, image_size=s.image_size,
        device=dev, amp_dtype=amp_dtype(s.amp, dev) or torch.float32, seed=cfg.run.seed, out_path=out_path or backbone_path(cfg),
        max_steps_per_epoch=s.max_steps_per_epoch)
    return result


def adapted_backbone(cfg: Config) -> tuple[torch.nn.Module, dict]:
    """The backbone for feature extraction: the adapted one if it exists, else (train: false) the pretrained one."""
    from kitlib.backbone import checkpoint_hash, load_backbone

    path = backbone_path(cfg)
    if path.is_file():
        model, record = load_backbone(path, device=device(cfg))
        return model.eval(), {**record, "checkpoint": str(path), "checkpoint_hash": checkpoint_hash(path)}
    if cfg.stage1.train:
        raise FileNotFoundError(f"{path} is missing: run 02_stage1_train first (or set stage1.checkpoint)")
    model = pretrained_backbone(cfg).to(device(cfg)).eval()
    return model, {"arch": cfg.stage1.arch, "checkpoint": cfg.stage1.weights, "adapted": False}


# ---------------------------------------------------------------- Stage II features
def feature_store(cfg: Config, kind: str, *, rank: int | None = None) -> FeatureStore:
    """The run's store of ``kind``; with ``rank`` (sharded extraction) it writes that rank's own manifest."""
    name = "manifest.json" if rank is None else f"manifest.rank{rank:05d}.json"
    return FeatureStore(cfg.run_dir / "features", kind, manifest_name=name)


RESUMED_STATUSES = ("skipped (done)", "resumed")


def extraction_report(cfg: Config, name: str, table: pd.DataFrame) -> pd.DataFrame:
    """Write an extraction report, keeping the earlier row of every track this run skipped as done.

    A resumed (or sharded, then re-run) extraction skips finished tracks; their frame counts and
    face / audio coverage come from the report of the run that extracted them, so the notebook's
    tables and plots stay complete.
    """
    path = cfg.run_dir / "reports" / f"{name}.csv"
    earlier = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if len(earlier) and {"txtid", "status"} <= set(earlier.columns) and len(table):
        extracted = earlier[~earlier["status"].isin(RESUMED_STATUSES)].drop_duplicates("txtid", keep="last")
        swap = table["status"].isin(RESUMED_STATUSES) & table["txtid"].isin(extracted["txtid"])
        if swap.any():
            kept = extracted.set_index("txtid").loc[table.loc[swap, "txtid"]].reset_index()
            kept = kept.reindex(columns=table.columns).astype(table.dtypes.to_dict(), errors="ignore")
            table = pd.concat([table[~swap], kept]).set_index("txtid").loc[table["txtid"]].reset_index()
    report(cfg, name, table)
    return table


def extract_visual(cfg: Config, index: data.DataIndex, *, tracks: list[data.Track] | None = None,
                   rank: int | None = None, dev: torch.device | None = None) -> pd.DataFrame:
    """Faces -> multi-scale crops -> backbone features for every track (resumable).

    ``tracks`` / ``rank`` / ``dev``: one shard of a sharded extraction (``kitlib.distributed``):
    only these tracks, on this device, with the rank's own manifest and report (merged later).
    """
    from kitlib.backbone import input_mean_std
    from kitlib.faces import build_detector
    from kitlib.visual import extract_visual_features

    dev = dev or device(cfg)
    backbone, record = adapted_backbone(cfg)
    mean, std = input_mean_std(backbone)
    options = {"path": cfg.path(cfg.faces.boxes_file)} if cfg.faces.detector == "boxes" else {}
    detector = build_detector(cfg.faces.detector, **options)
    table = extract_visual_features(
        index.tracks if tracks is None else tracks, feature_store(cfg, "visual", rank=rank), backbone,
        detector=detector, crop_scales=cfg.faces.crop_scales,
        image_size=cfg.stage1.image_size, mean=mean, std=std, batch_size=cfg.visual.batch_size,
        max_gap=cfg.faces.max_gap, follow=follow_settings(cfg), device=dev,
        dtype=amp_dtype(cfg.visual.amp, dev) or torch.float32, decode_batch=cfg.faces.decode_batch,
        manifest={"backbone": record, "params_digest": cfg.digest()})
    return extraction_report(cfg, "visual_extraction" + ("" if rank is None else f".rank{rank:05d}"), table)


def audio_encoder_path(cfg: Config) -> Path:
    """The local audio encoder folder; the demo builds its tiny random-init one there if absent."""
    from kitlib.audio import make_tiny_encoder

    path = cfg.path(cfg.audio.encoder)
    if cfg.audio.make_tiny_encoder and not (path / "config.json").is_file():
        make_tiny_encoder(path, seed=cfg.run.seed)
    return path


def extract_audio(cfg: Config, index: data.DataIndex, *, tracks: list[data.Track] | None = None,
                  rank: int | None = None, dev: torch.device | None = None) -> pd.DataFrame:
    """wav2vec 2.0 features aligned to every frame (plus the Table-2 alignments), resumable.

    ``tracks`` / ``rank`` / ``dev``: one shard of a sharded extraction, as in ``extract_visual``.
    """
    from kitlib.audio import extract_audio_features, load_audio_encoder

    a, dev = cfg.audio, dev or device(cfg)
    path = audio_encoder_path(cfg)
    encoder = load_audio_encoder(path, device=dev, dtype=amp_dtype(a.amp, dev) or torch.float32)
    layers: str | int = int(a.layers) if a.layers.isdigit() else a.layers
    table = extract_audio_features(
        index.tracks if tracks is None else tracks, feature_store(cfg, "audio", rank=rank), encoder,
        sample_rate=a.sample_rate,
        chunk_s=a.chunk_s, overlap_s=a.overlap_s, layers=layers, method=a.align, align_window_s=a.align_window_total_s,
        manifest={"encoder": str(path), "params_digest": cfg.digest()}, extra_windows_s=a.ablation_windows_total_s)
    return extraction_report(cfg, "audio_extraction" + ("" if rank is None else f".rank{rank:05d}"), table)


# ---------------------------------------------------------------- tables the notebooks show
def read_report(cfg: Config, name: str) -> pd.DataFrame:
    path = cfg.run_dir / "reports" / f"{name}.csv"
    return pd.read_csv(path, keep_default_na=False) if path.is_file() else pd.DataFrame()


def track_table(cfg: Config, index: data.DataIndex) -> pd.DataFrame:
    """One row per track: split, video, decoded frames, valid/invalid labelled frames and class counts."""
    videos = video_table(cfg, index).set_index("videoid")
    hist = data.label_histograms([t for t in index.tracks if t.labels_path is not None])
    test = pd.DataFrame([{"txtid": t.txtid, "videoid": t.videoid, "split": t.split} for t in index.tracks
                         if t.labels_path is None])
    table = pd.concat([hist, test], ignore_index=True)
    table["frames"] = table["videoid"].map(videos["n_frames"]).fillna(0).astype(int)
    counts = [c for c in table.columns if c.startswith("class_") or c in ("valid", "invalid")]
    table[counts] = table[counts].fillna(0).astype(int)
    return table


def fold_table(cfg: Config, index: data.DataIndex) -> pd.DataFrame:
    """Per fold: tracks, videos, valid frames and class shares; the assignment goes to ``reports/folds.csv``."""
    from kitlib import CLASSES

    assignment = folds(cfg, index)
    hist = data.label_histograms([t for t in index.tracks if t.txtid in assignment])
    hist["fold"] = hist["txtid"].map(assignment)
    report(cfg, "folds", hist[["txtid", "videoid", "split", "fold"]])
    classes = [f"class_{c}" for c in range(len(CLASSES))]
    per_fold = hist.groupby("fold").agg(tracks=("txtid", "count"), videos=("videoid", "nunique"), valid=("valid", "sum"))
    shares = hist.groupby("fold")[classes].sum()
    shares = (shares.div(shares.sum(1), axis=0)).round(3).rename(columns=dict(zip(classes, CLASSES)))
    return per_fold.join(shares)


def preview_images(cfg: Config, *, n: int = 6, folder: str | None = None, size: int = 112) -> torch.Tensor:
    """``n`` face images (uint8, n x 3 x size x size) from ``folder`` or the Stage-I training set, one per class first."""
    from PIL import Image

    if folder is not None:
        paths = sorted(p for p in Path(folder).expanduser().rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not paths:
            raise FileNotFoundError(f"{folder}: no .jpg/.png images to preview")
    else:
        items = stage1_items(cfg)[0]
        by_class: dict[int, list[Path]] = {}
        for path, label in items:
            by_class.setdefault(label, []).append(Path(path))
        paths = [p for group in zip(*by_class.values()) for p in group]
    images = [np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in paths[:n]]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def padaug_grid(cfg: Config, images: torch.Tensor, *, rows: int = 2) -> np.ndarray:
    """The paper's Fig. 3 as an H x W x 3 array: originals on top, ``rows`` rows of PadAug samples below."""
    from kitlib.padaug import PadAug, preview_grid

    aug = padaug(cfg) or PadAug(max_frac=cfg.stage1.padaug_max_frac)
    grid = preview_grid(images, padaug=aug, n_per_image=rows, seed=cfg.run.seed)
    return grid.permute(1, 2, 0).numpy()


def image_set_table(train_items: list, val_items: list) -> pd.DataFrame:
    """Images per class in the Stage-I train and validation sets."""
    from kitlib import CLASSES
    from kitlib.images import label_counts

    return pd.DataFrame({"train": label_counts(train_items), "val": label_counts(val_items)}, index=list(CLASSES))


def run_stage1(cfg: Config) -> dict:
    """Stage I as the params say: train (``stage1.train``), or record that an existing backbone is used."""
    if cfg.stage1.train:
        return train_stage1(cfg)
    source = cfg.stage1.checkpoint or cfg.stage1.weights or "random init"
    log.info("stage1.train is false: features will come from %s", source)
    return {"history": [], "best_epoch": None, "best_val_f1": None, "out_path": source}


def history_table(result: dict) -> pd.DataFrame:
    return pd.DataFrame(result.get("history", []))


def backbone_record(cfg: Config) -> pd.Series:
    """How the backbone used by this run was made (record saved with it), without the per-epoch history."""
    from kitlib.backbone import read_record

    path = backbone_path(cfg)
    if not path.is_file():
        return pd.Series({"backbone": cfg.stage1.checkpoint or cfg.stage1.weights or "random init", "adapted": False})
    record = {k: v for k, v in read_record(path).items() if k != "history"}
    return pd.Series({k: (v if np.isscalar(v) or v is None else str(v)) for k, v in record.items()})


def main_state(cfg: Config) -> str:
    """This run's own backbone state: ``<head>[_padaug]`` when Stage I trains, else ``pretrained``."""
    return f"{cfg.stage1.head}{'_padaug' if cfg.stage1.padaug else ''}" if cfg.stage1.train else "pretrained"


def _check_state(state: str) -> tuple[str, bool] | None:
    """(head, use PadAug) of a fine-tuned state; None for ``pretrained``."""
    if state == "pretrained":
        return None
    head, _, padaug_flag = state.partition("_")
    if head not in ("moe", "mlp") or padaug_flag not in ("", "padaug"):
        raise config.ConfigError(f"stage1.table1_states: unknown state {state!r}; valid: pretrained, moe, mlp, "
                                 f"moe_padaug, mlp_padaug")
    return head, bool(padaug_flag)


def state_label(state: str) -> str:
    """Table 1's row name: ``moe_padaug`` -> ``fine-tuned + MoE + PadAug``."""
    spec = _check_state(state)
    if spec is None:
        return "pretrained"
    head, use_padaug = spec
    return f"fine-tuned + {'MoE' if head == 'moe' else head.upper()}" + (" + PadAug" if use_padaug else "")


def table1_states(cfg: Config) -> list[str]:
    """The backbone states of Table 1: this run's own, then ``stage1.table1_states``."""
    for state in cfg.stage1.table1_states:
        _check_state(state)
    return list(dict.fromkeys([main_state(cfg), *cfg.stage1.table1_states]))


def state_path(cfg: Config, state: str) -> Path:
    """Where the backbone of a Table-1 state is (this run's own: ``backbone_path``)."""
    return backbone_path(cfg) if state == main_state(cfg) else cfg.run_dir / "stage1" / "states" / f"{state}.safetensors"


def train_table1_states(cfg: Config) -> pd.DataFrame:
    """Stage I once more for every fine-tuned Table-1 state other than this run's own (resumable)."""
    rows = []
    for state in table1_states(cfg)[1:]:
        spec = _check_state(state)
        path = state_path(cfg, state)
        if spec is None:
            rows.append({"state": state_label(state), "status": "no training", "best_val_f1": None})
        elif path.is_file():
            rows.append({"state": state_label(state), "status": "exists", "best_val_f1": None})
        else:
            result = train_stage1(cfg, head=spec[0], use_padaug=spec[1], out_path=path)
            rows.append({"state": state_label(state), "status": "trained", "best_val_f1": result["best_val_f1"]})
    table = pd.DataFrame(rows, columns=["state", "status", "best_val_f1"])
    report(cfg, "stage1_states", table)
    return table


def export_boxes(cfg: Config) -> Path:
    """The faces this run detected, as a precomputed-boxes CSV (``faces.detector: boxes``) for re-extraction."""
    from kitlib.faces import DETECTED
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
        parts.append(pd.DataFrame({"videoid": data.videoid_of(txtid)[0], "frame": entry["frame_index"][hit],
                                   "x1": box[:, 0], "y1": box[:, 1], "x2": box[:, 2], "y2": box[:, 3], "score": 1.0}))
    table = pd.concat(parts, ignore_index=True).drop_duplicates()
    write_text_atomic(path, table.to_csv(index=False))
    return path


OFFICIAL_CROP = "official crop"   # Table 1's first column: the organisers' aligned face crops


def follow_settings(cfg: Config):
    """``faces.follow_*`` as the tracker's ``FollowSettings``; None when following is off."""
    from kitlib.faces import FollowSettings

    f = cfg.faces
    if f.follow_max_frames <= 0:
        return None
    return FollowSettings(max_frames=f.follow_max_frames, min_visible=f.follow_min_visible,
                          min_similarity=f.follow_min_similarity)


def _state_backbone(cfg: Config, state: str) -> tuple[torch.nn.Module, dict] | None:
    """The backbone of a Table-1 state and its record; None (logged) when it has not been trained."""
    from kitlib.backbone import checkpoint_hash, load_backbone

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
    from kitlib.backbone import input_mean_std
    from kitlib.faces import build_detector
    from kitlib.visual import extract_visual_features

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
        crop_scales=cfg.faces.crop_scales, image_size=cfg.stage1.image_size, mean=mean, std=std,
        batch_size=cfg.visual.batch_size, max_gap=cfg.faces.max_gap, follow=follow_settings(cfg), device=dev,
        dtype=amp_dtype(cfg.visual.amp, dev) or torch.float32, decode_batch=cfg.faces.decode_batch,
        manifest={"backbone": record, "params_digest": cfg.digest()})
    report(cfg, f"visual_extraction_{state}", table)
    return store


def official_crop_store(cfg: Config, index: data.DataIndex, state: str) -> FeatureStore | None:
    """Table 1's "official face crop" features of a backbone state for Train+Validation (resumable).

    Encodes the release's ``data.cropped_aligned_dir`` images; None when that param is null (the
    column is skipped) or the state's backbone is absent. The per-track report goes to
    ``reports/official_crops_<state>.csv`` (unreadable images named there and in the log).
    """
    from kitlib.backbone import input_mean_std
    from kitlib.visual import extract_official_crop_features

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
        dtype=amp_dtype(cfg.visual.amp, dev) or torch.float32, frame_stride=cfg.data.cropped_aligned_stride,
        manifest={"backbone": {k: v for k, v in record.items() if k != "history"}, "params_digest": cfg.digest()})
    report(cfg, f"official_crops_{state}", table)
    return store


def _probe_sets(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray], kind: str,
                settings: dict[str, tuple[str, int | None]], split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per setting ``name -> (array key, scale index or None)``: stacked features and labels of a split's valid
    frames that the setting covers (its ``<key>_mask``, else ``mask``). Each feature file is read once."""
    store = feature_store(cfg, kind)
    parts: dict[str, tuple[list, list]] = {name: ([], []) for name in settings}
    for t in index.split(split):
        if t.txtid not in labels or not store.done(t.txtid):
            continue
        entry = store.load(t.txtid)
        for name, (key, scale) in settings.items():
            x = entry[key] if scale is None else entry[key][:, scale]
            y = labels[t.txtid][: len(x)]
            keep = entry.get(f"{key}_mask", entry["mask"])[: len(y)] & (y >= 0)
            parts[name][0].append(np.asarray(x[: len(y)][keep], dtype=np.float32))
            parts[name][1].append(y[keep])
    if not any(xs for xs, _ in parts.values()):
        raise FileNotFoundError(f"no {kind} features for the {split} tracks in {store.root}")
    return {name: (np.concatenate(xs), np.concatenate(ys)) for name, (xs, ys) in parts.items()}


def _probe_table(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray], kind: str,
                 settings: dict[str, tuple[str, int | None]], column: str) -> pd.DataFrame:
    """Linear-probe macro F1 (train on Train_Set, score on Validation_Set) of each feature setting."""
    from kitlib.visual import linear_probe_f1

    train = _probe_sets(cfg, index, labels, kind, settings, "Train_Set")
    val = _probe_sets(cfg, index, labels, kind, settings, "Validation_Set")
    return pd.DataFrame([{column: name, "val_f1": linear_probe_f1(*train[name], *val[name], seed=cfg.run.seed),
                          "train_frames": len(train[name][1]), "val_frames": len(val[name][1])} for name in settings])


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
            tables.append(_probe_table(cfg, index, labels, official.kind, {OFFICIAL_CROP: ("features", None)}, "crop")
                          .assign(backbone=state_label(state)))
        store = state_store(cfg, index, state)
        if store is not None:
            tables.append(_probe_table(cfg, index, labels, store.kind, settings, "crop")
                          .assign(backbone=state_label(state)))
    table = pd.concat(tables, ignore_index=True)[["backbone", "crop", "val_f1", "train_frames", "val_frames"]]
    report(cfg, "table1_crops", table)
    return table


def alignment_probe(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray]) -> pd.DataFrame:
    """Table 2: linear-probe macro F1 of the audio features per frame alignment (nearest, window means)."""
    a = cfg.audio
    windows = {"nearest": 0.0} if a.ablation_windows_total_s else {}
    settings: dict[str, tuple[str, int | None]] = {"nearest": ("nearest", None)} if windows else {}
    for w in a.ablation_windows_total_s:
        name = f"window mean ({w:.2f} s)"
        settings[name], windows[name] = (f"window_{int(round(w * 1000))}", None), w
    used = f"window mean ({a.align_window_total_s:.2f} s, used)" if a.align == "window" else "nearest (used)"
    settings[used], windows[used] = ("features", None), (a.align_window_total_s if a.align == "window" else 0.0)
    table = _probe_table(cfg, index, labels, "audio", settings, "alignment")
    table.insert(1, "window_s", table["alignment"].map(windows))
    table = table.sort_values("window_s", kind="stable").reset_index(drop=True)
    report(cfg, "table2_alignment", table)
    return table


# ---------------------------------------------------------------- Stage II fusion, smoothing, submission
def _train_kwargs(cfg: Config) -> dict:
    """``fusion.train_head`` keywords of every head (a frame head's settings; ``_head_kwargs`` adds the rest)."""
    f = cfg.fusion
    return dict(hidden=f.hidden, dropout=f.dropout, epochs=f.epochs, batch_size=f.batch_size, lr=f.lr,
                weight_decay=f.weight_decay, patience=f.patience, seed=cfg.run.seed, device=device(cfg),
                class_weights=None if f.class_weights == "none" else f.class_weights,
                effective_beta=f.effective_beta, loss=f.loss, focal_gamma=f.focal_gamma)


def text_encoder_path(cfg: Config) -> Path:
    """The local text encoder folder (tcn_prompt's label prompts); the demo builds a tiny one there if absent."""
    path = cfg.path(cfg.fusion.text_encoder)
    if cfg.fusion.make_tiny_text_encoder and not (path / "config.json").is_file():
        from kitlib import CLASSES
        from kitlib.tcn_prompt import make_tiny_text_encoder

        make_tiny_text_encoder(path, seed=cfg.run.seed, classes=CLASSES, template=cfg.fusion.prompt_template)
    return path


def label_prompts(cfg: Config) -> torch.Tensor:
    """(C, D) text embeddings of ``fusion.prompt_template`` for every class name (seed 003), on the CPU."""
    from kitlib import CLASSES
    from kitlib.tcn_prompt import prompt_embeddings

    return prompt_embeddings(text_encoder_path(cfg), classes=CLASSES, template=cfg.fusion.prompt_template,
                             device=device(cfg)).detach().float().cpu()


def _head_kwargs(cfg: Config, names: list[str]) -> dict[str, dict]:
    """Per-head ``train_head`` overrides for the window heads among ``names``: ``fusion.sequence`` and
    the head's ``fusion.head_options`` (tcn_prompt: plus the label prompt embeddings)."""
    import dataclasses

    from kitlib import fusion

    s, out = cfg.fusion.sequence, {}
    for name in names:
        if not fusion.is_sequence_head(name):
            continue
        options = dataclasses.asdict(getattr(cfg.fusion.head_options, name))
        if name == "tcn_prompt":
            options["prompt_embeddings"] = label_prompts(cfg)
        out[name] = dict(batch_size=s.batch_size, lr=s.lr, epochs=s.epochs, patience=s.patience, loss=s.loss,
                         class_weights=None if s.class_weights == "none" else s.class_weights,
                         window=s.window, stride=s.stride, max_invalid=s.max_invalid, options=options)
    return out


def _check_head_names(cfg: Config, names: list[str]) -> None:
    from kitlib import fusion

    unknown = [h for h in names if h not in fusion.known_heads()]
    if unknown:
        raise config.ConfigError(f"fusion.heads / fusion.final_head name unknown head(s) {unknown}; "
                                 f"valid: {', '.join(fusion.known_heads())}")


def _fusion_tables(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray]) -> tuple:
    """(train, val, train+val pool or None without cross-validation) frame tables of the annotated tracks."""
    annotated = _with_features(cfg, [t for t in index.tracks if t.labels_path is not None], "fusion")
    train = frame_table(cfg, [t for t in annotated if t.split == "Train_Set"], labels)
    val = frame_table(cfg, [t for t in annotated if t.split == "Validation_Set"], labels)
    pool = frame_table(cfg, annotated, labels) if cfg.fusion.cross_validation else None
    return train, val, pool


def frame_table(cfg: Config, tracks: list[data.Track], labels: dict[str, np.ndarray] | None):
    """Visual + audio features (and labels) of ``tracks`` as one ``fusion.FrameTable`` (memory-mapped with
    ``fusion.memmap_features``)."""
    from kitlib.fusion import load_frame_table

    return load_frame_table(tracks, visual_store=feature_store(cfg, "visual"), audio_store=feature_store(cfg, "audio"),
                            labels=labels, memmap=cfg.fusion.memmap_features)


def _with_features(cfg: Config, tracks: list[data.Track], what: str) -> list[data.Track]:
    """The tracks whose visual and audio features exist; the others are logged and reported."""
    vis, aud = feature_store(cfg, "visual"), feature_store(cfg, "audio")
    kept = [t for t in tracks if vis.done(t.txtid) and aud.done(t.txtid)]
    dropped = [{"txtid": t.txtid, "stage": what, "visual": vis.done(t.txtid), "audio": aud.done(t.txtid)}
               for t in tracks if t not in kept]
    if dropped:
        log.warning("%s: %d track(s) have no features and are left out: %s", what, len(dropped),
                    ", ".join(d["txtid"] for d in dropped))
    report(cfg, f"missing_features_{what}", pd.DataFrame(dropped, columns=["txtid", "stage", "visual", "audio"]))
    return kept


def _save_logits(path: Path, logits_by_track: dict[str, np.ndarray]) -> None:
    from kitlib.store import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **logits_by_track)


def load_logits(cfg: Config, name: str) -> dict[str, np.ndarray]:
    """Per-track logits saved by stage 05 (``val`` = official validation, ``oof`` = out-of-fold)."""
    path = cfg.run_dir / "fusion" / f"{name}_logits.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run 05_fusion_ablation first")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def fusion_ablation(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray],
                    folds: dict[str, int]) -> pd.DataFrame:
    """Table 3: every head of ``fusion.heads`` on the official split (and the folds); keeps the final head."""
    from kitlib import fusion

    f = cfg.fusion
    names = list(dict.fromkeys([*f.heads, f.final_head]))
    _check_head_names(cfg, names)
    train, val, pool = _fusion_tables(cfg, index, labels)
    comparison = fusion.evaluate_heads(names, train=train, val=val, folds=folds if pool is not None else None,
                                       table_all=pool, head_kwargs=_head_kwargs(cfg, names), **_train_kwargs(cfg))
    out = cfg.run_dir / "fusion"
    out.mkdir(parents=True, exist_ok=True)
    final = comparison.trained[f.final_head]
    from kitlib.store import atomic_path

    with atomic_path(out / "final_head.pt") as tmp:
        torch.save({"name": final.name, "config": final.config, "state_dict": final.module.state_dict(),
                    "best_epoch": final.best_epoch, "best_val_f1": final.best_val_f1,
                    "visual_dim": val.visual_dim, "audio_dim": val.audio_dim}, tmp)
    _save_logits(out / "val_logits.npz", fusion.split_by_track(val, comparison.val_logits[f.final_head]))
    if pool is not None:
        _save_logits(out / "oof_logits.npz", fusion.split_by_track(pool, comparison.fold_logits[f.final_head]))
    history = pd.DataFrame([{**row, "head": name} for name, head in comparison.trained.items() for row in head.history])
    report(cfg, "fusion_history", history)
    table = comparison.table[comparison.table["head"].isin(f.heads)].reset_index(drop=True)
    report(cfg, "table3_fusion", table)
    return table


def xattn_grid(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray],
               folds: dict[str, int]) -> pd.DataFrame:
    """Seed 004 Table 3: ``safe_xattn`` for each row of ``fusion.xattn_grid`` (modality dropout p,
    d_model d, layers l; other options from ``fusion.head_options.safe_xattn``) on the official split,
    plus the folds when ``fusion.cross_validation`` and ``fusion.xattn_grid_folds``. Written to
    ``reports/table3_xattn_grid.csv``."""
    import dataclasses

    from tqdm.auto import tqdm

    from kitlib import fusion

    grid = cfg.fusion.xattn_grid
    valid = [fld.name for fld in dataclasses.fields(config.SafeXAttnOptions)]
    for i, row in enumerate(grid):
        unknown = sorted(set(row) - set(valid))
        if unknown:
            raise config.ConfigError(f"fusion.xattn_grid[{i}] = {row} has unknown option(s) {unknown}; "
                                     f"valid: {', '.join(valid)}")
    if not grid:
        empty = pd.DataFrame(columns=["modality_dropout", "d_model", "layers", "n_heads", "params",
                                      "official_val_acc", "official_val_f1", "best_epoch"])
        report(cfg, "table3_xattn_grid", empty)
        return empty
    train, val, pool = _fusion_tables(cfg, index, labels)
    if not cfg.fusion.xattn_grid_folds:
        pool = None
    base = _head_kwargs(cfg, ["safe_xattn"])["safe_xattn"]
    valid_val = val.labels >= 0
    rows = []
    for row in tqdm(grid, desc="safe_xattn grid", unit="row"):
        options = {**base["options"], **row}
        comparison = fusion.evaluate_heads(["safe_xattn"], train=train, val=val,
                                           folds=folds if pool is not None else None, table_all=pool,
                                           head_kwargs={"safe_xattn": {**base, "options": options}},
                                           **_train_kwargs(cfg))
        result = comparison.table.iloc[0].drop("head").to_dict()
        pred = comparison.val_logits["safe_xattn"].argmax(1)
        accuracy = float((pred[valid_val] == val.labels[valid_val]).mean())
        settings = {k: options[k] for k in ("modality_dropout", "d_model", "layers", "n_heads")}  # p, d, l first
        rows.append({**settings, "params": result.pop("params"), "official_val_acc": accuracy, **result})
    table = pd.DataFrame(rows)
    report(cfg, "table3_xattn_grid", table)
    return table


def final_head_report(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray]) -> dict:
    """Per-class F1 and the confusion matrix of the final head on the official validation split."""
    from kitlib import CLASSES, metrics

    logits = load_logits(cfg, "val")
    y = np.concatenate([labels[t][: len(x)] for t, x in logits.items()])
    pred = np.concatenate([x.argmax(1) for x in logits.values()])
    per_class = pd.DataFrame({"f1": metrics.per_class_f1(y, pred), "frames": np.bincount(y[y >= 0], minlength=len(CLASSES))},
                             index=list(CLASSES))
    per_class.loc["macro"] = [metrics.macro_f1(y, pred), int((y >= 0).sum())]
    report(cfg, "final_head_per_class", per_class.reset_index(names="class"))
    return {"per_class": per_class, "confusion": metrics.confusion(y, pred)}


def _sweep_windows(cfg: Config) -> range:
    s = cfg.smoothing
    if s.window_min % 2 == 0 or s.window_step % 2 == 1:
        raise config.ConfigError("smoothing.window_min must be odd and smoothing.window_step even (odd windows only)")
    return range(s.window_min, s.window_max + 1, s.window_step)


def smoothing_sweep(cfg: Config, index: data.DataIndex) -> pd.DataFrame:
    """Fig. 4: macro F1 per strategy and window on the official validation split and on each fold."""
    from kitlib import smoothing

    labels = frame_labels(cfg, index)
    windows = sorted({*_sweep_windows(cfg), cfg.smoothing.final_window})
    sets = {"official val": load_logits(cfg, "val")}
    oof_path = cfg.run_dir / "fusion" / "oof_logits.npz"
    if oof_path.is_file():
        oof = load_logits(cfg, "oof")
        assignment = folds(cfg, index)
        for k in sorted({assignment[t] for t in oof}):
            sets[f"fold {k}"] = {t: x for t, x in oof.items() if assignment[t] == k}
    tables = []
    for name, logits in sets.items():
        table = smoothing.sweep(logits, {t: labels[t][: len(x)] for t, x in logits.items()}, windows=windows,
                                strategies=cfg.smoothing.strategies)
        tables.append(table.assign(split=name))
    sweep = pd.concat(tables, ignore_index=True)
    report(cfg, "smoothing_sweep", sweep)
    return sweep


def smoothing_table(cfg: Config, sweep: pd.DataFrame) -> pd.DataFrame:
    """Table 4: single frame and each strategy at ``smoothing.final_window``: official val F1, fold mean ± std."""
    w = cfg.smoothing.final_window
    rows = sweep[(sweep["window"] == w) | (sweep["strategy"] == "none")].copy()
    rows["strategy"] = rows["strategy"].replace({"none": "single-frame"})
    official = rows[rows["split"] == "official val"].set_index("strategy")["f1"]
    table = pd.DataFrame({"official_val_f1": official})
    on_folds = rows[rows["split"].str.startswith("fold")]
    if len(on_folds):
        table["cv_mean_f1"] = on_folds.groupby("strategy")["f1"].mean()
        table["cv_std_f1"] = on_folds.groupby("strategy")["f1"].std(ddof=1)
    table = table.reset_index().assign(window=lambda t: np.where(t["strategy"] == "single-frame", 1, w))
    report(cfg, "table4_smoothing", table)
    return table


def smoothing_example(cfg: Config, index: data.DataIndex) -> dict:
    """The longest validation track: truth, single-frame and final-smoothing predictions."""
    from kitlib.smoothing import smooth_logits

    logits = load_logits(cfg, "val")
    txtid = max(logits, key=lambda t: len(logits[t]))
    x = logits[txtid]
    s = cfg.smoothing
    return {"txtid": txtid, "truth": frame_labels(cfg, index)[txtid][: len(x)],
            "rows": {"single frame": x.argmax(1),
                     f"{s.final_strategy} {s.final_window}": smooth_logits(x, s.final_window, s.final_strategy).argmax(1)}}


def _load_final_head(cfg: Config):
    """The kept final head (frame or window head, rebuilt with the options it was trained with) and its record."""
    from kitlib.fusion import build_head

    path = cfg.run_dir / "fusion" / "final_head.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run 05_fusion_ablation first")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    trained_with = saved["config"]
    head = build_head(saved["name"], visual_dim=saved["visual_dim"], audio_dim=saved["audio_dim"],
                      hidden=trained_with.get("hidden", cfg.fusion.hidden),
                      dropout=trained_with.get("dropout", cfg.fusion.dropout), options=trained_with.get("options"))
    head.load_state_dict(saved["state_dict"])
    return head.eval(), saved


def predict_test_logits(cfg: Config, index: data.DataIndex, table) -> np.ndarray:
    """Logits of the test frames: the final head, or the mean over fold models (``submission.ensemble_folds``)."""
    from tqdm.auto import tqdm

    from kitlib.fusion import TrainedHead, count_parameters, train_head

    dev = device(cfg)
    head, saved = _load_final_head(cfg)
    if not cfg.submission.ensemble_folds:
        final = TrainedHead(name=saved["name"], module=head, history=[], best_epoch=int(saved["best_epoch"]),
                            best_val_f1=float(saved["best_val_f1"]), n_params=count_parameters(head),
                            config=saved["config"])
        return final.predict(table, device=dev)
    labels = frame_labels(cfg, index)
    annotated = _with_features(cfg, [t for t in index.tracks if t.labels_path is not None], "ensemble")
    pool = frame_table(cfg, annotated, labels)
    assignment = folds(cfg, index)
    name = saved["name"]
    kwargs = {**_train_kwargs(cfg), **_head_kwargs(cfg, [name]).get(name, {}),
              "epochs": max(int(saved["best_epoch"]), 1)}
    if "options" in saved["config"]:
        kwargs["options"] = saved["config"]["options"]
    outs = []
    for k in tqdm(sorted(set(assignment[t] for t in pool.txtids)), desc="fold models", unit="fold"):
        part = pool.subset([t for t in pool.txtids if assignment[t] != k])
        outs.append(train_head(name, part, None, **kwargs).predict(table, device=dev))
    log.info("test logits: mean over %d fold models", len(outs))
    return np.mean(outs, axis=0)


def make_submission(cfg: Config, index: data.DataIndex) -> dict:
    """Predict the test tracks, smooth, write the official file in the template's order and validate it."""
    from kitlib import submission
    from kitlib.fusion import split_by_track
    from kitlib.smoothing import smooth_logits

    template = submission.read_template(cfg.data_path(cfg.data.test_template))
    tests = [t for t in index.tracks if t.split == "Test_Set"]
    unknown = sorted(set(template["txtid"]) - {t.txtid for t in tests})
    if unknown:
        raise submission.SubmissionError(f"the template names track(s) not in the test list {cfg.data.test_names}: "
                                         f"{', '.join(unknown[:5])}")
    tests = [t for t in tests if t.txtid in set(template["txtid"])]
    covered = _with_features(cfg, tests, "submission")
    if len(covered) < len(tests):
        raise submission.SubmissionError("test track(s) without features: "
                                         + ", ".join(t.txtid for t in tests if t not in covered)
                                         + " (see reports/videos.csv and the extraction reports)")
    table = frame_table(cfg, covered, None)
    logits = split_by_track(table, predict_test_logits(cfg, index, table))
    s = cfg.smoothing
    predictions = {}
    for i, txtid in enumerate(table.txtids):
        rows = slice(table.offsets[i], table.offsets[i + 1])
        has_face, has_audio = table.visual_mask[rows], table.audio_mask[rows]
        frames = table.frame_index[rows]
        usable = has_face | has_audio                       # frames with some evidence
        smoothed = smooth_logits(logits[txtid], s.final_window, s.final_strategy).argmax(1)
        source = np.where(has_face, "face", "audio")
        predictions[txtid] = submission.TrackPrediction(frames[usable], smoothed[usable], source[usable])
    out = cfg.run_dir / "submission" / cfg.submission.filename
    coverage = submission.write_submission(out, template, predictions, fill_policy=cfg.submission.fill_policy)
    rows = submission.validate_submission(out, template)
    report(cfg, "submission_coverage", coverage)
    log.info("submission: %s, %d rows, validated", out, rows)
    return {"path": out, "rows": rows, "coverage": coverage}


def score_demo_test(cfg: Config, index: data.DataIndex, path: Path) -> pd.DataFrame:
    """The demo's test-set macro F1 from its ground truth (``<data.root>/truth``); empty for real data."""
    from kitlib import metrics, submission

    truth_dir = cfg.data_path("truth")
    if not truth_dir.is_dir():
        return pd.DataFrame()
    rows = pd.read_csv(path, skiprows=1, header=None, names=["location", "label"])
    parts = rows["location"].str.extract(r"^(?P<txtid>.+)/(?P<frame>\d+)\.jpg$")
    y_true, y_pred = [], []
    for txtid, group in parts.groupby("txtid", sort=False):
        with np.load(truth_dir / f"{txtid}.npz") as truth:
            labels = truth["labels"]
        frames = group["frame"].astype(int).to_numpy()
        inside = frames <= len(labels)
        y_true.append(labels[frames[inside] - 1])
        y_pred.append(rows.loc[group.index, "label"].to_numpy()[inside])
    y_true, y_pred = np.concatenate(y_true), np.concatenate(y_pred)
    table = pd.DataFrame([{"split": "demo test", "frames": int((y_true >= 0).sum()),
                           "macro_f1": metrics.macro_f1(y_true, y_pred)}])
    report(cfg, "demo_test_score", table)
    return table
