"""Per-video feature files: atomic writes, resumable runs and a manifest.

Every extractor (visual crops, audio) stores one ``.npz`` per annotation file under
``<run>/features/<kind>/``. A file appears under its final name only once it is complete
(written to a temporary name in the same folder, then renamed), so a run that was killed leaves
no file that a re-run could mistake for a finished one.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


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
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class FeatureStore:
    """The folder of one feature kind (``visual``, ``audio``) inside a run.

    Each entry holds at least ``frame_index`` (int32, 1-based frame numbers as in the annotation
    files), ``features`` (float16, frames x dim) and ``mask`` (bool, frames: the feature is real,
    not filled). Extractors may add arrays (per-scale features, timestamps).
    """

    def __init__(self, root: Path, kind: str):
        self.root = Path(root) / kind
        self.kind = kind

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
            return {k: data[k] for k in data.files}

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.root / "manifest.json", manifest)

    def read_manifest(self) -> dict[str, Any]:
        path = self.root / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the {self.kind} extraction has not finished")
        return json.loads(path.read_text())
