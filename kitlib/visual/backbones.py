"""The visual encoder E_v: DINOv2 (seed 000, sec. 3.1.2, eq. 1), BEiT-large (seed 004, sec. 3.2 / 4.2)
and the CLIP ViT-L/14 image tower (seed 003): build, freeze, save, load.

Three timm families are supported (``backbone_family``), each built with ``num_classes=0`` so that
``model(x)`` returns the pooled pre-logits feature ``u`` (B, D) that ``feature_dim`` reports:

- DINOv2 ``vit_{small,base,large,giant}_patch14[_reg4]_dinov2``: the CLS token after the final norm
  (D = 1024 for ViT-L/14);
- BEiT ``beit_large_patch16_224`` (and the other ``beit*``): the mean of the patch tokens after
  ``fc_norm`` (BEiT's own pooling, the "pooled feature vectors from the final hidden layer" of seed 004);
- CLIP ``vit_large_patch14_clip_224`` (and ``vit_*_clip_*``): the CLS token after CLIP's ``ln_post``,
  before the image projection (D = 1024 for ViT-L/14). OpenAI's CLIP weights use QuickGELU: load
  them into ``vit_large_patch14_clip_quickgelu_224``; LAION / DFN weights use GELU
  (``vit_large_patch14_clip_224``). A checkpoint whose activation is known (an HF ``config.json``,
  an OpenAI TorchScript ``.pt`` or state dict, an open_clip folder's ``open_clip_config.json``) is
  refused by an arch with the other one. The input statistics of every CLIP arch are CLIP's own
  (``OPENAI_CLIP_MEAN`` / ``_STD``), whatever timm's default tag for the arch says.

Nothing is ever downloaded: the model is built with random weights, then a local checkpoint
(``.safetensors`` / ``.pth`` / ``.bin``) is loaded through the family's timm ``checkpoint_filter_fn``,
which also resamples position embeddings / relative-position tables when ``img_size`` differs from
the checkpoint's. Accepted key layouts: timm's own; original DINOv2 (``teacher`` / chunked blocks);
original BEiT (unilm ``model`` wrapper); OpenAI CLIP / open_clip (``visual.*``); and the
Hugging Face layouts of CLIP (``vision_model.*``, e.g. the ``openai/clip-vit-large-patch14`` folder,
whose ``config.json`` is checked against the arch's activation) and BEiT (``beit.*``, as released
and as transformers 5 saves it).

An adapted backbone is saved alone (the Stage-I head is discarded, sec. 3.1.2) as safetensors with
its build record (arch, overrides, img_size, training params, metrics) in the file's metadata and
in a ``<file>.json`` beside it, so ``load_backbone`` can rebuild it without any other input.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.layers import QuickGELU
from timm.models.beit import checkpoint_filter_fn as beit_checkpoint_filter_fn
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter_fn

from kitlib.store import atomic_path, write_json_atomic

log = logging.getLogger(__name__)


DINOV2_ARCHS: tuple[str, ...] = tuple(
    f"vit_{size}_patch14{reg}_dinov2" for size in ("small", "base", "large", "giant") for reg in ("", "_reg4"))
BEIT_ARCH = "beit_large_patch16_224"          # seed 004's visual extractor
CLIP_ARCH = "vit_large_patch14_clip_224"      # seed 003's frozen extractor (OpenAI weights: ..._quickgelu_224)
FAMILIES: tuple[str, ...] = ("dinov2", "beit", "clip")
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_RECORD_KEY = "kit_record"          # safetensors metadata key holding the JSON record
_WRAPPER_KEYS = ("model", "state_dict", "teacher", "student", "model_ema")
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
# entries only OpenAI's own CLIP model carries (its released .pt files are TorchScript archives of it);
# OpenAI trained every CLIP with QuickGELU, so such a file needs a ``*_clip_quickgelu_*`` arch
OPENAI_CLIP_MARKERS: tuple[str, ...] = ("input_resolution", "context_length", "vocab_size")


def backbone_family(arch: str) -> str:
    """``dinov2`` | ``beit`` | ``clip``: which supported timm family ``arch`` belongs to (ValueError if none)."""
    if arch in timm.list_models():
        if arch.endswith("_dinov2"):
            return "dinov2"
        if arch.startswith("beit"):
            return "beit"
        if arch.startswith("vit_") and "_clip_" in arch:
            return "clip"
    raise ValueError(f"unknown backbone arch {arch!r}: supported are timm's DINOv2 archs ({', '.join(DINOV2_ARCHS)}), "
                     f"BEiT archs (beit*, e.g. {BEIT_ARCH}) and CLIP image towers (vit_*_clip_*, e.g. {CLIP_ARCH})")


def create_model(arch: str, *, img_size: int | None = None, overrides: dict[str, Any] | None = None) -> torch.nn.Module:
    """The bare timm model (random init, ``num_classes=0``), tagged with its build record ``kit_build``.

    CLIP archs get CLIP's input statistics in ``pretrained_cfg`` (timm's default tag for some of
    them is an ImageNet fine-tune normalised with 0.5 / 0.5).
    """
    family = backbone_family(arch)
    overrides = dict(overrides or {})
    bad = {"pretrained", "num_classes", "img_size", "pretrained_cfg_overlay"} & overrides.keys()
    if bad:
        raise ValueError(f"overrides may not set {sorted(bad)}: they are fixed or given as their own argument")
    kwargs = dict(overrides)
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    if family == "clip":
        kwargs["pretrained_cfg_overlay"] = dict(mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    model.kit_build = {"arch": arch, "img_size": img_size, "overrides": overrides}
    return model


def build_backbone(*, arch: str = "vit_large_patch14_dinov2", weights: Path | None = None,
                   img_size: int | None = None, overrides: dict[str, Any] | None = None) -> torch.nn.Module:
    """A DINOv2 / BEiT / CLIP ViT whose forward returns pooled features (B, D); weights from a local file or random.

    ``weights``: a checkpoint file, or a folder holding exactly one (``model.safetensors`` preferred).
    ``img_size``: input resolution (None = timm's default for ``arch``, 518 for DINOv2, 224 for BEiT/CLIP).
    ``overrides``: extra ``timm.create_model`` kwargs (``depth``, ``embed_dim``, ``num_heads`` ...),
    used by tests and the CPU demo to build a tiny model of the same family.
    """
    model = create_model(arch, img_size=img_size, overrides=overrides)
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
                            f"backbone's checkpoint there, .safetensors/.pth/.bin, or its transformers folder)")


def is_torchscript_archive(path: Path) -> bool:
    """True for a TorchScript zip (``torch.jit.save``): the format of OpenAI's released CLIP ``.pt`` files."""
    if path.suffix == ".safetensors" or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The raw tensors of a checkpoint file (on CPU), unwrapped from ``{"model": ...}``-style containers.

    A TorchScript archive (OpenAI's CLIP ``.pt``) is read with ``torch.jit.load``, which restores
    tensors and TorchScript code without running pickled Python; only its state dict is kept.
    """
    try:
        if is_torchscript_archive(path):
            state: Any = {k: v for k, v in torch.jit.load(str(path), map_location="cpu").state_dict().items()}
        elif path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
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


def _strip_to(state: dict[str, torch.Tensor], marker: str) -> dict[str, torch.Tensor] | None:
    """The keys under the prefix that precedes ``marker`` (e.g. ``vision_model.``), prefix removed; None if absent."""
    hit = next((k for k in state if k.endswith(marker)), None)
    if hit is None:
        return None
    prefix = hit[: -len(marker)]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _hf_clip_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Hugging Face CLIP vision tower keys (``vision_model.*`` or bare) -> timm VisionTransformer keys."""
    state = _strip_to(state, "embeddings.class_embedding")
    if state is None:
        return None
    out = {"cls_token": state["embeddings.class_embedding"].reshape(1, 1, -1),
           "patch_embed.proj.weight": state["embeddings.patch_embedding.weight"],
           "pos_embed": state["embeddings.position_embedding.weight"].unsqueeze(0)}
    renames = [(r"^pre_layrnorm\.", "norm_pre."), (r"^post_layernorm\.", "norm."), (r"^encoder\.layers\.", "blocks."),
               (r"\.layer_norm(\d)\.", r".norm\1."), (r"\.self_attn\.out_proj\.", ".attn.proj.")]
    qkv = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.[qkv]_proj\.")
    for key, value in state.items():
        if key.startswith("embeddings.") or qkv.match(key):
            continue                                      # done above / q, k, v are fused below
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        out[key] = value
    for i in sorted({int(m.group(1)) for k in state if (m := qkv.match(k))}):
        attn = f"encoder.layers.{i}.self_attn."
        for part in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([state[f"{attn}{p}_proj.{part}"] for p in "qkv"])
    return out


def _rename_hf_keys(state: dict[str, torch.Tensor], *, renames: list[tuple[str, str]], qkv: re.Pattern,
                    skip: Callable[[str], bool]) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]]:
    """Hugging Face ViT keys -> timm keys by ``renames`` (regex, replacement; applied in order), leaving out
    ``skip`` keys; the separate query / key / value tensors that ``qkv`` matches (groups: block, the
    transformers-4 name, the transformers-5 letter, weight|bias) come back per block as ``{"q.weight": ...}``
    for the caller to fuse in its model's layout."""
    parts: dict[int, dict[str, torch.Tensor]] = {}
    out = {}
    for key, value in state.items():
        if skip(key):
            continue
        if (m := qkv.match(key)):
            parts.setdefault(int(m.group(1)), {})[f"{(m.group(2) or m.group(3))[0]}.{m.group(4)}"] = value
            continue
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out, parts


def _hf_beit_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Hugging Face BEiT keys (as released, ``beit.encoder.layer.*``, or transformers-5 ``layers.*``) -> timm Beit."""
    state = _strip_to(state, "embeddings.patch_embeddings.projection.weight")
    if state is None:
        return None
    renames = [  # released (transformers 4) names first, then the transformers-5 names
        (r"^encoder\.layer\.", "blocks."), (r"^layers\.", "blocks."),
        (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        (r"^embeddings\.cls_token$", "cls_token"), (r"^embeddings\.position_embeddings$", "pos_embed"),
        (r"^(encoder\.relative_position_bias|shared_position_bias)\.", "rel_pos_bias."),
        (r"^pooler\.layernorm\.", "fc_norm."), (r"^layernorm\.", "norm."),
        (r"\.attention\.attention\.relative_position_bias\.", ".attn."), (r"\.relative_position_bias\.", ".attn."),
        (r"\.attention\.output\.dense\.", ".attn.proj."), (r"\.attention\.o_proj\.", ".attn.proj."),
        (r"\.intermediate\.dense\.", ".mlp.fc1."), (r"\.output\.dense\.", ".mlp.fc2."),
        (r"\.layernorm_before\.", ".norm1."), (r"\.layernorm_after\.", ".norm2."),
        (r"\.lambda_(\d)$", r".gamma_\1"),
    ]
    qkv = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.attention\."
                     r"(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$")
    out, parts = _rename_hf_keys(state, renames=renames, qkv=qkv, skip=lambda key: key.startswith(
        ("embeddings.mask_token", "classifier.")) or "relative_position_index" in key)
    for i, p in parts.items():
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([p["q.weight"], p["k.weight"], p["v.weight"]])
        out[f"blocks.{i}.attn.q_bias"], out[f"blocks.{i}.attn.v_bias"] = p["q.bias"], p["v.bias"]
    return out


def _hf_dinov2_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Hugging Face ``Dinov2Model`` keys (the hub's ``facebook/dinov2-*`` folders: ``attention.attention.query``,
    or transformers-5 ``attention.q_proj``) -> timm VisionTransformer keys; None if not that layout."""
    state = _strip_to(state, "embeddings.patch_embeddings.projection.weight")
    if state is None or not any(k.endswith("layer_scale1.lambda1") for k in state):
        return None
    renames = [(r"^embeddings\.cls_token$", "cls_token"), (r"^embeddings\.position_embeddings$", "pos_embed"),
               (r"^embeddings\.register_tokens$", "reg_token"),
               (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."), (r"^encoder\.layer\.", "blocks."),
               (r"\.attention\.output\.dense\.", ".attn.proj."), (r"\.attention\.o_proj\.", ".attn.proj."),
               (r"\.layer_scale(\d)\.lambda1$", r".ls\1.gamma"), (r"^layernorm\.", "norm.")]
    qkv = re.compile(r"^encoder\.layer\.(\d+)\.attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$")
    out, parts = _rename_hf_keys(state, renames=renames, qkv=qkv,
                                 skip=lambda key: key == "embeddings.mask_token")   # masked-image training only
    for i, p in parts.items():
        for part in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([p[f"{w}.{part}"] for w in "qkv"])
    return out


def _drop_heads(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items()
            if not k.startswith(("head.", "dino_head.", "ibot_head.", "lm_head.", "visual_projection.", "classifier."))}


def _to_timm_keys(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, convert HF / original layouts, drop heads, then apply the family's timm filter."""
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    family = backbone_family(model.kit_build["arch"])
    converters = {"beit": _hf_beit_to_timm, "clip": _hf_clip_to_timm, "dinov2": _hf_dinov2_to_timm}
    converted = converters[family](state)
    if converted is not None:
        state = converted
    # original DINOv2 training checkpoints with block_chunks > 0: blocks.<chunk>.<i>.* (i is global)
    state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}
    state = _drop_heads(state)
    state = beit_checkpoint_filter_fn(state, model) if family == "beit" else vit_checkpoint_filter_fn(state, model)
    return _drop_heads(state)                     # the OpenAI CLIP converter turns ``proj`` into ``head``


def _check_hf_clip_activation(model: torch.nn.Module, path: Path) -> None:
    """An HF CLIP folder says its MLP activation in config.json; refuse an arch with the other one."""
    config_file = path.parent / "config.json"
    if backbone_family(model.kit_build["arch"]) != "clip" or not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    act = config.get("vision_config", config).get("hidden_act")
    if act is None:
        return
    quick = isinstance(model.blocks[0].mlp.act, QuickGELU)
    if (act == "quick_gelu") != quick:
        arch = model.kit_build["arch"]
        hint = _activation_hint(arch, act == "quick_gelu")
        raise ValueError(f"{config_file} says hidden_act={act!r} but arch {arch} uses "
                         f"{'QuickGELU' if quick else 'GELU'}: set the arch to {hint}")


def _activation_hint(arch: str, quick_gelu: bool) -> str:
    """The arch of the same CLIP size with the other MLP activation (the one a checkpoint needs)."""
    return arch.replace("_clip_", "_clip_quickgelu_") if quick_gelu else arch.replace("_quickgelu", "")


def _check_openai_clip_activation(model: torch.nn.Module, path: Path, raw: dict[str, torch.Tensor]) -> None:
    """OpenAI CLIP files (TorchScript ``.pt`` or their state dict) and open_clip folders saying
    ``quick_gelu`` need a QuickGELU arch; refuse a GELU arch (it would load and give wrong features)."""
    arch = model.kit_build["arch"]
    if backbone_family(arch) != "clip":
        return
    quick = isinstance(model.blocks[0].mlp.act, QuickGELU)
    source, needs_quick = None, None
    if is_torchscript_archive(path) or any(k in raw for k in OPENAI_CLIP_MARKERS):
        source, needs_quick = "an OpenAI CLIP checkpoint (OpenAI trained with QuickGELU)", True
    elif (open_clip_config := path.parent / "open_clip_config.json").is_file():
        model_cfg = json.loads(open_clip_config.read_text()).get("model_cfg", {})
        source, needs_quick = f"open_clip ({open_clip_config} quick_gelu={model_cfg.get('quick_gelu', False)})", \
            bool(model_cfg.get("quick_gelu", False))
    if source is not None and needs_quick != quick:
        raise ValueError(f"backbone checkpoint {path} is {source} but arch {arch} uses "
                         f"{'QuickGELU' if quick else 'GELU'}: set the arch to {_activation_hint(arch, needs_quick)}")


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a checkpoint of the model's family into ``model`` (position tables resampled to its grid).

    A CLIP checkpoint whose MLP activation is known (HF ``config.json``, an OpenAI file, an open_clip
    folder) must match the arch's: GELU vs QuickGELU changes every feature without any shape error.
    """
    raw = read_state_dict(path)
    if any(k.endswith("embeddings.class_embedding") for k in raw):
        _check_hf_clip_activation(model, path)
    _check_openai_clip_activation(model, path, raw)
    state = _to_timm_keys(raw, model)
    arch = getattr(model, "kit_build", {}).get("arch")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch: wrong arch for this checkpoint
        raise ValueError(f"backbone checkpoint {path} does not fit arch {arch}: {err}") from err
    if result.missing_keys:
        raise ValueError(f"backbone checkpoint {path} lacks {len(result.missing_keys)} weights of the model, "
                         f"e.g. {result.missing_keys[:5]} (wrong arch or not a {arch} checkpoint?)")
    if result.unexpected_keys:
        log.warning("backbone checkpoint %s: %d keys not used by the model, e.g. %s", path,
                    len(result.unexpected_keys), result.unexpected_keys[:5])
    log.info("loaded %d tensors from %s", len(state), path)


def freeze_backbone_blocks(model: torch.nn.Module, n_frozen_blocks: int) -> None:
    """Freeze the stem (patch embedding, cls/reg tokens, pos embed, CLIP's ``ln_pre``) and the first N blocks.

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
        getattr(model, "pos_embed", None), getattr(model, "norm_pre", None), *model.blocks[:n_frozen_blocks]]
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
    """D, the size of the pooled feature ``u`` the backbone returns (CLS token, or BEiT's patch mean)."""
    return int(unwrap(model).num_features)


def input_mean_std(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation the backbone was pretrained with, from its ``pretrained_cfg``.

    ImageNet statistics for DINOv2, 0.5 / 0.5 for BEiT, CLIP's own for the CLIP archs (``create_model``).
    """
    cfg = getattr(unwrap(model), "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def _as_saved(tensor: torch.Tensor) -> torch.Tensor:
    """A state tensor as a checkpoint stores it: on the CPU, floating point in float32 (a backbone cast
    to bf16 for inference, ``pipelined.prepare_backbone``, still saves full-precision weights)."""
    tensor = tensor.detach().to("cpu")
    return (tensor.float() if tensor.is_floating_point() else tensor).contiguous()


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
    tensors = {k: _as_saved(v) for k, v in model.state_dict().items()}
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
    model = create_model(record["arch"], img_size=record.get("img_size"), overrides=record.get("overrides"))
    model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    log.info("loaded backbone %s from %s (%s)", record["arch"], path, record.get("trained_by", "?"))
    return model.to(device).eval(), record


def checkpoint_hash(path: Path, *, n_hex: int = 16) -> str:
    """First ``n_hex`` hex digits of the file's sha256, for run manifests."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:n_hex]


def weights_fit_problems(arch: str, path: Path, *, img_size: int | None = None,
                         overrides: dict[str, Any] | None = None) -> list[str]:
    """Why the checkpoint at ``path`` would not load into ``arch`` (empty list: it fits), from the
    tensor names and shapes only: the model is built on the meta device and no weight is read."""
    path = resolve_weights_file(Path(path))
    with torch.device("meta"):
        model = create_model(arch, img_size=img_size, overrides=overrides)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                state: Any = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        else:
            state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - corrupt or foreign file: that is the answer
        return [f"cannot read {path}: {err}"]
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        state = _to_timm_keys(state, model)
    except Exception as err:  # noqa: BLE001
        return [f"{path} does not convert to {arch}'s layout: {err}"]
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"lacks {len(missing)} of {len(expected)} weights of {arch}, e.g. {missing[:3]}")
    if wrong:
        problems.append(f"{len(wrong)} tensors of another shape, e.g. {wrong[:2]}")
    return problems
