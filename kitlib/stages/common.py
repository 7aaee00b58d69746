"""The wiring every notebook shares: the run folder, logging and seeds, devices, reports, the release
index, decoded video facts, labels, folds, feature stores and the frozen-feature probes.

Only ``kitlib.stages`` (and ``kitlib.tools``) read the ``Config``; the domain packages below take
typed arguments.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kitlib import config, data, runtime
from kitlib.config import Config
from kitlib.store import FeatureStore

log = logging.getLogger(__name__)


def start(cfg: Config) -> Path:
    """Every notebook's first call: logging, seeds, the run folder, and the demo data if asked for."""
    runtime.setup_logging()
    runtime.seed_everything(cfg.run.seed)
    check_run_params(cfg)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.generate_demo:
        ensure_demo(cfg)
    return cfg.run_dir


def check_run_params(cfg: Config) -> None:
    """The runner's rule for a notebook run by hand: a run folder belongs to the params it was made with,
    so params that differ from its ``params.yaml`` are refused (they would overwrite its reports)."""
    import yaml

    recorded = cfg.run_dir / "params.yaml"
    if not recorded.is_file():
        return
    old = config.flatten(config.without_location(yaml.safe_load(recorded.read_text()) or {}))
    new = config.flatten(cfg.results_dict())            # a renamed, moved or copied run folder keeps its params
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise config.ConfigError(f"{cfg.run_dir} was made with other params (changed: {', '.join(changed[:8])}); "
                                 f"set run.name to another folder, or use that folder's params.yaml")


def ensure_demo(cfg: Config) -> dict:
    """Generate the embedded demo dataset into ``data.root`` unless it is already complete."""
    from kitlib.data import demo

    d = cfg.demo
    return demo.generate_demo(cfg.path(cfg.data.root), seed=d.seed, n_train=d.n_train, n_val=d.n_val, n_test=d.n_test,
                              seconds=tuple(d.seconds), fps=d.fps, size=tuple(d.size), sample_rate=d.sample_rate,
                              images_per_class=d.images_per_class, layout=d.layout)


def device(cfg: Config) -> torch.device:
    return runtime.pick_device(cfg.run.device)


def amp_dtype(name: str, dev: torch.device, *, on_cpu: bool = False) -> torch.dtype | None:
    """The device path, chosen once here: the autocast dtype for ``bf16`` / ``fp16`` on CUDA (and on the
    CPU with ``on_cpu``, ``run.amp_on_cpu``: the GPU's dtype path run on the CPU); None (full precision)
    on the CPU or for ``none``. The domain code autocasts exactly when it is given a half dtype."""
    valid = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
    if name not in valid:
        raise config.ConfigError(f"amp must be one of {', '.join(valid)}, got {name!r}")
    return valid[name] if dev.type == "cuda" or on_cpu else None


def report(cfg: Config, name: str, table: pd.DataFrame) -> Path:
    """Write a report table (bad input, coverage, ablations) as ``<run>/reports/<name>.csv``."""
    path = cfg.run_dir / "reports" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def read_report(cfg: Config, name: str) -> pd.DataFrame:
    path = cfg.run_dir / "reports" / f"{name}.csv"
    return pd.read_csv(path, keep_default_na=False) if path.is_file() else pd.DataFrame()


DATA_PROBLEM_COLUMNS = ("kind", "file", "reason")
DATA_PROBLEM_KINDS = {"index": "file not used", "video": "undecodable video", "length": "length mismatch"}


def record_data_problems(cfg: Config, kind: str, problems: list[tuple[str, str]]) -> pd.DataFrame:
    """Put the ``(file, reason)`` problems of one ``kind`` (``DATA_PROBLEM_KINDS``) in ``reports/data_problems.csv``,
    replacing that kind's earlier rows. A problem is a warning the first time the run folder meets it; the
    stages that meet it again log it to their stage log only, so a notebook does not repeat it."""
    old = read_report(cfg, "data_problems")
    if not set(DATA_PROBLEM_COLUMNS) <= set(old.columns):      # none yet (or a report of an older kit)
        old = pd.DataFrame(columns=DATA_PROBLEM_COLUMNS)
    known = set(zip(old["file"], old["reason"]))
    for file, reason in problems:
        (log.info if (file, reason) in known else log.warning)("%s: %s", file, reason)
    kept = old[old["kind"] != kind]
    rows = pd.DataFrame([(kind, file, reason) for file, reason in problems], columns=DATA_PROBLEM_COLUMNS)
    table = pd.concat([kept, rows], ignore_index=True) if len(kept) and len(rows) else rows if len(rows) else kept
    report(cfg, "data_problems", table)
    return table


def data_problems_note(cfg: Config):
    """One line for a notebook: how many data problems this run met so far, by kind, with a link to
    ``reports/data_problems.csv`` (relative to the executed notebook under the runner)."""
    from kitlib.progress import stage_log_path

    table = read_report(cfg, "data_problems")
    n = len(table) if "kind" in table.columns else 0
    if not n:
        text = "Data problems: none so far in this run."
    else:
        path = cfg.run_dir / "reports" / "data_problems.csv"
        link = ("../reports/data_problems.csv" if stage_log_path() is not None    # <run>/notebooks/NN.ipynb
                else os.path.relpath(path, Path.cwd()))
        kinds = ", ".join(f"{count} {DATA_PROBLEM_KINDS.get(kind, kind)}" for kind, count in
                          table["kind"].value_counts().items())
        text = f"Data problems so far in this run: {n} ({kinds}), listed in [reports/data_problems.csv]({link})."
    try:
        from IPython.display import Markdown
    except ImportError:     # plain Python: the text itself
        return text
    return Markdown(text)


def data_index(cfg: Config) -> data.DataIndex:
    """All tracks of the release; files that could not be used go to ``reports/data_problems.csv``."""
    index = data.discover(cfg.path(cfg.data.root), videos_dir=cfg.data.videos_dir,
                          annotations_dir=cfg.data.annotations_dir, test_names=cfg.test_names_path())
    record_data_problems(cfg, "index", list(index.problems))
    return index


def video_table(cfg: Config, index: data.DataIndex) -> pd.DataFrame:
    """Decoded frame count, fps and duration of every video (cached in ``reports/videos.csv``).

    A video that cannot be decoded gets its error in the ``error`` column and is left out by the
    later stages, which report it again; the rest of the run goes on.
    """
    from kitlib.progress import tqdm

    from kitlib.faces.video import VideoError, probe

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
    record_data_problems(cfg, "video", [(v, f"cannot be decoded: {e}") for v, e in zip(bad["video"], bad["error"])])
    return table


def frame_labels(cfg: Config, index: data.DataIndex) -> dict[str, np.ndarray]:
    """Labels of every annotated track, fitted to its video's decoded frame count (``data.length_policy``).

    Each length mismatch is listed in ``reports/length_mismatches.csv`` and ``reports/data_problems.csv``
    (a warning the first time the run meets it).
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
            notes.append({"txtid": t.txtid, "annotation_lines": len(raw),
                          "decoded_frames": int(n_frames[t.videoid]), "action": note.split(": ")[-1]})
    report(cfg, "length_mismatches", pd.DataFrame(notes, columns=["txtid", "annotation_lines", "decoded_frames", "action"]))
    paths = {t.txtid: str(t.labels_path) for t in index.tracks}
    record_data_problems(cfg, "length", [(paths[n["txtid"]], f"annotation has {n['annotation_lines']} lines, video "
                                          f"decodes to {n['decoded_frames']} frames: {n['action']}") for n in notes])
    return labels


def folds(cfg: Config, index: data.DataIndex) -> dict[str, int]:
    """Video-level folds over Train+Validation (``data.folds_file`` if given, else computed)."""
    if cfg.data.folds_file:   # under data.root, else a file shipped with the profile (params/abaw10_folds.csv)
        path = cfg.data_path(cfg.data.folds_file)
        shipped = cfg.path(cfg.data.folds_file)
        return data.read_folds(path if path.is_file() or not shipped.is_file() else shipped)
    annotated = [t for t in index.tracks if t.labels_path is not None]
    return data.make_folds(data.label_histograms(annotated), n_folds=cfg.data.n_folds, seed=cfg.data.fold_seed,
                           trials=cfg.data.fold_trials)


def feature_store(cfg: Config, kind: str, *, rank: int | None = None) -> FeatureStore:
    """The run's store of ``kind``; with ``rank`` (sharded extraction) it writes that rank's own manifest."""
    name = "manifest.json" if rank is None else f"manifest.rank{rank:05d}.json"
    return FeatureStore(cfg.run_dir / "features", kind, manifest_name=name)


RESUMED_STATUSES = ("skipped (done)", "resumed")


def extraction_report(cfg: Config, name: str, table: pd.DataFrame) -> pd.DataFrame:
    """Write an extraction report, keeping the earlier row of every track this run skipped as done.

    A resumed (or sharded, then re-run) extraction skips finished tracks; their frame counts and
    face / audio coverage come from the report of the run that extracted them, or, when that run
    was killed before writing its report, from the tracks' feature files (``figures_from_file``),
    so the notebook's tables and plots stay complete.
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
    if len(table) and "status" in table:
        kind = name.split("_extraction")[0]
        rank = name.split(".rank")[1] if ".rank" in name else None
        store = feature_store(cfg, kind, rank=int(rank) if rank else None)
        for i in np.flatnonzero(table["status"].isin(RESUMED_STATUSES).to_numpy()):
            if store.done(table.at[i, "txtid"]):
                for column, value in figures_from_file(store, table.at[i, "txtid"]).items():
                    if column in table:
                        table.at[i, column] = value
    report(cfg, name, table)
    return table


def figures_from_file(store: FeatureStore, txtid: str) -> dict[str, int]:
    """A finished track's report figures read back from its feature file (frames; faces by kind, or audio)."""
    from kitlib.faces import BRIDGED, DETECTED, FOLLOWED, MISSING

    path = store.path(txtid)
    with np.load(path) as entry:
        mask = entry["mask"]
        figures = {"frames": len(mask)}
        if "status" in entry.files:
            counts = np.bincount(entry["status"], minlength=4)
            figures |= {name: int(counts[code]) for name, code in
                        (("detected", DETECTED), ("followed", FOLLOWED), ("bridged", BRIDGED), ("missing", MISSING))}
        else:
            figures["frames_with_audio"] = int(mask.sum())
    return figures


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


def probe_table(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray], kind: str,
                 settings: dict[str, tuple[str, int | None]], column: str) -> pd.DataFrame:
    """Linear-probe macro F1 (train on Train_Set, score on Validation_Set) of each feature setting, with
    the probe ``visual.probe`` / ``audio.probe`` names (the reference code's torch probe: visual
    features z-scored then L2-normalised, audio z-scored, inverse class weights for audio only)."""
    from kitlib.metrics import linear_probe_f1

    audio = kind == "audio"
    probe = cfg.audio.probe if audio else cfg.visual.probe
    train = _probe_sets(cfg, index, labels, kind, settings, "Train_Set")
    val = _probe_sets(cfg, index, labels, kind, settings, "Validation_Set")
    return pd.DataFrame([{column: name, "val_f1": linear_probe_f1(*train[name], *val[name], seed=cfg.run.seed,
                                                                  kind=probe, l2=not audio, class_weighted=audio),
                          "train_frames": len(train[name][1]), "val_frames": len(val[name][1]), "probe": probe}
                         for name in settings])


def load_logits(cfg: Config, name: str) -> dict[str, np.ndarray]:
    """Per-track logits saved by stage 05 (``val`` = official validation, ``oof`` = out-of-fold)."""
    path = cfg.run_dir / "fusion" / f"{name}_logits.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run 05_fusion_ablation first")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def save_logits(path: Path, logits_by_track: dict[str, np.ndarray]) -> None:
    from kitlib.store import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **logits_by_track)


def frame_table(cfg: Config, tracks: list[data.Track], labels: dict[str, np.ndarray] | None):
    """Visual + audio features (and labels) of ``tracks`` as one ``fusion.FrameTable`` (memory-mapped with
    ``fusion.memmap_features``)."""
    from kitlib.fusion import load_frame_table

    return load_frame_table(tracks, visual_store=feature_store(cfg, "visual"), audio_store=feature_store(cfg, "audio"),
                            labels=labels, memmap=cfg.fusion.memmap_features)


def with_features(cfg: Config, tracks: list[data.Track], what: str) -> list[data.Track]:
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

def padaug(cfg: Config):
    """The Stage-I PadAug of ``stage1.padaug_style`` (None without ``stage1.padaug``)."""
    from kitlib.visual.padaug import build_padaug

    s = cfg.stage1
    return build_padaug(s.padaug_style, p=s.padaug_p, max_frac=s.padaug_max_frac) if s.padaug else None

def stage1_items(cfg: Config) -> tuple[list, list]:
    """(train, val) image items of the Stage-I dataset named by ``stage1.dataset``."""
    from kitlib.visual import images

    root = cfg.data_path(cfg.stage1.images_root)
    splits = {"train": "Train_Set", "val": "Validation_Set"}
    annotations = cfg.data_path(cfg.data.annotations_dir)
    readers = {"class_folder": lambda split: images.class_folder_items(root / split),
               "affectnet": lambda split: images.affectnet_items(root, split),
               "rafdb": lambda split: images.rafdb_items(root, "test" if split == "val" else split),
               "affectnet_rafdb": lambda split: images.affectnet_rafdb_items(
                   root, cfg.data_path(cfg.stage1.rafdb_root), split),
               "ferplus": lambda split: images.ferplus_items(root, split),
               "ferplus_basic": lambda split: images.ferplus_items(root, split, drop_contempt=True),
               "affwild2": lambda split: images.affwild2_frame_items(root, annotations / splits[split])}
    if cfg.stage1.dataset not in readers:
        raise config.ConfigError(f"stage1.dataset {cfg.stage1.dataset!r} unknown; valid: {', '.join(readers)}")
    return readers[cfg.stage1.dataset]("train"), readers[cfg.stage1.dataset]("val")
