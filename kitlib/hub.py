"""Model weights named by their Hugging Face id, found in the LOCAL Hugging Face cache (never downloaded here).

A params value such as ``stage1.weights: timm/vit_large_patch14_dinov2.lvd142m`` or
``audio.encoder: facebook/wav2vec2-large-960h-lv60`` that is not a path in the repository resolves
to ``<cache>/models--<org>--<name>/snapshots/<revision>/`` (the revision ``refs/main`` names, else the
newest snapshot). The cache is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``: the layout ``huggingface_hub`` writes, so ``python -m kitlib.tools.weights
fetch`` (on a machine with internet) or ``huggingface-cli download`` fill it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class KnownModel:
    """A model the kit's profiles name, with what a user needs to know before fetching it."""

    hub_id: str
    param: str              # the params key it goes in
    what: str
    size: str               # download size
    licence: str


KNOWN_MODELS = (
    KnownModel("timm/vit_large_patch14_dinov2.lvd142m", "stage1.weights", "DINOv2 ViT-L/14 (main system, Stage I)",
               "1.2 GB", "Apache-2.0"),
    KnownModel("facebook/dinov2-large", "stage1.weights", "DINOv2 ViT-L/14, transformers layout (converted on load)",
               "1.2 GB", "Apache-2.0"),
    KnownModel("facebook/wav2vec2-large-960h-lv60", "audio.encoder", "wav2vec 2.0 large, LV-60k + 960 h ASR (main system)",
               "1.3 GB", "Apache-2.0"),
    KnownModel("facebook/wav2vec2-large-960h-lv60-self", "audio.encoder", "wav2vec 2.0 large, self-trained variant",
               "1.3 GB", "Apache-2.0"),
    KnownModel("timm/beit_large_patch16_224.in22k_ft_in22k_in1k", "stage1.weights", "BEiT-large (seed 004 frames)",
               "1.2 GB", "Apache-2.0"),
    KnownModel("microsoft/wavlm-large", "audio.encoder", "WavLM-large (seed 004 audio)", "1.3 GB", "MIT"),
    KnownModel("openai/clip-vit-large-patch14", "fusion.text_encoder", "CLIP ViT-L/14, image + text towers (seed 003)",
               "1.7 GB", "MIT"),
)


def is_hub_id(value: str | os.PathLike | None) -> bool:
    """``org/name`` with no other slash and no file suffix-only look (``models/x.safetensors`` is a path)."""
    if value is None:
        return False
    text = str(value)
    return bool(_HUB_ID.match(text)) and not text.startswith((".", "~")) and Path(text).suffix not in (
        ".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def cache_dir() -> Path:
    """The Hugging Face hub cache this process would use."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def cached_snapshot(hub_id: str, *, cache: Path | None = None) -> Path | None:
    """The local snapshot folder of ``hub_id`` (None when it is not an id or not in the cache)."""
    if not is_hub_id(hub_id):
        return None
    repo = (cache or cache_dir()) / f"models--{hub_id.replace('/', '--')}"
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def known(hub_id: str) -> KnownModel | None:
    return next((m for m in KNOWN_MODELS if m.hub_id == hub_id), None)
