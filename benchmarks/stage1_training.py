"""Stage I training throughput: images/s per device for DINOv2 + MoE head with the first blocks frozen.

Seed 000 sec. 3.1.2-3.1.3 (eqs. 2-5): the step of ``kitlib.visual.stage1.train_stage1`` (mixup, label
smoothing, class-weighted soft-target cross-entropy, AdamW), random-init backbone (speed does not
depend on the weights). Rows, each with peak host memory and, on CUDA, peak GPU memory:

* ``model step``   random image tensors already on the device, batch ``--batch-size``, the kit's
                   setting (bf16 autocast on CUDA, fp32 on CPU), first ``--frozen`` blocks frozen;
                   side by side the straightforward baseline: fp32, one image per step. On CUDA also
                   the training FLOPs per image (forward through every block, backward through the
                   trainable ones) and the fraction of ``--peak-tflops``.
* ``train_stage1`` the kit's own training loop on generated face images on disk (decode, resize,
                   PadAug, ``--workers`` loader processes): what a run gets per device. Under
                   torchrun (DDP) multiply by the number of GPUs, less the gradient all-reduce.

    .venv/bin/python benchmarks/stage1_training.py                  # CPU: ViT-S/14 @112 px, a few steps
    .venv/bin/python benchmarks/stage1_training.py --device cuda    # ViT-L/14 @224 px, batch 64, bf16
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import PeakMemory, machine_line  # noqa: E402
from visual_extraction import vit_flops_per_image  # noqa: E402

from kitlib import NUM_CLASSES  # noqa: E402
from kitlib.visual.backbones import build_backbone, feature_dim, freeze_backbone_blocks  # noqa: E402
from kitlib.visual.padaug import PadAug  # noqa: E402
from kitlib.runtime import pick_device, seed_everything  # noqa: E402
from kitlib.visual.stage1 import Stage1Model, build_head, mixup, smooth_targets, soft_target_cross_entropy, train_stage1  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_flops_per_image(model: torch.nn.Module, n_frozen: int) -> float:
    """Forward through all blocks + backward (2x forward) through the trainable blocks only."""
    forward, _ = vit_flops_per_image(model)
    per_block = forward / len(model.blocks)  # the patch embedding (frozen, <1%) is folded in
    return forward + 2 * per_block * (len(model.blocks) - n_frozen)


def step_rate(model: torch.nn.Module, *, batch: int, steps: int, image_size: int, device: torch.device,
              amp: torch.dtype | None, desc: str) -> float:
    """Images/s of the Stage-I training step on random tensors (one untimed warm-up step)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    weights = torch.ones(NUM_CLASSES, device=device)
    generator = torch.Generator().manual_seed(0)

    def one_step() -> None:
        x, y, _ = mixup(images, smooth_targets(labels, label_smoothing=0.1), 0.2, generator)
        with torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext():
            logits = model(x)
        loss = soft_target_cross_entropy(logits, y, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    one_step()
    sync(device)
    tic = time.perf_counter()
    for _ in tqdm(range(steps), desc=desc, leave=False):
        one_step()
    sync(device)
    return batch * steps / (time.perf_counter() - tic)


def face_items(root: Path, n: int, size: int) -> list[tuple[Path, int]]:
    """``n`` generated face-like JPEGs (a bright ellipse on noise), labels cycling over the classes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    face = (((xx - size / 2) / (0.3 * size)) ** 2 + ((yy - size / 2) / (0.4 * size)) ** 2) < 1
    items = []
    for i in range(n):
        image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        image[face] = rng.integers(150, 230, 3, dtype=np.uint8)
        path = root / f"{i:05d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        items.append((path, i % NUM_CLASSES))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default=None, help="default vit_large_patch14_dinov2 on CUDA, vit_small on CPU")
    parser.add_argument("--image-size", type=int, default=None, help="default 224 CUDA, 112 CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 CUDA, 8 CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CUDA, 3 CPU)")
    parser.add_argument("--frozen", type=int, default=8, help="first N blocks frozen (paper: 8)")
    parser.add_argument("--workers", type=int, default=None, help="loader processes for train_stage1 (8 CUDA, 0 CPU)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    seed_everything(0)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    arch = args.arch or ("vit_large_patch14_dinov2" if cuda else "vit_small_patch14_dinov2")
    size = args.image_size or (224 if cuda else 112)
    batch = args.batch_size or (64 if cuda else 8)
    steps = args.steps or (20 if cuda else 3)
    workers = args.workers if args.workers is not None else (8 if cuda else 0)
    amp = torch.bfloat16 if cuda else None
    print(machine_line(device))

    backbone = build_backbone(arch=arch, img_size=size)
    freeze_backbone_blocks(backbone, args.frozen)
    model = Stage1Model(backbone, build_head("moe", dim=feature_dim(backbone))).to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    flops = train_flops_per_image(backbone, args.frozen)
    settings = (f"{arch} @{size}px + MoE head, {args.frozen}/{len(backbone.blocks)} blocks frozen "
                f"({trainable:.0f}M trainable)")
    with PeakMemory(device=device) as peak:
        rate = step_rate(model, batch=batch, steps=steps, image_size=size, device=device, amp=amp, desc="kit step")
    base = None
    if not args.no_baseline:
        with PeakMemory(device=device) as base_peak:
            base = step_rate(model, batch=1, steps=max(2, steps // 2), image_size=size, device=device, amp=None,
                             desc="baseline step")
    achieved = flops * rate / 1e12
    line = (f"model step     {rate:8.1f} images/s ({settings}, batch {batch}, {'bf16 autocast' if cuda else 'fp32'}, "
            f"{steps} steps); {flops / 1e9:.1f} GFLOP/image -> {achieved * 1e3:.1f} GFLOP/s")
    if cuda:
        line += f" = {achieved / args.peak_tflops:.1%} of {args.peak_tflops:.0f}"
    print(line + f"; {peak.summary()}")
    if base:
        print(f"  baseline     {base:8.1f} images/s (fp32, batch 1), kit x{rate / base:.1f}; {base_peak.summary()}")
    del model

    # the kit's own loop, from JPEGs on disk
    with tempfile.TemporaryDirectory(prefix="stage1_bench_") as tmp:
        n_train = batch * (steps + 1)
        items = face_items(Path(tmp), n_train + 2 * batch, 128)
        backbone = build_backbone(arch=arch, img_size=size)
        with PeakMemory(device=device) as loop_peak:
            result = train_stage1(backbone=backbone, train_items=items[:n_train], val_items=items[n_train:],
                                  epochs=1, batch_size=batch, padaug=PadAug(), n_frozen_blocks=args.frozen,
                                  image_size=size, device=device, amp_dtype=amp, num_workers=workers,
                                  out_path=Path(tmp) / "backbone.safetensors", max_steps_per_epoch=steps + 1)
        loop_rate = result["history"][0]["images_per_s"]
        print(f"train_stage1   {loop_rate:8.1f} images/s ({steps + 1} steps incl. the first, batch {batch}, JPEG decode "
              f"+ PadAug, {workers} loader workers); {loop_peak.summary()}")


if __name__ == "__main__":
    main()
