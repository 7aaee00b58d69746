"""Preflight: will this run get through, before it spends hours on Stage I and extraction?

    python -m kitlib.tools.doctor params/abaw10.yaml params/local.yaml      # the full check, as a table
    abaw-kit doctor params/abaw10.yaml params/local.yaml

Checks the GPU (name, driver, bf16 where an ``amp: bf16`` asks for it), every weights path or hub id
(it resolves, and a backbone checkpoint fits ``stage1.arch`` by tensor names and shapes, without
reading the weights), the release (every annotation file and test name has its video, the template
matches the test names), the free disk for the features the run will write, and the package
versions against ``requirements.txt``. Prints a ✓ / ! / ✗ table with the fix for each ✗ and exits
non-zero on any ✗. The runner runs the fast part (no package scan, no checkpoint headers) before
every run.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from kitlib import config, hub
from kitlib.config import RANDOM_WEIGHTS, Config, ConfigError
from kitlib.runtime import gpu_driver

OK, WARN, FAIL = "✓", "!", "✗"


@dataclass
class Check:
    area: str
    what: str
    status: str          # OK | WARN | FAIL
    detail: str
    fix: str = ""


def preflight(cfg: Config, *, fast: bool = False) -> list[Check]:
    """Every check for ``cfg`` (``fast``: skip the package scan and the checkpoint headers)."""
    checks = [_python()]
    checks += _device(cfg)
    checks += _weights(cfg, fast=fast)
    checks += _data(cfg)
    checks += _disk(cfg)
    if not fast:
        checks += _packages()
    return checks


def _python() -> Check:
    ok = sys.version_info >= (3, 11)
    return Check("python", "version", OK if ok else FAIL, sys.version.split()[0],
                 "" if ok else "the pinned numpy / pandas / scipy need Python 3.11 or newer: make a venv with python3.11")


def _device(cfg: Config) -> list[Check]:
    import torch

    amps = {k: v for k, v in (("stage1.amp", cfg.stage1.amp), ("visual.amp", cfg.visual.amp), ("audio.amp", cfg.audio.amp))}
    wanted = cfg.run.device
    if not torch.cuda.is_available():
        if wanted.startswith("cuda"):
            return [Check("gpu", "CUDA device", FAIL, f"run.device={wanted} but torch sees no CUDA GPU "
                          f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})",
                          "install the CUDA build of torch for this driver, or set run.device=cpu")]
        return [Check("gpu", "CUDA device", WARN if wanted == "auto" else OK, "none: the run uses the CPU")]
    index = int(wanted.split(":")[1]) if ":" in wanted else 0
    if index >= torch.cuda.device_count():
        return [Check("gpu", "CUDA device", FAIL, f"run.device={wanted} but there are {torch.cuda.device_count()} GPUs",
                      "set run.device to cuda:0 ... or auto")]
    name = torch.cuda.get_device_name(index)
    out = [Check("gpu", "CUDA device", OK, f"{name}; driver {gpu_driver() or '?'}; CUDA {torch.version.cuda}; "
                 f"cuDNN {torch.backends.cudnn.version()}")]
    bf16 = [k for k, v in amps.items() if v == "bf16"]
    if bf16 and wanted != "cpu":
        ok = torch.cuda.is_bf16_supported()
        out.append(Check("gpu", "bf16", OK if ok else FAIL, f"{name} {'supports' if ok else 'does not support'} bf16",
                         "" if ok else f"set {', '.join(k + '=fp16' for k in bf16)}"))
    return out


def _resolve(cfg: Config, value: str, key: str) -> tuple[Path | None, Check | None]:
    """The local path of a params weights value, or the failed check saying how to get it."""
    path = cfg.path(value)
    if path.exists():
        return path, None
    if hub.is_hub_id(value):
        return None, Check("weights", key, FAIL, f"{value}: no such path ({path}), nor a hub id in the local "
                           f"cache ({hub.cache_dir()})",
                           "on a machine with internet: python -m kitlib.tools.weights fetch <params...> "
                           "(or set HF_HUB_CACHE to the cache that holds it)")
    return None, Check("weights", key, FAIL, f"{path} does not exist",
                       f"put the weights there, or set {key} to a hub id and fetch it (README: real weights)")


def _weights(cfg: Config, *, fast: bool) -> list[Check]:
    from kitlib.visual import backbones

    s1, out = cfg.stage1, []
    if s1.checkpoint:
        path, failed = _resolve(cfg, s1.checkpoint, "stage1.checkpoint")
        out.append(failed or Check("weights", "stage1.checkpoint", OK, str(path)))
    elif s1.weights == RANDOM_WEIGHTS:
        out.append(Check("weights", "stage1.weights", WARN, f"random: {s1.arch} with RANDOM weights (a rehearsal)"))
    elif s1.weights:
        path, failed = _resolve(cfg, s1.weights, "stage1.weights")
        if failed:
            out.append(failed)
        else:
            try:
                problems = [] if fast else backbones.weights_fit_problems(s1.arch, path, img_size=s1.image_size,
                                                                          overrides=s1.arch_overrides)
            except (FileNotFoundError, ValueError) as err:
                problems = [str(err)]
            out.append(Check("weights", "stage1.weights", FAIL if problems else OK,
                             "; ".join(problems) if problems else f"{path}" + ("" if fast else f" fits {s1.arch}"),
                             f"use a {s1.arch} checkpoint, or set stage1.arch to the checkpoint's arch" if problems else ""))
    else:
        out.append(Check("weights", "stage1.weights", OK if cfg.data.generate_demo else WARN,
                         f"null: {s1.arch} starts from random init"))
    if cfg.audio.weights == RANDOM_WEIGHTS:
        out.append(Check("weights", "audio.weights", WARN,
                         f"random: {cfg.audio.random_arch} with RANDOM weights (a rehearsal; audio.encoder not read)"))
    else:
        out.append(_transformers_folder(cfg, cfg.audio.encoder, "audio.encoder", cfg.audio.make_tiny_encoder,
                                        kinds=("wav2vec2", "wavlm", "hubert")))
    if "tcn_prompt" in cfg.fusion.heads:
        out.append(_transformers_folder(cfg, cfg.fusion.text_encoder, "fusion.text_encoder",
                                        cfg.fusion.make_tiny_text_encoder, kinds=("clip", "clip_text_model")))
    if cfg.stage1.train and not cfg.stage1.checkpoint and not cfg.data.generate_demo:
        images = cfg.data_path(cfg.stage1.images_root)
        out.append(Check("data", "stage1.images_root", OK if images.is_dir() else FAIL, str(images),
                         "" if images.is_dir() else "put the Stage-I image set there (README: the real release), "
                         "or set stage1.train=false with stage1.checkpoint"))
    return out


def _transformers_folder(cfg: Config, value: str, key: str, made_by_kit: bool, *, kinds: tuple[str, ...]) -> Check:
    path, failed = _resolve(cfg, value, key)
    if failed:
        if made_by_kit:
            return Check("weights", key, OK, f"{cfg.path(value)}: a tiny random-init model is built there (demo)")
        return failed
    conf = path / "config.json"
    if not conf.is_file():
        return Check("weights", key, FAIL, f"{path} has no config.json",
                     "point it at a transformers folder (save_pretrained layout) or a hub id")
    model_type = json.loads(conf.read_text()).get("model_type", "?")
    weights = [p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin")]
    if model_type not in kinds or not weights:
        return Check("weights", key, FAIL, f"{path}: model_type {model_type!r}, weight files {weights or 'none'}",
                     f"{key} needs a {' / '.join(kinds)} folder with its weights")
    return Check("weights", key, OK, f"{path} ({model_type}, {', '.join(weights)})")


def _data(cfg: Config) -> list[Check]:
    from kitlib import data
    from kitlib.data import submission

    root = cfg.path(cfg.data.root)
    if cfg.data.generate_demo and not cfg.data_path(cfg.data.test_template).is_file():
        return [Check("data", "release", OK, f"{root}: the demo is generated there by stage 01")]
    try:
        index = data.discover(root, videos_dir=cfg.data.videos_dir, annotations_dir=cfg.data.annotations_dir,
                              test_names=cfg.test_names_path())
    except (data.DataError, ConfigError) as err:
        return [Check("data", "release", FAIL, str(err), "lay the release out as README 'The real Aff-Wild2 release' "
                      "says, or set data.root / data.videos_dir / data.annotations_dir / data.test_names")]
    counts = {s: len(index.split(s)) for s in data.SPLITS}
    out = [Check("data", "release", OK, f"{root}: " + ", ".join(f"{s} {n}" for s, n in counts.items()))]
    no_video = [p for p in index.problems if "no video" in p[1]]
    if no_video:
        out.append(Check("data", "videos", FAIL, f"{len(no_video)} annotation / test names have no video, e.g. "
                         + "; ".join(f"{Path(f).name}: {r}" for f, r in no_video[:3]),
                         f"add the missing videos under {root / cfg.data.videos_dir}"))
    else:
        out.append(Check("data", "videos", OK, f"every annotation file and test name has its video "
                         f"({len({t.videoid for t in index.tracks})} videos)"))
    try:
        template = submission.read_template(cfg.data_path(cfg.data.test_template))
    except (submission.SubmissionError, ConfigError) as err:
        return out + [Check("data", "template", FAIL, str(err), "use the organisers' template file (data.test_template)")]
    names = set(data.read_test_names(cfg.data_path(cfg.data.test_names)))
    in_template = set(template["txtid"])
    if names != in_template:
        only_t, only_n = sorted(in_template - names), sorted(names - in_template)
        out.append(Check("data", "template", FAIL, f"template and test names differ: {len(only_t)} only in the template "
                         f"{only_t[:3]}, {len(only_n)} only in the names {only_n[:3]}",
                         "use the template and the name list of the same release"))
    else:
        out.append(Check("data", "template", OK, f"{cfg.data_path(cfg.data.test_template).name}: {len(template)} rows "
                         f"for the {len(names)} test names of {cfg.test_names_path().name}"))
    return out


def estimate_feature_bytes(cfg: Config) -> int:
    """Bytes the feature stores will take: frames x (visual dim x (scales + 1) + audio dim x alignments) x 2."""
    root = cfg.path(cfg.data.root)
    adir = root / cfg.data.annotations_dir
    frames = sum(max(0, sum(1 for _ in p.open()) - 1) for p in adir.glob("*_Set/*.txt"))
    template = cfg.data_path(cfg.data.test_template)
    if template.is_file():
        frames += max(0, sum(1 for _ in template.open()) - 1)
    overrides = cfg.stage1.arch_overrides
    visual_dim = int(overrides.get("embed_dim", {"large": 1024, "base": 768, "small": 384, "giant": 1536}.get(
        next((w for w in ("large", "base", "small", "giant") if w in cfg.stage1.arch), "large"), 1024)))
    audio_dim = 1024
    conf = cfg.path(cfg.audio.encoder) / "config.json"
    if conf.is_file():
        audio_dim = int(json.loads(conf.read_text()).get("hidden_size", audio_dim))
    per_frame = visual_dim * (len(cfg.faces.crop_scales) + 1) + audio_dim * (1 + len(cfg.audio.ablation_windows_total_s))
    return frames * per_frame * 2


def _disk(cfg: Config) -> list[Check]:
    target = cfg.run_dir
    existing = next(p for p in (target, *target.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    need = estimate_feature_bytes(cfg) * (1 + len(cfg.stage1.table1_states))
    if need == 0:      # no annotation files or template yet (the demo before it is generated): nothing to size
        return [Check("disk", "free space", OK, f"{free / 2**30:.1f} GiB free at {existing}")]
    ok = free > 1.2 * need
    size = f"{need / 2**30:.1f} GiB" if need >= 2**30 / 10 else f"{need / 2**20:.1f} MiB"
    return [Check("disk", "free space", OK if ok else FAIL, f"{free / 2**30:.1f} GiB free at {existing}; features need "
                  f"about {size}", "" if ok else "free space there, or set run.outputs_root to a bigger disk")]


def requirement_pins(root: Path | None = None) -> dict[str, str]:
    """``name -> version`` of the ``==`` pins in requirements.txt (or the installed kit's metadata)."""
    path = (root or config.repo_root()) / "requirements.txt"
    if path.is_file():
        lines = path.read_text().splitlines()
    else:
        try:
            lines = metadata.requires("abaw-expr-kit") or []
        except metadata.PackageNotFoundError:
            lines = []
    pins = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)(\s*;\s*(?P<marker>[^#]+))?", line)
        if m and _marker_applies(m.group("marker")):
            pins[m.group(1)] = m.group(2)
    return pins


def _marker_applies(marker: str | None) -> bool:
    if not marker:
        return True
    try:
        from packaging.markers import Marker

        return Marker(marker.strip()).evaluate()
    except Exception:  # noqa: BLE001 - no packaging or odd marker: check the pin anyway
        return True


def _packages() -> list[Check]:
    missing, differ = [], []
    for name, pin in requirement_pins().items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        if have.split("+")[0] != pin:
            differ.append(f"{name} {have} (pinned {pin})")
    out = [Check("packages", "installed", FAIL if missing else OK,
                 f"missing: {', '.join(missing)}" if missing else "every pinned package is installed",
                 "pip install -r requirements.txt" if missing else "")]
    if differ:
        out.append(Check("packages", "versions", WARN, "; ".join(differ[:6]) + (" ..." if len(differ) > 6 else ""),
                         "pip install -r requirements.txt (results may differ from the README's)"))
    return out


def table(checks: list[Check]) -> str:
    """The checks as an aligned text table, with a 'fix' line under every ✗."""
    width = max(len(f"{c.area} {c.what}") for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status} {(c.area + ' ' + c.what).ljust(width)}  {c.detail}")
        if c.status == FAIL and c.fix:
            lines.append(f"  {' ' * width}  fix: {c.fix}")
    failed = sum(c.status == FAIL for c in checks)
    lines.append(f"{failed} problem(s) to fix before this run" if failed else "ready to run")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kitlib.tools.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("items", nargs="*", help="params files (layered on params/base.yaml) and key=value overrides")
    parser.add_argument("--fast", action="store_true", help="skip the package scan and the checkpoint headers")
    args = parser.parse_args(argv)
    cfg = config.load_command_line(args.items)
    if cfg is None:
        return 2
    checks = preflight(cfg, fast=args.fast)
    print(table(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
