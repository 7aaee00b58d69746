"""The run folder under concurrency, interruption and change: its lock, its params, its history, stage markers
that know their inputs, and the checks made before a stage writes.

- **Lock** (``RunLock``): one runner per folder. ``<run>/.lock`` holds an exclusive ``flock`` for the runner's
  life and records its host, pid, start and command; the kernel releases it when the holder dies, so a dead
  holder's lock is taken over (and said so) while a live one is refused with who holds it.
- **Params** (``record_params``): the first run writes ``params.yaml`` by an exclusive link (never over
  another run's), every later one compares, so a folder never records one set of params for results of another.
- **Provenance** (``prepare_run_dir``, ``record_provenance``): git commit, package versions, seed and GPU of the
  newest run, plus the history of every command run here.
- **Stage markers** (``mark_finished`` / ``stage_status``): ``<run>/stages/<stage>.json`` records fingerprints
  of what the stage's result depends on (``kitlib.fingerprints``: the params it reads, annotation files, name
  lists, template, videos, Stage-I and fusion outputs, feature manifests, by content and relative names). When
  one changed, that stage and the finished ones that build on it (``BUILDS_ON``) are out of date. A run folder
  renamed, moved or copied, or a moved data root, stays current.
- **Branching** (``branch_run``): a new run folder started from a finished one reuses the stages its params
  leave current (feature files hard-linked) and leaves the others to run.
- **Leftovers** (``remove_partial_files``): temporary files of writers that were killed, removed under the lock.
- **Before writing** (``check_can_write``): the stage's folders are writable and the disk has room for its
  estimated output; otherwise it fails at once, naming the path and the space needed.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from kitlib import config, fingerprints
from kitlib.fingerprints import FINGERPRINT_VERSION, DigestCache, input_digests
from kitlib.store import write_json_atomic, write_text_atomic

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
def record_params(run_dir: Path, cfg: config.Config) -> str | None:
    """Write ``params.yaml`` if absent (exclusively: never over another writer's), else refuse other params.

    Params that differ only in where things lie (``config.LOCATION_KEYS``: a renamed, moved or copied run
    folder, a moved data root) are the same params: ``params.yaml`` is updated to the new place and the
    returned line says so (None when nothing changed)."""
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
            return None
        except FileExistsError:
            pass
    finally:
        Path(tmp).unlink(missing_ok=True)
    old = yaml.safe_load(recorded.read_text()) or {}
    if config.without_location(old) != cfg.results_dict():
        changed = sorted(diff_keys(config.without_location(old), cfg.results_dict()))
        raise RunFolderError(f"{run_dir} was made with other params (changed: {', '.join(changed[:8])}); "
                             f"use another run.name=... or delete the folder")
    moved = sorted(diff_keys(old, cfg.to_dict()))
    if not moved:
        return None
    write_text_atomic(recorded, text)
    return (f"{run_dir}: same params, new place ({'; '.join(f'{k}: {_dotted(old, k)} -> {_dotted(cfg.to_dict(), k)}' for k in moved)}); "
            f"params.yaml updated")


def _dotted(values: dict, key: str) -> Any:
    for part in key.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


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


TRACKED_PACKAGES = ("torch", "torchvision", "torchaudio", "transformers", "timm", "decord", "av", "opencv-python",
                    "face-alignment", "numpy", "scipy", "pandas", "scikit-learn", "seaborn", "papermill", "safetensors")


def provenance(cfg: config.Config, argv: list[str]) -> dict:
    """Git commit, package versions, seed, command and GPU of a run."""
    from kitlib.runtime import gpu_info       # imports torch: only when a run folder is prepared

    root = config.repo_root()

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"git_commit": git("rev-parse", "--verify", "-q", "HEAD") or None, "git_dirty": bool(git("status", "--porcelain")),
            "params_digest": cfg.digest(), "seed": cfg.run.seed, "python": sys.version.split()[0],
            "platform": platform.platform(), "packages": versions, "command": argv, "gpu": gpu_info(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "random_weights": cfg.random_weights()}


def prepare_run_dir(cfg: config.Config, *, argv: list[str]) -> Path:
    """Create the run folder (or reopen it with the same params) and record params + provenance (with history)."""
    run_dir = cfg.run_dir
    moved = record_params(run_dir, cfg)
    if moved:
        print(moved, flush=True)
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    record_provenance(run_dir, provenance(cfg, argv))
    return run_dir


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
# the earlier stages whose outputs a stage reads: when one of them is out of date, so is the stage
BUILDS_ON: dict[str, tuple[str, ...]] = {
    "01_padaug_preview": (),
    "02_stage1_train": (),
    "03_crop_extract": ("02_stage1_train",),
    "04_audio_align": (),
    "05_fusion_ablation": ("03_crop_extract", "04_audio_align"),
    "06_smoothing_sweep": ("05_fusion_ablation",),
    "07_submission": ("05_fusion_ablation", "06_smoothing_sweep"),
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
# what only this stage writes (globs under the run folder), and what it would otherwise resume from: removed
# before a stage that must compute again runs (``clear_outputs``), never copied by ``branch_run`` for one
OWN_OUTPUTS: dict[str, tuple[str, ...]] = {
    "01_padaug_preview": (),
    "02_stage1_train": ("stage1",),
    "03_crop_extract": ("features/visual", "features/visual_*"),
    "04_audio_align": ("features/audio",),
    "05_fusion_ablation": ("fusion",),
    "06_smoothing_sweep": (),
    "07_submission": ("submission",),
}
ALWAYS_WRITTEN = ("notebooks", "reports", "stages")


def marker_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "stages" / f"{stage}.json"


def mark_started(run_dir: Path, stage: str) -> None:
    """A stage that starts is no longer finished (its outputs are being replaced), whatever happens next."""
    marker_path(run_dir, stage).unlink(missing_ok=True)


def mark_finished(run_dir: Path, stage: str, cfg: config.Config, *, seconds: float | None = None,
                  started: float | None = None, finished: str | None = None) -> float:
    """Record that ``stage`` finished, with the digests of the inputs it read; return its seconds: ``seconds``,
    or the time since ``started`` (``time.time()``) with the digests included, as the terminal counts it."""
    inputs = input_digests(stage, cfg, run_dir)
    if seconds is None:
        seconds = time.time() - started if started is not None else 0.0
    write_json_atomic(marker_path(run_dir, stage),
                      {"stage": stage, "seconds": round(seconds, 1), "params_digest": cfg.digest(),
                       "finished": finished or _now(), "fingerprint": FINGERPRINT_VERSION, "inputs": inputs})
    return round(seconds, 1)


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds of every finished stage of a run folder, from its markers (what the summary page adds up)."""
    out = {}
    for marker in sorted((Path(run_dir) / "stages").glob("*.json")):
        try:
            out[marker.stem] = float(json.loads(marker.read_text()).get("seconds") or 0.0)
        except (ValueError, OSError):
            continue
    return out


@dataclass(frozen=True)
class StageStatus:
    stage: str
    finished: bool
    changed: tuple[str, ...] = ()   # inputs that differ from those the stage read
    after: str | None = None        # an earlier stage it builds on that is out of date (so this one is too)
    old_marker: bool = False        # a marker from before location-free fingerprints that no longer matches

    @property
    def out_of_date(self) -> bool:
        return self.finished and bool(self.changed or self.after)

    @property
    def recompute(self) -> bool:
        """Out of date in what it computes (its params, its Stage-I backbone, an earlier stage), not only in
        which data files it covers: its own outputs cannot be resumed from (``clear_outputs``)."""
        return self.out_of_date and (bool(self.after) or self.old_marker or bool({"params", "stage1"} & set(self.changed)))

    def why(self) -> str:
        if self.changed:
            return (f"its input(s) changed since it ran: {', '.join(self.changed)}"
                    + (" (its marker, written by an older kit, recorded where the files lay: a run folder moved or "
                       "copied before this version runs its stages again)" if self.old_marker else ""))
        return f"it builds on {self.after}, which is out of date"


def ancestors(stage: str) -> list[str]:
    """The stages ``stage`` builds on, directly or through others (``BUILDS_ON``), in run order."""
    found, todo = set(), list(BUILDS_ON[stage])
    while todo:
        s = todo.pop()
        if s not in found:
            found.add(s)
            todo += BUILDS_ON[s]
    return [s for s in BUILDS_ON if s in found]


def stage_status(stages: tuple[str, ...], cfg: config.Config, run_dir: Path, *, upgrade: bool = False
                 ) -> dict[str, StageStatus]:
    """Each stage: finished or not, and whether it is out of date (its inputs, or those of a stage it builds on,
    changed). A marker of an older kit (``FINGERPRINT_VERSION``) is compared as it was recorded; when it still
    matches and ``upgrade`` (the runner, holding the lock), it is fingerprinted anew."""
    out: dict[str, StageStatus] = {}
    cache = DigestCache(run_dir, cfg.path(cfg.data.root))
    for stage in stages:
        path = marker_path(run_dir, stage)
        try:
            marker = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"{path} cannot be read ({exc}): delete it to run {stage} again") from None
        if marker is None:
            out[stage] = StageStatus(stage, finished=False)
            continue
        recorded = marker.get("inputs")
        old = marker.get("fingerprint", 1) < FINGERPRINT_VERSION
        changed: tuple[str, ...] = ()
        if recorded is not None:
            now = (fingerprints.legacy_input_digests(stage, cfg, run_dir) if old
                   else input_digests(stage, cfg, run_dir, cache=cache))
            changed = tuple(k for k in now if recorded.get(k) != now[k])
        if old and not changed and upgrade:          # current (or never fingerprinted): fingerprint it anew
            mark_finished(run_dir, stage, cfg, seconds=float(marker.get("seconds", 0.0)), finished=marker.get("finished"))
            old = False
        after = next((s for s in ancestors(stage) if s in out and out[s].out_of_date), None)
        out[stage] = StageStatus(stage, finished=True, changed=changed, after=None if changed else after,
                                 old_marker=old and bool(changed))
    cache.save()
    return out


def clear_outputs(run_dir: Path, stage: str) -> list[Path]:
    """Remove what only ``stage`` writes (``OWN_OUTPUTS``), so that it computes again rather than resuming
    from outputs made with other params. Call only while holding the lock."""
    removed = []
    for pattern in OWN_OUTPUTS[stage]:
        for path in sorted(Path(run_dir).glob(pattern)):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path)
    return removed


# ---------------------------------------------------------------------------- branching a run
BRANCH_RECORD = "branched_from.json"
_NOT_COPIED = {LOCK_NAME, "params.yaml", "provenance.json", BRANCH_RECORD, "summary.html", "summary.md", "summary.json"}


def source_run_dir(spec: str, cfg: config.Config) -> Path:
    """``--from``'s run folder: a path to one, else a ``run.name`` beside this run's folder."""
    path = Path(spec).expanduser()
    folder = path if path.is_dir() and (path / "params.yaml").is_file() else cfg.path(cfg.run.outputs_root) / spec
    if not (folder / "params.yaml").is_file():
        raise RunFolderError(f"--from {spec}: {folder} is no run folder (it has no params.yaml)")
    return folder.resolve()


def branch_run(source: Path, run_dir: Path, cfg: config.Config, stages: tuple[str, ...]) -> str:
    """Start ``run_dir`` (params ``cfg``) from the finished run ``source``: its stages that are current for
    ``cfg`` (same params of theirs, same input files) are reused, the others left to run. Returns a line
    saying what was reused.

    Files are placed by atomic renames and each reused stage's marker last, so an interrupted branch is
    finished by the same command (or its stages simply run). Feature files are hard-linked (the kit only ever
    replaces them by rename, never writes into one; copied where the two folders are on different disks),
    everything else is copied with its modification time, so the digest cache's entries still hold. Call
    holding ``run_dir``'s lock; ``source`` is locked while it is read."""
    run_dir, source = Path(run_dir), Path(source)
    if run_dir.resolve() == source.resolve():
        raise RunFolderError(f"--from {source}: that is this run's own folder; give run.name=... a new name")
    record = run_dir / BRANCH_RECORD
    if (run_dir / "params.yaml").is_file() and not record.is_file():
        raise RunFolderError(f"{run_dir} exists (a run of its own): --from starts a new run folder; choose "
                             f"another run.name=..., or drop --from to resume it")
    if record.is_file():
        earlier = json.loads(record.read_text()).get("source")
        if earlier != str(source):
            raise RunFolderError(f"{run_dir} was branched from {earlier}, not {source}; choose another run.name=...")
        if (run_dir / "params.yaml").is_file():      # written once the branch was complete: its own run since
            return f"{run_dir} was branched from {source} before: --from has nothing more to do"
    try:
        source_lock = acquire_lock(source, command=["branch", str(source), "->", str(run_dir)])
    except PermissionError:                          # a read-only copy: nobody runs in it
        source_lock = contextlib.nullcontext()
    with source_lock:
        status = stage_status(stages, cfg, source)
        reused = [s for s in stages if status[s].finished and not status[s].out_of_date]
        skipped = {p for s in stages if s not in reused for pattern in OWN_OUTPUTS[s] for p in source.glob(pattern)}
        skipped |= {source / sub / f"{s}{ext}" for s in stages if s not in reused
                    for sub, ext in (("notebooks", ".ipynb"), ("logs", ".log"), ("stages", ".json"))}
        if any("videos" in status[s].changed for s in stages):
            skipped.add(source / "reports" / "videos.csv")   # the probed videos of other files
        write_json_atomic(record, {"source": str(source), "started": _now(), "reused": reused})
        linked = copied = size = 0
        markers = []
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source)
            if (path.is_dir() or rel.parts[0] in _NOT_COPIED or path.name.endswith(".partial")
                    or any(path == p or path.is_relative_to(p) for p in skipped)):
                continue
            if rel.parts[0] == "stages":
                markers.append(rel)                  # last: a stage is reused only once its files are in place
                continue
            how = _place(path, run_dir / rel, link=rel.parts[0] == "features")
            linked, copied, size = linked + (how == "linked"), copied + (how == "copied"), size + path.stat().st_size
        for rel in markers:
            _place(source / rel, run_dir / rel, link=False)
    return (f"branched from {source}: reused {', '.join(s[:2] for s in reused) or 'no stage'} ({linked} file(s) "
            f"hard-linked, {copied} copied, {size / 2 ** 30:.2f} GiB); to run: "
            f"{', '.join(s[:2] for s in stages if s not in reused) or 'none'}")


def _place(source: Path, target: Path, *, link: bool) -> str:
    """Put ``source`` at ``target`` (hard link, else a copy with its times) by an atomic rename; ``""`` when
    ``target`` already holds it (an earlier, interrupted branch)."""
    from kitlib.store import atomic_path

    stat = source.stat()
    if target.is_file() and (target.stat().st_size, target.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns):
        return ""
    if link:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{os.getpid()}.link.partial"
        try:
            tmp.unlink(missing_ok=True)
            os.link(source, tmp)
            os.replace(tmp, target)
            return "linked"
        except OSError:                              # another disk, or links not allowed: copied
            tmp.unlink(missing_ok=True)
    with atomic_path(target) as tmp:
        shutil.copy2(source, tmp)
    return "copied"


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
