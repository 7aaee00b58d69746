"""The models a profile needs, by Hugging Face id: list them, and fetch them on a machine with internet.

    python -m kitlib.tools.weights list                                       # every model the kit knows, cached or not
    python -m kitlib.tools.weights fetch params/abaw10.yaml                   # download what this profile needs,
                                                                        # then write params/local.yaml
    python -m kitlib.tools.weights fetch params/abaw10.yaml params/recipe_004_safe_xattn.yaml --dry-run

``fetch`` is the only place the kit downloads anything, and only when asked: it uses
``huggingface_hub.snapshot_download`` into the usual Hugging Face cache (or ``--cache-dir``) and
records the ids in ``params/local.yaml`` (absolute snapshot paths with ``--cache-dir``), where runs
resolve them from the local cache (``kitlib.hub``) with no network.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from kitlib import config, hub
from kitlib.config import RANDOM_WEIGHTS, Config

# the hub id a profile's weights param defaults to, by what the params ask for
DEFAULT_IDS = {("stage1.weights", "dinov2"): "timm/vit_large_patch14_dinov2.lvd142m",
               ("stage1.weights", "beit"): "timm/beit_large_patch16_224.in22k_ft_in22k_in1k",
               ("stage1.weights", "clip"): "openai/clip-vit-large-patch14",
               ("audio.encoder", "wavlm"): "microsoft/wavlm-large",
               ("audio.encoder", "wav2vec2"): "facebook/wav2vec2-large-960h-lv60",
               ("fusion.text_encoder", "clip"): "openai/clip-vit-large-patch14"}


def needed(cfg: Config) -> dict[str, str]:
    """``params key -> hub id`` of every model this profile loads that is not on disk here."""
    from kitlib.visual.backbones import backbone_family

    wants: dict[str, tuple[str | None, str]] = {}
    if cfg.stage1.weights and cfg.stage1.weights != RANDOM_WEIGHTS and not cfg.stage1.checkpoint:
        wants["stage1.weights"] = (cfg.stage1.weights, backbone_family(cfg.stage1.arch))
    if not cfg.audio.make_tiny_encoder and cfg.audio.weights != RANDOM_WEIGHTS:   # a rehearsal downloads nothing
        wants["audio.encoder"] = (cfg.audio.encoder, "wavlm" if "wavlm" in cfg.audio.encoder.lower() else "wav2vec2")
    if "tcn_prompt" in cfg.fusion.heads and not cfg.fusion.make_tiny_text_encoder:
        wants["fusion.text_encoder"] = (cfg.fusion.text_encoder, "clip")
    out = {}
    for key, (value, family) in wants.items():
        if value and cfg.path(value).exists():
            continue                                            # on disk, or already in the cache
        out[key] = _hub_id_for(value, key) or DEFAULT_IDS[(key, family)]
    return out


def _hub_id_for(value: str | None, key: str) -> str | None:
    """The id ``value`` names: a known id, a folder named like a known model (``models/clip-vit-large-patch14``),
    or an ``org/name`` whose ``org`` is no folder here; None when it names no model."""
    if not value:
        return None
    if hub.known(value):
        return value
    named = [m.hub_id for m in hub.KNOWN_MODELS if m.param == key and m.hub_id.split("/")[1] == Path(value).name]
    if named:
        return named[0]
    org = str(value).split("/")[0]
    return value if hub.is_hub_id(value) and not (config.repo_root() / org).exists() and org not in ("models", "data") else None


def fetch(ids: dict[str, str], *, cache_dir: Path | None = None) -> dict[str, Path]:
    """Download each id (its weights and configs only, when the kit knows the model); the snapshot paths."""
    from huggingface_hub import list_repo_files, snapshot_download

    out = {}
    for key, hub_id in ids.items():
        model = hub.known(hub_id)
        print(f"{key}: {hub_id}" + (f" ({model.size}, {model.licence})" if model else ""), flush=True)
        files = choose_files(list_repo_files(hub_id))
        out[key] = Path(snapshot_download(hub_id, cache_dir=str(cache_dir) if cache_dir else None, allow_patterns=files))
    return out


def choose_files(repo_files: list[str]) -> list[str]:
    """Configs, tokenizer files and ONE copy of the weights (safetensors over a pickle; other frameworks' never)."""
    keep = [f for f in repo_files if "/" not in f and f.endswith((".json", ".txt", ".model"))]
    for weights in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json", "open_clip_pytorch_model.bin"):
        if weights in repo_files:
            stem = weights.removesuffix(".index.json")
            shards = [f for f in repo_files if f.startswith(stem.split(".")[0] + "-") and f.endswith(Path(stem).suffix)]
            return sorted(set(keep) | {weights} | set(shards))
    return sorted(set(keep) | {f for f in repo_files if f.endswith((".safetensors", ".bin", ".pth"))})


def write_local(paths: dict[str, str], local: Path) -> Path:
    """Set ``section.key: value`` for each entry in ``local`` (params/local.yaml), keeping what else it holds."""
    values = yaml.safe_load(local.read_text()) or {} if local.is_file() else {}
    for dotted, value in paths.items():
        section, key = dotted.split(".", 1)
        values.setdefault(section, {})[key] = value
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text("# written by `python -m kitlib.tools.weights fetch`; machine-specific, not in git\n"
                     + yaml.safe_dump(values, sort_keys=False))
    return local


def list_models() -> str:
    lines = [f"{'hub id':48} {'params key':20} {'size':7} {'licence':11} cached  what"]
    for m in hub.KNOWN_MODELS:
        cached = "yes" if hub.cached_snapshot(m.hub_id) else "no"
        lines.append(f"{m.hub_id:48} {m.param:20} {m.size:7} {m.licence:11} {cached:7} {m.what}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kitlib.tools.weights", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every model the kit knows: id, params key, size, licence, whether it is cached")
    get = sub.add_parser("fetch", help="download what a profile needs and write params/local.yaml")
    get.add_argument("items", nargs="*", help="params files and key=value overrides, as for the runner")
    get.add_argument("--cache-dir", type=Path, help="download here instead of the Hugging Face cache "
                     "(params/local.yaml then gets absolute paths)")
    get.add_argument("--local", type=Path, default=None, help="the params file to write (default params/local.yaml)")
    get.add_argument("--dry-run", action="store_true", help="say what would be fetched, fetch nothing")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(list_models())
        return 0
    try:
        cfg = config.load_items(args.items)
    except config.ConfigError as exc:
        print(f"params error: {exc}", file=sys.stderr)
        return 2
    ids = needed(cfg)
    if not ids:
        print("every model this profile needs is already on disk")
        return 0
    if args.dry_run:
        print("\n".join(f"{k}: {v}" for k, v in ids.items()))
        return 0
    snapshots = fetch(ids, cache_dir=args.cache_dir)
    values = {k: str(snapshots[k]) if args.cache_dir else ids[k] for k in ids}
    local = write_local(values, args.local or config.repo_root() / "params" / "local.yaml")
    print(f"wrote {local}: " + ", ".join(f"{k}: {v}" for k, v in values.items())
          + f"\nrun with: python -m kitlib.run <profile> {local}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
