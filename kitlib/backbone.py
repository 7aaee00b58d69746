"""The DINOv2 visual encoder E_v of Stage I (seed 000, sec. 3.1.2, eq. 1): build, freeze, save, load.

The backbone is a timm DINOv2 ViT (``vit_{small,base,large,giant}_patch14[_reg4]_dinov2``) built with
``num_classes=0`` so that ``model(x)`` returns the CLS feature ``u`` (B, D) (D = 1024 for ViT-L/14).
Nothing is ever downloaded: the model is built with random weights, then a local checkpoint (timm or
original DINOv2 key names, ``.safetensors`` / ``.pth`` / ``.bin``) is loaded through timm's
``checkpoint_filter_fn``, which also resamples the position embedding when ``img_size`` differs
from the checkpoint's.

An adapted backbone is saved alone (the Stage-I head is discarded, sec. 3.1.2) as safetensors with
its build record (arch, overrides, img_size, training params, metrics) in the file's metadata and
in a ``<file>.json`` beside it, so ``load_backbone`` can rebuild it without any other input.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import checkpoint_filter_fn

from kitlib.store import atomic_path, write_json_atomic

log = logging.getLogger("kitlib.backbone")

DINOV2_ARCHS: tuple[str, ...] = tuple(
    f"vit_{size}_patch14{reg}_dinov2" for size in ("small", "base", "large", "giant") for reg in ("", "_reg4"))
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_RECORD_KEY = "kit_record"          # safetensors metadata key holding the JSON record
_WRAPPER_KEYS = ("model", "state_dict", "teacher", "student", "model_ema")
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")


def build_backbone(*, arch: str = "vit_large_patch14_dinov2", weights: Path | None = None,
                   img_size: int | None = None, overrides: dict[str, Any] | None = None) -> torch.nn.Module:
    """A DINOv2 ViT whose forward returns CLS features (B, D); weights from a local file or random.

    ``weights``: a checkpoint file, or a folder holding exactly one (``model.safetensors`` preferred).
    ``img_size``: input resolution (None = timm's default for ``arch``, 518 for DINOv2).
    ``overrides``: extra ``timm.create_model`` kwargs (``depth``, ``embed_dim``, ``num_heads`` ...),
    used by tests and the CPU demo to build a tiny DINOv2-shaped model.
    """
    if arch not in timm.list_models():
        raise ValueError(f"unknown backbone arch {arch!r}; DINOv2 archs are {', '.join(DINOV2_ARCHS)}")
    overrides = dict(overrides or {})
    bad = {"pretrained", "num_classes", "img_size"} & overrides.keys()
    if bad:
        raise ValueError(f"overrides may not set {sorted(bad)}: they are fixed or given as their own argument")
    kwargs = dict(overrides)
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    model.kit_build = {"arch": arch, "img_size": img_size, "overrides": overrides}
    if weights is not None:
        path = resolve_weights_file(Path(weights))
        load_weights(model, path)
    log.info("backbone %s: %d blocks, dim %d, img_size %s, %.1fM params, weights %s", arch, len(model.blocks),
             model.num_features, model.patch_embed.img_size, sum(p.numel() for p in model.parameters()) / 1e6,
             weights if weights is not None else "random init")
    return model


def resolve_weights_file(path: Path) -> Path:
    """The checkpoint file to load: ``path`` itself, or the single weights file in the folder ``path``."""
    if path.is_file():
        return path
    if path.is_dir():
        preferred = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if preferred:
            return preferred[0]
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(f"backbone weights folder {path} holds {len(found)} weight files "
                                f"({[p.name for p in found]}); point `weights` at one file")
    raise FileNotFoundError(f"backbone weights {path} do not exist (nothing is downloaded: put the "
                            f"DINOv2 checkpoint there, .safetensors/.pth/.bin)")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The raw tensors of a checkpoint file (on CPU), unwrapped from ``{"model": ...}``-style containers."""
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle with code objects, wrong format
        raise ValueError(f"cannot read backbone checkpoint {path}: {err}") from err
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"backbone checkpoint {path} does not hold a flat state dict of tensors")
    return state


def _to_timm_keys(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, flatten DINOv2 block chunks, drop heads, then apply timm's filter."""
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    # original DINOv2 training checkpoints with block_chunks > 0: blocks.<chunk>.<i>.* (i is global)
    state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "dino_head.", "ibot_head."))}
    return checkpoint_filter_fn(state, model)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a timm or original-DINOv2 checkpoint into ``model`` (pos embed resampled to its grid)."""
    state = _to_timm_keys(read_state_dict(path), model)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch: wrong arch for this checkpoint
        raise ValueError(f"backbone checkpoint {path} does not fit arch "
                         f"{getattr(model, 'kit_build', {}).get('arch')}: {err}") from err
    if result.missing_keys:
        raise ValueError(f"backbone checkpoint {path} lacks {len(result.missing_keys)} weights of the model, "
                         f"e.g. {result.missing_keys[:5]} (wrong arch or not a DINOv2 checkpoint?)")
    if result.unexpected_keys:
        log.warning("backbone checkpoint %s: %d keys not used by the model, e.g. %s", path,
                    len(result.unexpected_keys), result.unexpected_keys[:5])
    log.info("loaded %d tensors from %s", len(state), path)


def freeze_backbone_blocks(model: torch.nn.Module, n_frozen_blocks: int) -> None:
    """Freeze the patch embedding (+ cls/reg tokens, pos embed) and the first ``n_frozen_blocks`` blocks.

    Everything else is made trainable, so the call fully defines which weights Stage I updates
    (sec. 3.1.2: the first eight blocks are frozen in the final setting).
    """
    model = unwrap(model)
    n_blocks = len(model.blocks)
    if not 0 <= n_frozen_blocks <= n_blocks:
        raise ValueError(f"n_frozen_blocks={n_frozen_blocks} but the backbone has {n_blocks} blocks")
    for p in model.parameters():
        p.requires_grad_(True)
    frozen: list[torch.nn.Parameter | torch.nn.Module | None] = [
        model.patch_embed, getattr(model, "cls_token", None), getattr(model, "reg_token", None),
        getattr(model, "pos_embed", None), *model.blocks[:n_frozen_blocks]]
    for item in frozen:
        if isinstance(item, torch.nn.Parameter):
            item.requires_grad_(False)
        elif isinstance(item, torch.nn.Module):
            item.requires_grad_(False)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("froze patch embed + %d/%d blocks; %.1fM params trainable", n_frozen_blocks, n_blocks, n_train / 1e6)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DistributedDataParallel / DataParallel wrapper."""
    return getattr(model, "module", model)


def feature_dim(model: torch.nn.Module) -> int:
    """D, the size of the CLS feature ``u`` the backbone returns."""
    return int(unwrap(model).num_features)


def input_mean_std(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation the backbone was pretrained with (ImageNet statistics for DINOv2)."""
    cfg = getattr(unwrap(model), "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def save_backbone(model: torch.nn.Module, path: Path, *, record: dict[str, Any]) -> Path:
    """Write only the backbone's weights (safetensors, atomically) with ``record`` as metadata + JSON.

    The build keys (arch, img_size, overrides) come from the model itself and cannot be overridden
    by ``record``, so the file always rebuilds the network it holds.
    """
    model = unwrap(model)
    build = getattr(model, "kit_build", None)
    if build is None:
        raise ValueError("save_backbone needs a model made by build_backbone/load_backbone (no build record)")
    path = Path(path)
    full = {**record, **build}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_RECORD_KEY: json.dumps(full, default=str)})
    full["sha256"] = checkpoint_hash(path)
    write_json_atomic(path.with_name(path.name + ".json"), full)
    log.info("saved backbone %s (%d tensors, sha256 %s) to %s", build["arch"], len(tensors), full["sha256"], path)
    return path


def read_record(path: Path) -> dict[str, Any]:
    """The record stored in a backbone file's safetensors metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone file {path} does not exist (run Stage I first)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as err:
        raise ValueError(f"{path} is not a safetensors backbone file: {err}") from err
    if _RECORD_KEY not in meta:
        raise ValueError(f"{path} has no '{_RECORD_KEY}' metadata: not written by save_backbone "
                         f"(load raw checkpoints with build_backbone(weights=...))")
    return json.loads(meta[_RECORD_KEY])


def load_backbone(path: Path, *, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a backbone written by ``save_backbone``; returns ``(model in eval mode, record)``."""
    record = read_record(path)
    model = timm.create_model(record["arch"], pretrained=False, num_classes=0, **record.get("overrides") or {},
                              **({"img_size": record["img_size"]} if record.get("img_size") else {}))
    model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    model.kit_build = {k: record.get(k) for k in ("arch", "img_size", "overrides")}
    log.info("loaded backbone %s from %s (%s)", record["arch"], path, record.get("trained_by", "?"))
    return model.to(device).eval(), record


def checkpoint_hash(path: Path, *, n_hex: int = 16) -> str:
    """First ``n_hex`` hex digits of the file's sha256, for run manifests."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:n_hex]
