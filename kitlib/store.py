"""Per-video feature files: atomic writes, resumable runs and a manifest.

Every extractor (visual crops, audio) stores one ``.npz`` per annotation file under
``<run>/features/<kind>/``. A file appears under its final name only once it is complete
(written to a temporary name in the same folder, then renamed), so a run that was killed leaves
no file that a re-run could mistake for a finished one.

Sharded extraction (``kitlib.tools.distributed``) runs one process per shard of videos against the same
store: each writes only its own tracks and its own manifest (``manifest_name``); the launcher
merges the per-rank manifests into ``manifest.json`` once every rank has finished.

``consolidate`` turns a store into one memory-mapped ``.npy`` per array key (written once per
store contents), and ``RowView`` selects rows of it without copying, so Stage II fusion can train
on the full release (~1.56 M frames x 2 x 1024 float16 = 6.4 GB) on a 24 GiB machine.

The manifest also records every file's frame count, feature dimension and dtype (``files``), and
every read (``FeatureStore.load``, ``consolidate``) is checked against it: a file replaced after the
extraction (other features, another backbone) is an error that names the file, what the manifest
expects and what was found, never a silent result or a shape error deep in a model.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("kitlib.store")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; the final file gets the usual mode
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno in _DISK_ERRORS and str(path) not in str(exc):  # "No space left on device" names no file
            kind = DiskFullError if exc.errno in DISK_FULL else OSError
            raise kind(exc.errno, f"{os.strerror(exc.errno)} while writing {path}") from exc
        raise
    finally:
        tmp_path.unlink(missing_ok=True)       # the partial file of a failed write


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)
# errors after which no further write to the disk can succeed: a loop over videos stops at the first
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class DiskFullError(OSError):
    """A write failed because the disk is full (or over quota, or read-only); the message names the file."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a write the disk refused for good (``DISK_FULL``): a loop
    that reports one bad video and goes on must stop at this one instead."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class FeatureMismatch(ValueError):
    """A feature file that differs from what its store's manifest records (names the file)."""


def npz_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and dtype of every array in an ``.npz``, read from the headers only (no array data)."""
    out = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            with archive.open(name) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
            out[name.removesuffix(".npy")] = (tuple(int(n) for n in shape), np.dtype(dtype).name)
    return out


class FeatureStore:
    """The folder of one feature kind (``visual``, ``audio``) inside a run.

    Each entry holds at least ``frame_index`` (int32, 1-based frame numbers as in the annotation
    files), ``features`` (float16, frames x dim) and ``mask`` (bool, frames: the feature is real,
    not filled). Extractors may add arrays (per-scale features, timestamps).
    """

    def __init__(self, root: Path, kind: str, *, manifest_name: str = "manifest.json"):
        self.root = Path(root) / kind
        self.kind = kind
        self.manifest_name = manifest_name  # a shard's own manifest under sharded extraction
        self._manifest_cache: tuple[tuple[int, int], dict[str, Any]] | None = None

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def done(self, key: str) -> bool:
        return self.path(key).is_file()

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.npz"))

    def save(self, key: str, *, frame_index: np.ndarray, features: np.ndarray, mask: np.ndarray,
             **extra: np.ndarray) -> Path:
        frame_index = np.asarray(frame_index, dtype=np.int32)
        features = np.asarray(features, dtype=np.float16)
        mask = np.asarray(mask, dtype=bool)
        n = len(frame_index)
        if features.ndim != 2 or len(features) != n or len(mask) != n:
            raise ValueError(f"{self.kind}/{key}: frame_index {frame_index.shape}, features "
                             f"{features.shape} and mask {mask.shape} must agree on the frame count")
        out = self.path(key)
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, frame_index=frame_index, features=features, mask=mask, **extra)
        return out

    def load(self, key: str) -> dict[str, np.ndarray]:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no {self.kind} features for {key!r}: {path} is missing "
                                    f"(run the extraction stage first)")
        with np.load(path) as data:
            entry = {k: data[k] for k in data.files}
        self.check(key, frames=len(entry["frame_index"]) if "frame_index" in entry else None,
                   features=entry.get("features"), mask=entry.get("mask"))
        return entry

    def check(self, key: str, *, frames: int | None, features: np.ndarray | None,
              mask: np.ndarray | None = None) -> None:
        """Raise ``FeatureMismatch`` naming the file when an entry read from it is not what the manifest records.

        Checks that ``frame_index``, ``features`` and ``mask`` agree on the frame count, and (when
        the store has a manifest) the frame count, feature dimension and dtype against the
        manifest's record of this file.
        """
        path = self.path(key)
        n = [len(a) for a in (features, mask) if a is not None] + ([frames] if frames is not None else [])
        if len(set(n)) > 1:
            raise FeatureMismatch(f"{path}: frame_index, features and mask disagree on the frame count ({n}); "
                                  f"the file is damaged: delete it and re-run the {self.kind} extraction")
        record = self.manifest_record(key)
        if record is None or features is None:
            return
        found = {"frames": len(features), "dim": int(features.shape[1]) if features.ndim == 2 else None,
                 "dtype": features.dtype.name}
        if found != record:
            raise FeatureMismatch(
                f"{path}: features are {found['frames']} frames x {found['dim']} ({found['dtype']}), but the store's "
                f"manifest {self.root / self.manifest_name} records {record['frames']} frames x {record['dim']} "
                f"({record['dtype']}): the file changed after the extraction. Delete it and re-run the {self.kind} "
                f"extraction (it resumes: only deleted tracks are extracted again)")

    def manifest_record(self, key: str) -> dict[str, Any] | None:
        """What the manifest records about ``key``'s file (frames, dim, dtype); None when there is no manifest yet."""
        path = self.root / self.manifest_name
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._manifest_cache is None or self._manifest_cache[0] != stamp:
            self._manifest_cache = (stamp, json.loads(path.read_text()))
        files = self._manifest_cache[1].get("files")
        if files is None:                               # a manifest written before files were recorded
            return None
        if key not in files:
            raise FeatureMismatch(f"{self.path(key)} is not in the store's manifest {path} (added after the "
                                  f"extraction finished?); re-run the {self.kind} extraction to record it")
        return files[key]

    def file_records(self) -> dict[str, dict[str, Any]]:
        """Frame count, feature dimension and dtype of every finished file, from the file headers."""
        records = {}
        for key in self.keys():
            shape, dtype = npz_shapes(self.path(key))["features"]
            records[key] = {"frames": shape[0], "dim": shape[1] if len(shape) == 2 else None, "dtype": dtype}
        return records

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest, with the record of every finished file (``files``) taken from the files."""
        write_json_atomic(self.root / self.manifest_name, {**manifest, "files": self.file_records()})

    def partial_files(self) -> list[Path]:
        """Temporary files of writes that never finished (a killed process); never taken as entries."""
        return sorted(self.root.glob(".*.partial"))

    def remove_partial_files(self) -> int:
        """Delete the leftovers of killed writers. Only call this while no writer is running."""
        stale = self.partial_files()
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def read_manifest(self) -> dict[str, Any]:
        path = self.root / self.manifest_name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the {self.kind} extraction has not finished")
        return json.loads(path.read_text())


# ---------------------------------------------------------------------------- consolidated, memory-mapped
class RowView:
    """Rows ``index`` of a 2-D array (typically an ``np.memmap``), gathered only when indexed.

    ``view[rows]`` returns an ``ndarray`` of just those rows; ``view.take(rows)`` a narrower view
    without copying any feature. So a frame table over a memory-mapped cache, its subsets (folds)
    and its batches never hold the whole feature matrix in RAM.
    """

    def __init__(self, base: np.ndarray | RowView, index: np.ndarray):
        if isinstance(base, RowView):
            base, index = base.base, base.index[index]
        self.base = base
        self.index = np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), int(self.base.shape[1]))

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    ndim = 2

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows) -> np.ndarray:
        return np.take(self.base, self.index[rows], axis=0)

    def take(self, rows: np.ndarray) -> RowView:
        return RowView(self, rows)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"RowView({self.shape[0]} of {len(self.base)} rows x {self.shape[1]}, {self.dtype})"


def take_rows(array: np.ndarray | RowView, rows: np.ndarray) -> np.ndarray | RowView:
    """Rows of a feature matrix: a ``RowView`` (no copy) of a memory map or view, else a copy."""
    return RowView(array, rows) if isinstance(array, (RowView, np.memmap)) else array[rows]


@dataclass(frozen=True)
class Consolidated:
    """Every track of a store in one memory-mapped matrix: track ``txtids[i]`` is rows ``offsets[i]:offsets[i+1]``."""

    txtids: tuple[str, ...]
    offsets: np.ndarray      # (T+1,) int64
    frame_index: np.ndarray  # (N,) int32
    mask: np.ndarray         # (N,) bool
    features: np.ndarray     # (N, D) np.memmap, read-only
    path: Path

    def rows(self, txtids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers of ``txtids`` (in that order) and each track's row count, without a per-frame loop."""
        where = {t: i for i, t in enumerate(self.txtids)}
        missing = [t for t in txtids if t not in where]
        if missing:
            raise KeyError(f"{self.path}: no rows for track(s) {missing[:10]}")
        idx = np.fromiter((where[t] for t in txtids), dtype=np.int64, count=len(txtids))
        starts, lengths = self.offsets[idx], np.diff(self.offsets)[idx]
        total = int(lengths.sum())
        first = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        return first + np.arange(total, dtype=np.int64), lengths


def _contents_digest(store: FeatureStore, key: str) -> str:
    """What the cache depends on: the store's file names, sizes and modification times, and the array key."""
    digest = hashlib.sha256(key.encode())
    for path in sorted(store.root.glob("*.npz")):
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def consolidate(store: FeatureStore, key: str = "features") -> Consolidated:
    """The store's ``key`` arrays of every track as one memory-mapped ``.npy`` (built once per store contents).

    Lives in ``<store>/consolidated/<key>-<digest>.npy`` with its index (``.index.npz``: txtids,
    offsets, frame_index, mask). Both are written atomically, the index last, so a killed build is
    simply rebuilt; the cache of older store contents is removed. Building reads each file once
    and holds one track in RAM at a time.
    """
    keys = store.keys()
    if not keys:
        raise FileNotFoundError(f"{store.root}: no feature files to consolidate (run the {store.kind} extraction first)")
    folder = store.root / "consolidated"
    name = f"{key}-{_contents_digest(store, key)}"
    features_path, index_path = folder / f"{name}.npy", folder / f"{name}.index.npz"
    if not (features_path.is_file() and index_path.is_file()):
        _build_consolidated(store, keys, key, features_path, index_path)
    with np.load(index_path) as index:
        txtids = tuple(str(t) for t in index["txtids"])
        offsets, frame_index, mask = index["offsets"], index["frame_index"], index["mask"]
    features = np.load(features_path, mmap_mode="r")
    if len(features) != offsets[-1]:
        raise ValueError(f"{features_path}: {len(features)} rows but its index lists {offsets[-1]}; delete the folder "
                         f"{folder} to rebuild it")
    return Consolidated(txtids=txtids, offsets=offsets, frame_index=frame_index, mask=mask, features=features,
                        path=features_path)


def _build_consolidated(store: FeatureStore, keys: list[str], key: str, features_path: Path, index_path: Path) -> None:
    from kitlib.progress import tqdm

    lengths, dim, dtype = [], None, None
    for txtid in keys:                                   # pass 1: row counts (small arrays only)
        with np.load(store.path(txtid)) as entry:
            if key not in entry.files:
                raise KeyError(f"{store.path(txtid)}: no array {key!r} (it has {entry.files})")
            lengths.append(len(entry["frame_index"]))
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    frame_index = np.empty(offsets[-1], np.int32)
    mask = np.empty(offsets[-1], bool)
    with atomic_path(features_path) as tmp:
        out = None
        for i, txtid in enumerate(tqdm(keys, desc=f"consolidate {store.kind}", unit="track", leave=False)):
            with np.load(store.path(txtid)) as entry:
                feats = entry[key]
                if key == "features":
                    store.check(txtid, frames=lengths[i], features=feats)
                rows = slice(offsets[i], offsets[i + 1])
                if feats.ndim != 2 or len(feats) != lengths[i]:
                    raise ValueError(f"{store.path(txtid)}: {key} has shape {feats.shape}, expected "
                                     f"({lengths[i]}, dim)")
                if out is None:
                    dim, dtype = feats.shape[1], feats.dtype
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(int(offsets[-1]), dim))
                if feats.shape[1] != dim:
                    raise ValueError(f"{store.path(txtid)}: {key} has dim {feats.shape[1]}, track {keys[0]!r} has {dim}")
                out[rows] = feats
                frame_index[rows] = entry["frame_index"]
                mask[rows] = entry["mask"] if "mask" in entry.files else True
        out.flush()
        del out
    with atomic_path(index_path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, txtids=np.array(keys), offsets=offsets, frame_index=frame_index, mask=mask)
    for old in features_path.parent.glob(f"{key}-*"):
        if old.name.split(".")[0] != features_path.stem:
            old.unlink(missing_ok=True)
    log.info("%s: consolidated %d tracks, %d frames x %d (%s) into %s", store.kind, len(keys), offsets[-1], dim,
             dtype, features_path)
