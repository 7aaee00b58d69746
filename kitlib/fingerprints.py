"""Fingerprints of what a stage's result depends on, not where it lies: the params the stage reads (without
``config.LOCATION_KEYS``), and the files it reads by content, named relative to their input folder.

Content digests are kept in a small cache in the run folder (``DigestCache``), looked up by the file's place
relative to the run folder or the data root, its size and its modification time, so that fingerprinting
stays cheap (a file is read again only when it changed) and survives a run folder that is renamed, moved or
copied with its times, or a moved data root. ``kitlib.runfolder`` records them in the stage markers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from kitlib import config
from kitlib.store import write_json_atomic

log = logging.getLogger(__name__)

STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "01_padaug_preview": ("params",),
    "02_stage1_train": ("params", "annotations"),
    "03_crop_extract": ("params", "annotations", "test_names", "videos", "stage1"),
    "04_audio_align": ("params", "annotations", "test_names", "videos"),
    "05_fusion_ablation": ("params", "annotations", "folds_file", "visual_manifest", "audio_manifest"),
    "06_smoothing_sweep": ("params", "annotations", "fusion_logits"),
    "07_submission": ("params", "annotations", "test_names", "template", "visual_manifest", "audio_manifest",
                      "final_head"),
}
# the params sections each stage (its wiring module and notebook, and the common helpers they call) reads;
# run and data (less config.LOCATION_KEYS) and demo (it makes the demo data) shape every stage
_EVERY_STAGE = ("run", "data", "demo")
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "01_padaug_preview": (*_EVERY_STAGE, "stage1"),
    "02_stage1_train": (*_EVERY_STAGE, "stage1"),
    "03_crop_extract": (*_EVERY_STAGE, "faces", "stage1", "visual"),
    "04_audio_align": (*_EVERY_STAGE, "audio"),
    "05_fusion_ablation": (*_EVERY_STAGE, "faces", "stage1", "visual", "audio", "fusion", "smoothing"),
    "06_smoothing_sweep": (*_EVERY_STAGE, "fusion", "smoothing"),
    "07_submission": (*_EVERY_STAGE, "fusion", "smoothing", "submission"),
}
FINGERPRINT_VERSION = 2     # markers: params by stage, files by content, names relative (1: absolute paths, times)


def _input_paths(name: str, cfg: config.Config, run_dir: Path) -> list[Path]:
    d = cfg.data
    if name == "annotations":
        folder = cfg.data_path(d.annotations_dir)
        return [folder / "Train_Set", folder / "Validation_Set"]
    if name == "test_names":
        return [cfg.data_path(d.test_names)] if d.test_names else []
    if name == "template":
        return [cfg.data_path(d.test_template)]
    if name == "videos":
        return [cfg.data_path(d.videos_dir)]
    if name == "folds_file":
        return [cfg.data_path(d.folds_file)] if d.folds_file else []
    if name in ("visual_manifest", "audio_manifest"):
        return [run_dir / "features" / name.split("_")[0] / "manifest.json"]
    if name == "stage1":
        return [run_dir / "stage1"]
    if name == "fusion_logits":
        return [run_dir / "fusion" / "val_logits.npz", run_dir / "fusion" / "oof_logits.npz"]
    if name == "final_head":
        return [run_dir / "fusion" / "final_head.pt"]
    raise KeyError(f"unknown stage input {name!r}")


def _files(top: Path) -> list[Path]:
    """The files an input path stands for: itself, or the visible files below a folder (sorted)."""
    if top.is_dir():
        return sorted(p for p in top.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(top).parts))
    return [top] if top.is_file() else []


DIGEST_CACHE = ".digests.json"


class DigestCache:
    """Content digests (sha256) of files, remembered by their place, size and modification time.

    A file is read again only when its size or modification time changed. Places are relative to the run
    folder (``run:stage1/...``) or the data root (``data:videos/...``), so a run folder copied with its times
    (``cp -a``, ``rsync -a``, ``mv``, ``kitlib.run --from``) or a moved data root finds its digests without
    reading a byte. The cache lives in ``<run>/.digests.json``, written atomically; an unreadable or damaged
    one is ignored (the digests are computed again)."""

    def __init__(self, run_dir: Path, data_root: Path | None):
        self.path = Path(run_dir) / DIGEST_CACHE
        self.anchors = [("run", Path(run_dir))] + ([("data", Path(data_root))] if data_root else [])
        self.entries: dict[str, list] = {}
        self.changed = False
        try:
            entries = json.loads(self.path.read_text()).get("files", {})
            self.entries = {k: v for k, v in entries.items() if isinstance(v, list) and len(v) == 3}
        except (OSError, ValueError, AttributeError):
            pass                                # none yet, or damaged: computed again

    def place(self, path: Path) -> str:
        for name, anchor in self.anchors:
            if path.is_relative_to(anchor):
                return f"{name}:{path.relative_to(anchor).as_posix()}"
        return str(path.resolve())

    def digest(self, path: Path, stat: os.stat_result | None = None, bar=None) -> str:
        stat = stat or path.stat()
        key = self.place(path)
        hit = self.entries.get(key)
        if hit and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
            return hit[2]
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(2 ** 20):
                digest.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        self.entries[key] = [stat.st_size, stat.st_mtime_ns, digest.hexdigest()]
        self.changed = True
        return self.entries[key][2]

    def unknown_bytes(self, paths: list[Path]) -> int:
        total = 0
        for path in paths:
            stat = path.stat()
            hit = self.entries.get(self.place(path))
            if not (hit and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns):
                total += stat.st_size
        return total

    def save(self) -> None:
        if self.changed and self.path.parent.is_dir():
            try:
                write_json_atomic(self.path, {"files": self.entries})
            except OSError as exc:                   # a read-only or full disk: the digests are computed again
                log.warning("cannot keep the file digests in %s (%s)", self.path, exc)
            self.changed = False


def params_digest(stage: str, cfg: config.Config) -> str:
    """A short hash of the params ``stage`` reads (``STAGE_PARAMS``), without where things lie."""
    return hashlib.sha256(json.dumps(cfg.results_dict(STAGE_PARAMS[stage]), sort_keys=True).encode()).hexdigest()[:16]


def _digest_files(tops: list[Path], cache: DigestCache, bar) -> str:
    """sha256 over the contents of the files (recursively), named relative to their input path."""
    digest = hashlib.sha256()
    for i, top in enumerate(tops):
        files = _files(top)
        digest.update(f"{i}:{len(files)}\n".encode())     # an empty folder is no folder (a copy may leave it out)
        for path in files:
            digest.update(f"{path.relative_to(top).as_posix() if top.is_dir() else ''}\0".encode())
            digest.update(cache.digest(path, bar=bar).encode())
    return digest.hexdigest()[:16]


def input_digests(stage: str, cfg: config.Config, run_dir: Path, *, cache: DigestCache | None = None
                  ) -> dict[str, str]:
    """Digests of what ``stage`` reads (``STAGE_INPUTS``), as it is now: the params of the stage, and files by
    content (digests kept in the run folder's ``DigestCache``; a progress bar while unknown files are read)."""
    from kitlib.progress import tqdm

    own_cache = cache is None
    cache = cache or DigestCache(run_dir, cfg.path(cfg.data.root))
    paths = {name: _input_paths(name, cfg, run_dir) for name in STAGE_INPUTS[stage] if name != "params"}
    unknown = cache.unknown_bytes([f for tops in paths.values() for top in tops for f in _files(top)])
    bar = tqdm(total=unknown, desc=f"fingerprint inputs of {stage}", unit="B", unit_scale=True, leave=False,
               disable=unknown < 256 * 2 ** 20)
    try:
        out = {name: params_digest(stage, cfg) if name == "params" else _digest_files(paths[name], cache, bar)
               for name in STAGE_INPUTS[stage]}
    finally:
        bar.close()
        if own_cache:
            cache.save()
    return out


def legacy_input_digests(stage: str, cfg: config.Config, run_dir: Path) -> dict[str, str]:
    """The digests markers recorded before ``FINGERPRINT_VERSION`` 2 (absolute paths, sizes and times of large
    files): compared once to tell whether an old marker is current, then the marker is fingerprinted anew."""
    out = {}
    for name in STAGE_INPUTS[stage]:
        if name == "params":
            out[name] = cfg.digest()
            continue
        content = name in ("annotations", "test_names", "template", "folds_file", "visual_manifest", "audio_manifest")
        digest = hashlib.sha256()
        for top in _input_paths(name, cfg, run_dir):
            files = sorted(p for p in top.rglob("*") if p.is_file() and not p.name.startswith(".")) \
                if top.is_dir() else [top] if top.is_file() else []
            digest.update(f"{top}:{len(files)}\n".encode())
            for path in files:
                if content:
                    digest.update(f"{path.relative_to(top) if top.is_dir() else path.name}\0".encode())
                    digest.update(hashlib.sha256(path.read_bytes()).digest())
                else:
                    stat = path.stat()
                    digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        out[name] = digest.hexdigest()[:16]
    return out
