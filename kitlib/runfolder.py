"""The run folder under concurrency, interruption and change: its lock, its params, its history, stage markers
that know their inputs, and the checks made before a stage writes.

- **Lock** (``RunLock``): one runner per folder. ``<run>/.lock`` holds an exclusive ``flock`` for the runner's
  life and records its host, pid, start and command; the kernel releases it when the holder dies, so a dead
  holder's lock is taken over (and said so) while a live one is refused with who holds it.
- **Params** (``record_params``): the first run writes ``params.yaml`` by an exclusive link (never over
  another run's), every later one compares, so a folder never records one set of params for results of another.
- **Provenance** (``record_provenance``): the newest run's facts, plus the history of every command run here.
- **Stage markers** (``mark_finished`` / ``stage_status``): ``<run>/stages/<stage>.json`` records digests of
  the inputs the stage read (params, annotation files, name lists, template, videos, feature manifests, the
  models it loaded). When one changed, that stage and the finished ones after it are out of date.
- **Leftovers** (``remove_partial_files``): temporary files of writers that were killed, removed under the lock.
- **Before writing** (``check_can_write``): the stage's folders are writable and the disk has room for its
  estimated output; otherwise it fails at once, naming the path and the space needed.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from kitlib import config
from kitlib.store import write_json_atomic

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunFolderError(SystemExit):
    """The run folder cannot be used as asked (busy, other params, unwritable, full); the message says why."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- lock
@dataclass
class RunLock:
    """The held lock of a run folder; ``taken_over`` is the record of a dead holder it replaced (or None)."""

    path: Path
    fd: int
    taken_over: dict[str, Any] | None

    def release(self) -> None:
        if self.fd < 0:
            return
        os.ftruncate(self.fd, 0)          # an empty lock file: nobody holds the folder
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_lock(run_dir: Path, *, command: list[str]) -> RunLock:
    """Lock ``run_dir`` for this process, or raise ``RunFolderError`` naming the live holder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        holder = _read_holder(path)
        raise RunFolderError(
            f"{run_dir} is in use by another run ({_describe(holder)}): wait for it to finish or stop it, "
            f"or use another run.name=...") from None
    holder = _read_holder(path)
    if holder and holder.get("host") != socket.gethostname():
        # a record left by a machine whose lock we cannot see (a network disk without shared locks)
        os.close(fd)
        raise RunFolderError(f"{run_dir} is recorded as in use by {_describe(holder)}, another machine, and this "
                             f"one cannot tell whether it still runs; if it does not, delete {path}")
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now(), "command": command}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    if holder:
        log.warning("%s: took over the lock of %s, which is no longer running", run_dir, _describe(holder))
    return RunLock(path=path, fd=fd, taken_over=holder or None)


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {"unreadable": str(path)}


def _describe(holder: dict[str, Any]) -> str:
    if not holder or "pid" not in holder:
        return "a process whose record cannot be read"
    return (f"pid {holder['pid']} on host {holder.get('host')}, since {holder.get('started')}: "
            f"{' '.join(holder.get('command') or [])}")


# ---------------------------------------------------------------------------- params and provenance
def record_params(run_dir: Path, cfg: config.Config) -> None:
    """Write ``params.yaml`` if absent (exclusively: never over another writer's), else refuse other params."""
    recorded = Path(run_dir) / "params.yaml"
    recorded.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=".params.yaml.", suffix=".partial", dir=recorded.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, recorded)         # atomic and exclusive: fails if another run recorded first
            return
        except FileExistsError:
            pass
    finally:
        Path(tmp).unlink(missing_ok=True)
    old = yaml.safe_load(recorded.read_text())
    if old != cfg.to_dict():
        changed = sorted(diff_keys(old or {}, cfg.to_dict()))
        raise RunFolderError(f"{run_dir} was made with other params (changed: {', '.join(changed[:8])}); "
                             f"use another run.name=... or delete the folder")


def diff_keys(a: dict, b: dict, prefix: str = "") -> set[str]:
    """Dotted names of the params that differ between two params dicts."""
    out = set()
    for key in set(a) | set(b):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out |= diff_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.add(prefix + key)
    return out


HISTORY_KEYS = ("started", "command", "git_commit", "git_dirty", "host")


def record_provenance(run_dir: Path, facts: dict[str, Any]) -> None:
    """Write ``provenance.json``: this run's ``facts`` plus ``history``, one entry per command run in the folder."""
    path = Path(run_dir) / "provenance.json"
    history: list[dict[str, Any]] = []
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        history = old.get("history") or ([{k: old.get(k) for k in HISTORY_KEYS}] if old else [])
    facts = {**facts, "host": facts.get("host", socket.gethostname())}
    write_json_atomic(path, {**facts, "history": history + [{k: facts.get(k) for k in HISTORY_KEYS}]})


# ---------------------------------------------------------------------------- leftovers
def remove_partial_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files (and folders) of writers that were killed. Call only while holding the lock."""
    removed = []
    for path in sorted(Path(run_dir).rglob(".*.partial")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# ---------------------------------------------------------------------------- what each stage reads and writes
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
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "01_padaug_preview": (),
    "02_stage1_train": ("stage1",),
    "03_crop_extract": ("features", "features/visual"),
    "04_audio_align": ("features", "features/audio"),
    "05_fusion_ablation": ("fusion",),
    "06_smoothing_sweep": ("fusion",),
    "07_submission": ("submission",),
}
ALWAYS_WRITTEN = ("notebooks", "reports", "stages")


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


BY_CONTENT = ("annotations", "test_names", "template", "folds_file", "visual_manifest", "audio_manifest")


def _digest_paths(paths: list[Path], *, content: bool) -> str:
    """sha256 over the files (recursively): their contents, or (large files) their names, sizes and times."""
    digest = hashlib.sha256()
    for top in paths:
        files = sorted(p for p in top.rglob("*") if p.is_file() and not p.name.startswith(".")) if top.is_dir() \
            else [top] if top.is_file() else []
        digest.update(f"{top}:{len(files)}\n".encode())
        for path in files:
            if content:
                digest.update(f"{path.relative_to(top) if top.is_dir() else path.name}\0".encode())
                digest.update(hashlib.sha256(path.read_bytes()).digest())
            else:
                stat = path.stat()
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def input_digests(stage: str, cfg: config.Config, run_dir: Path) -> dict[str, str]:
    """Digests of the inputs ``stage`` reads (``STAGE_INPUTS``), as they are now."""
    out = {}
    for name in STAGE_INPUTS[stage]:
        out[name] = cfg.digest() if name == "params" else \
            _digest_paths(_input_paths(name, cfg, run_dir), content=name in BY_CONTENT)
    return out


def marker_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "stages" / f"{stage}.json"


def mark_started(run_dir: Path, stage: str) -> None:
    """A stage that starts is no longer finished (its outputs are being replaced), whatever happens next."""
    marker_path(run_dir, stage).unlink(missing_ok=True)


def mark_finished(run_dir: Path, stage: str, cfg: config.Config, *, seconds: float) -> None:
    """Record that ``stage`` finished, with the digests of the inputs it read."""
    write_json_atomic(marker_path(run_dir, stage),
                      {"stage": stage, "seconds": round(seconds, 1), "params_digest": cfg.digest(), "finished": _now(),
                       "inputs": input_digests(stage, cfg, run_dir)})


@dataclass(frozen=True)
class StageStatus:
    stage: str
    finished: bool
    changed: tuple[str, ...] = ()   # inputs that differ from those the stage read
    after: str | None = None        # an earlier stage that is out of date (so this one is too)

    @property
    def out_of_date(self) -> bool:
        return self.finished and bool(self.changed or self.after)

    def why(self) -> str:
        if self.changed:
            return f"its input(s) changed since it ran: {', '.join(self.changed)}"
        return f"it comes after {self.after}, which is out of date"


def stage_status(stages: tuple[str, ...], cfg: config.Config, run_dir: Path) -> dict[str, StageStatus]:
    """Each stage: finished or not, and whether it is out of date (its inputs, or an earlier stage's, changed)."""
    out: dict[str, StageStatus] = {}
    first_stale: str | None = None
    for stage in stages:
        path = marker_path(run_dir, stage)
        if not path.is_file():
            out[stage] = StageStatus(stage, finished=False)
            continue
        recorded = json.loads(path.read_text()).get("inputs")
        changed: tuple[str, ...] = ()
        if recorded is not None:                         # markers written before inputs were recorded: trusted
            now = input_digests(stage, cfg, run_dir)
            changed = tuple(k for k in now if recorded.get(k) != now[k])
        out[stage] = StageStatus(stage, finished=True, changed=changed, after=None if changed else first_stale)
        if changed and first_stale is None:
            first_stale = stage
    return out


# ---------------------------------------------------------------------------- before a stage writes
def estimated_output_bytes(stage: str, cfg: config.Config, run_dir: Path) -> int:
    """A generous estimate of what ``stage`` still writes: feature stores from the probed frame count (less what
    a resumed extraction already holds), else a floor."""
    floor = 256 * 2 ** 20
    videos = Path(run_dir) / "reports" / "videos.csv"
    if stage not in ("03_crop_extract", "04_audio_align") or not videos.is_file():
        return floor
    import pandas as pd

    frames = int(pd.read_csv(videos, keep_default_na=False)["n_frames"].sum())
    features = Path(run_dir) / "features"
    if stage == "03_crop_extract":
        dim = _visual_dim(cfg)
        per_frame = (1 + len(cfg.faces.crop_scales)) * dim * 2 + 64       # features, per scale, boxes and flags
        stores = max(1, len(cfg.stage1.table1_states))                   # Table-1 states get their own store
        held = sum(p.stat().st_size for p in features.glob("visual*/*.npz"))
        return floor + max(0, frames * per_frame * stores - held)
    dim = _audio_dim(cfg)
    held = sum(p.stat().st_size for p in features.glob("audio/*.npz"))
    return floor + max(0, frames * (2 + len(cfg.audio.ablation_windows_total_s)) * dim * 2 - held)


def _visual_dim(cfg: config.Config) -> int:
    overrides = cfg.stage1.arch_overrides or {}
    if "embed_dim" in overrides:
        return int(overrides["embed_dim"])
    sizes = {"tiny": 192, "small": 384, "base": 768, "large": 1024, "huge": 1280, "giant": 1536}
    return next((d for name, d in sizes.items() if name in cfg.stage1.arch), 1024)


def _audio_dim(cfg: config.Config) -> int:
    try:
        return int(json.loads((cfg.path(cfg.audio.encoder) / "config.json").read_text())["hidden_size"])
    except (OSError, ValueError, KeyError):
        return 1024


def check_can_write(stage: str, cfg: config.Config, run_dir: Path) -> None:
    """Fail at once, naming the path, if ``stage`` cannot write its folders or the disk lacks room for its output."""
    run_dir = Path(run_dir)
    for rel in ALWAYS_WRITTEN + STAGE_OUTPUTS[stage]:
        folder = run_dir / rel
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise RunFolderError(f"[{stage}] cannot write to {folder} ({exc.strerror or exc}): the stage writes "
                                 f"its outputs there; make it writable or use another run.outputs_root") from None
    needed = estimated_output_bytes(stage, cfg, run_dir)
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise RunFolderError(f"[{stage}] {run_dir} has {free / 2 ** 30:.1f} GiB free, the stage needs about "
                             f"{needed / 2 ** 30:.1f} GiB: free space there or use another run.outputs_root")
