"""Where the visual extraction's time goes on a GPU box: the figures behind the missed targets of gpu_check.

The first H200 run of ``benchmarks/gpu_check.sh`` (2026-12-04) measured ViT-L/14 at 2,517 crops/s (52 % of the
measured bf16 peak), CenterFace at 795 frames/s at 1080p, and the pipelined extractor waiting for decode
94 % of its wall time, with 8 decode workers giving 188 frames/s over 4 clips, no faster than one thread.
This script splits those figures, each part written to ``--json`` as soon as it is measured (a time limit
keeps what was done):

* decode      1080p clips decoded by ``iter_frames`` (the kit's decoder) in 1 thread, ``--workers`` threads,
              ``--workers`` threads that also copy each batch into pinned memory (what the pipelined
              extractor's workers do), and ``--workers`` processes: does decoding scale with cores, and
              what does pinning cost
* detect      CenterFace (torch runtime on the device) on batches of 1080p frames after a warm-up: the
              whole ``detect`` against its network forward alone (upload + resize + CNN), fp32 and under
              bf16 autocast
* backbone    ViT-L/14 (random weights, bf16) at batch sizes ``--batches``, eager, then the top CUDA
              kernels of one forward (torch.profiler), then ``torch.compile`` (its compile time too)

    python3 benchmarks/gpu_profile.py --device cuda --json /tmp/gpu_profile.json          # one H100/H200, ~2 min
    .venv/bin/python benchmarks/gpu_profile.py --device cpu --clips 2 --seconds 0.3 --image-size 28 \\
        --batches 8 --arch vit_small_patch14_dinov2 --no-compile                      # the script itself, on a CPU
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kitlib.faces import build_detector  # noqa: E402
from kitlib.faces.video import iter_frames  # noqa: E402
from kitlib.runtime import pick_device, seed_everything  # noqa: E402
from kitlib.visual.backbones import build_backbone  # noqa: E402
from kitlib.visual.pipelined import prepare_backbone  # noqa: E402

from common import machine_line  # noqa: E402
from pipelined_extraction import matmul_peak, vit_flops_per_image, write_clip  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_frames(path: str, pin: bool = False) -> int:
    """Decode one clip with the kit's decoder; with ``pin``, copy every batch into pinned memory as the
    pipelined extractor's workers do."""
    n = 0
    for batch in iter_frames(path, batch_size=64):
        if pin:
            torch.from_numpy(batch.frames).pin_memory()
        n += len(batch.index)
    return n


def decode_rates(clips: list[Path], *, workers: int, cuda: bool) -> dict[str, float]:
    paths = [str(p) for p in clips]
    rates = {}
    tic = time.perf_counter()
    n = decode_frames(paths[0])
    rates["one_thread_fps"] = n / (time.perf_counter() - tic)
    variants = [("threads", ThreadPoolExecutor, False), ("processes", ProcessPoolExecutor, False)]
    if cuda:
        variants.insert(1, ("threads_pinned", ThreadPoolExecutor, True))
    for name, pool_type, pin in variants:
        with pool_type(workers) as pool:
            tic = time.perf_counter()
            n = sum(pool.map(decode_frames, paths, [pin] * len(paths)))
            rates[f"{workers}_{name}_fps"] = n / (time.perf_counter() - tic)
    return rates


def detect_rates(clip: Path, *, device: torch.device, batch: int, repeats: int) -> dict[str, float]:
    frames = np.concatenate([b.frames for b in iter_frames(clip, batch_size=batch)])[:batch]
    detector = build_detector("centerface", device=device, runtime="torch" if device.type == "cuda" else "auto")
    out: dict[str, float] = {"frames_per_batch": len(frames), "height": frames.shape[1], "width": frames.shape[2]}
    for _ in range(2):
        detector.detect(frames)  # warm-up: CUDA context, cuDNN's algorithm search
    sync(device)
    tic = time.perf_counter()
    for _ in range(repeats):
        detector.detect(frames)
    sync(device)
    out["detect_fps"] = repeats * len(frames) / (time.perf_counter() - tic)
    tic = time.perf_counter()
    for _ in range(repeats):
        detector._forward(frames)
    sync(device)
    out["forward_fps"] = repeats * len(frames) / (time.perf_counter() - tic)
    if device.type == "cuda":
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                detector._forward(frames)
                sync(device)
                tic = time.perf_counter()
                for _ in range(repeats):
                    detector._forward(frames)
                sync(device)
            out["forward_bf16_autocast_fps"] = repeats * len(frames) / (time.perf_counter() - tic)
        except Exception as exc:  # noqa: BLE001 - an experiment: say why it could not run
            out["forward_bf16_autocast"] = f"failed: {type(exc).__name__}: {exc}"
    return out


def backbone_rates(*, arch: str, image_size: int, batches: list[int], device: torch.device, peak: float,
                   compile: bool, profile: bool, out: dict, save) -> dict:
    """Fills ``out`` as it goes (``save`` writes it), so a time limit keeps the parts measured."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    bb, input_dtype, _ = prepare_backbone(build_backbone(arch=arch, img_size=image_size), device=device, dtype=dtype,
                                          weights_bf16=True, compile=False)
    flops = vit_flops_per_image(bb)
    out.update({"arch": arch, "gflop_per_crop": flops / 1e9, "eager": {}})

    def rate(model, size: int, repeats: int) -> float:
        images = torch.randn(size, 3, image_size, image_size, device=device, dtype=input_dtype)
        with torch.inference_mode():
            model(images)
            sync(device)
            tic = time.perf_counter()
            for _ in range(repeats):
                model(images)
            sync(device)
        return repeats * size / (time.perf_counter() - tic)

    for size in batches:
        r = rate(bb, size, 10 if cuda else 2)
        out["eager"][str(size)] = {"crops_per_s": r, "fraction_of_peak": flops * r / 1e12 / peak}
        print(f"backbone eager, batch {size:5d}: {r:8.1f} crops/s = {flops * r / 1e12 / peak:.0%} of the measured peak",
              flush=True)
        save()
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        images = torch.randn(batches[0], 3, image_size, image_size, device=device, dtype=input_dtype)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        try:
            with torch.inference_mode(), torch_profile(activities=activities) as prof:
                for _ in range(2):
                    bb(images)
                sync(device)
            table = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=14)
            print(table, flush=True)
            out["profile_table"] = table
        except Exception as exc:  # noqa: BLE001
            out["profile_table"] = f"failed: {type(exc).__name__}: {exc}"
        save()
    if compile:
        tic = time.perf_counter()
        compiled = torch.compile(bb)
        with torch.inference_mode():
            compiled(torch.randn(batches[0], 3, image_size, image_size, device=device, dtype=input_dtype))
        sync(device)
        out["compile_s"] = time.perf_counter() - tic
        r = rate(compiled, batches[0], 10 if cuda else 2)
        out["compiled"] = {"batch": batches[0], "crops_per_s": r, "fraction_of_peak": flops * r / 1e12 / peak}
        print(f"backbone compiled, batch {batches[0]}: {r:8.1f} crops/s = {flops * r / 1e12 / peak:.0%} of the measured "
              f"peak (compiled in {out['compile_s']:.0f} s)", flush=True)
        save()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clips", type=int, default=8, help="1080p clips for the decode part")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--workers", type=int, default=None, help="decode threads / processes (default min(cores, 8))")
    parser.add_argument("--detect-batch", type=int, default=64)
    parser.add_argument("--arch", default="vit_large_patch14_dinov2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[384, 768])
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    seed_everything(0)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    workers = args.workers or min(os.cpu_count() or 1, 8)
    figures: dict = {"machine": machine_line(device), "device": str(device)}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")

    print(figures["machine"], flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="gpu_profile_"))
    clips = [write_clip(workdir / f"clip_{k}.mp4", width=args.width, height=args.height,
                        n_frames=int(args.seconds * 30), seed=k) for k in range(args.clips)]
    # decode first: its processes fork before CUDA is initialised
    figures["decode"] = decode_rates(clips, workers=workers, cuda=cuda)
    print("decode " + ", ".join(f"{k} {v:.1f}" for k, v in figures["decode"].items()), flush=True)
    save()
    figures["detect"] = detect_rates(clips[0], device=device, batch=args.detect_batch, repeats=5 if cuda else 1)
    print("detect " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in figures["detect"].items()), flush=True)
    save()
    dtype = torch.bfloat16 if cuda else torch.float32
    figures["matmul_peak_tflops"] = peak = matmul_peak(device, dtype, 8192 if cuda else 1024, 10 if cuda else 3)
    print(f"matmul peak {peak:.1f} TFLOP/s", flush=True)
    figures["backbone"] = {}
    backbone_rates(arch=args.arch, image_size=args.image_size, batches=args.batches, device=device, peak=peak,
                   compile=not args.no_compile, profile=True, out=figures["backbone"], save=save)
    save()


if __name__ == "__main__":
    main()
