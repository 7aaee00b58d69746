"""Visual-branch throughput, stage by stage (seed 000, sec. 3.2.1: decode -> detect -> crop -> DINOv2, eqs. 6-7).

Prints, with the settings used, on ``--device`` (CPU by default; ``--device cuda`` on a GPU):

* decoded frames/s            ``kitlib.faces.video.iter_frames`` over the whole video
* detected frames/s           ``build_detector("opencv-haar")`` on the decoded frames
* crop_faces crops/s          ``kitlib.faces.crop_faces`` (3 scales, zero padding) on the decoded frames
* backbone crops/s            ``build_backbone(arch=--arch)`` random init at ``--image-size``, batches of
                              ``--batch-size`` crops under ``torch.inference_mode`` (bf16 autocast on CUDA;
                              timm's attention uses ``F.scaled_dot_product_attention``)
* end to end ms/frame         ``kitlib.visual.extract.extract_visual_features`` on the video (``--e2e-arch``)

Each row also has a "straightforward baseline" where it is cheap to run: fp32, batch 1, one frame
(or one crop) at a time, and the speed-up of the kit's setting over it (end to end only on CUDA or
with ``--e2e-baseline``: on 2 CPU cores it takes ~1 s per frame). On CUDA the backbone row
adds the model FLOPs per crop (analytic count, formula printed), achieved TFLOP/s, the fraction of
``--peak-tflops`` (989 = H100/H200 SXM dense bf16), and peak GPU memory per stage.

The input video is generated with ``kitlib.data.demo`` (one single-person 256x192 video, 6-7 s at
30 fps) unless ``--video PATH`` is given. Weights are random: speed does not depend on them.

    .venv/bin/python benchmarks/visual_extraction.py                       # CPU, ~2-3 min on 2 cores
    .venv/bin/python benchmarks/visual_extraction.py --device cuda --batch-size 256 --crop-batches 20
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kitlib.visual.backbones import build_backbone, input_mean_std  # noqa: E402
from kitlib.data import Track  # noqa: E402
from kitlib.faces import build_detector, crop_faces, normalize, track_faces  # noqa: E402
from kitlib.runtime import pick_device, seed_everything  # noqa: E402
from kitlib.store import FeatureStore  # noqa: E402
from kitlib.faces.video import iter_frames, probe  # noqa: E402
from kitlib.visual.extract import extract_visual_features  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GpuBusy, PeakMemory, machine_line  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else "-"


def vit_flops_per_image(model: torch.nn.Module) -> tuple[float, str]:
    """Forward FLOPs of one image through a timm ViT (2 FLOPs per multiply-add), and the formula.

    N tokens (patches + prefix), width d, L blocks, MLP hidden h, patch p, 3 input channels:
    per block 2*N*(3d^2 [qkv] + d^2 [proj] + 2*d*h [mlp]) + 2*2*N^2*d [q@k^T and attn@v];
    plus the patch embedding 2*P*(3*p^2)*d over the P patches. Norms, softmax, GELU ignored (<1%).
    """
    n_patches = int(model.patch_embed.num_patches)
    n_tokens = n_patches + int(getattr(model, "num_prefix_tokens", 1))
    d = int(model.embed_dim)
    depth = len(model.blocks)
    hidden = int(model.blocks[0].mlp.fc1.out_features)
    patch = int(model.patch_embed.patch_size[0])
    per_block = 2 * n_tokens * (4 * d * d + 2 * d * hidden) + 4 * n_tokens * n_tokens * d
    total = depth * per_block + 2 * n_patches * 3 * patch * patch * d
    formula = (f"L*(2N(4d^2+2dh) + 4N^2 d) + 2P*3p^2*d with L={depth}, N={n_tokens}, P={n_patches}, "
               f"d={d}, h={hidden}, p={patch}")
    return float(total), formula


def time_calls(fn: Callable[[], object], *, device: torch.device, repeats: int, desc: str,
               warmup: Callable[[], object] | None = None) -> float:
    """Seconds per call of ``fn`` (after one untimed call of ``warmup``, default ``fn``), best of ``repeats``."""
    (warmup or fn)()
    sync(device)
    best = float("inf")
    for _ in tqdm(range(repeats), desc=desc, leave=False):
        tic = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - tic)
    return best


def row(name: str, kit: float, unit: str, settings: str, baseline: float | None = None,
        baseline_settings: str = "", extra: str = "") -> None:
    """One printed result line: the kit's rate, the baseline's rate and their ratio."""
    base = f" | baseline {baseline:9.1f} {unit} ({baseline_settings}), x{kit / baseline:.1f}" \
        if baseline else ""
    print(f"{name:22s} {kit:9.1f} {unit} ({settings}){base}{extra}", flush=True)


def default_video(workdir: Path) -> Path:
    """A single-person demo video (256x192, 6-7 s at 30 fps) written by ``kitlib.data.demo``."""
    from kitlib.data.demo import generate_demo

    manifest = generate_demo(workdir / "demo", n_train=0, n_val=1, n_test=0, seconds=(6.0, 7.0),
                             images_per_class=1)
    return workdir / "demo" / manifest["tracks"][0]["video"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--video", type=Path, default=None, help="input video (default: a generated demo video)")
    parser.add_argument("--arch", default="vit_large_patch14_dinov2", help="backbone for the crops/s row")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=None, help="crops per forward (default 8 CPU, 256 CUDA)")
    parser.add_argument("--crop-batches", type=int, default=None, help="timed batches (default 2 CPU, 20 CUDA)")
    parser.add_argument("--e2e-arch", default=None,
                        help="backbone of the end-to-end run (default vit_small_patch14_dinov2 on CPU, --arch on CUDA)")
    parser.add_argument("--e2e-image-size", type=int, default=None, help="default 112 on CPU, --image-size on CUDA")
    parser.add_argument("--e2e-batch-size", type=int, default=None, help="crops per forward end to end (64 CPU, 256 CUDA)")
    parser.add_argument("--crop-scales", type=float, nargs="+", default=[0.9, 1.2, 1.5])
    parser.add_argument("--decode-batch", type=int, default=128)
    parser.add_argument("--max-gap", type=int, default=15)
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 peak of the GPU (H100 SXM and H200: 989)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the fp32 / batch-1 baseline column")
    parser.add_argument("--e2e-baseline", action="store_true",
                        help="also run the end-to-end baseline on CPU (~1 s/frame on 2 cores; always run on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    seed_everything(0)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_size = args.batch_size or (256 if cuda else 8)
    crop_batches = args.crop_batches or (20 if cuda else 2)
    e2e_arch = args.e2e_arch or (args.arch if cuda else "vit_small_patch14_dinov2")
    e2e_size = args.e2e_image_size or (args.image_size if cuda else 112)
    e2e_batch = args.e2e_batch_size or (256 if cuda else 64)
    dtype = torch.bfloat16 if cuda else torch.float32
    scales = tuple(args.crop_scales)
    baseline = not args.no_baseline

    workdir = Path(tempfile.mkdtemp(prefix="visual_bench_"))
    video = args.video or default_video(workdir)
    info = probe(video)
    print(machine_line(device))
    print(f"device={device} ({torch.cuda.get_device_name(device) if cuda else 'cpu'}), torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, dtype={'bf16 autocast' if cuda else 'fp32'}")
    print(f"video={video} ({info.n_frames} frames, {info.width}x{info.height}, {info.fps:.1f} fps), "
          f"crop_scales={list(scales)}")

    # ---- decode
    tic = time.perf_counter()
    frames = np.concatenate([b.frames for b in tqdm(iter_frames(video, batch_size=args.decode_batch),
                                                    desc="decode", leave=False)])
    decode_s = time.perf_counter() - tic
    base_rate = None
    if baseline:
        tic = time.perf_counter()
        n = sum(len(b.index) for b in iter_frames(video, batch_size=1))
        base_rate = n / (time.perf_counter() - tic)
    row("decode", len(frames) / decode_s, "frames/s", f"iter_frames batch_size={args.decode_batch}",
        base_rate, "batch_size=1")

    # ---- detect
    detector = build_detector("opencv-haar")
    tic = time.perf_counter()
    detections = []
    for start in tqdm(range(0, len(frames), args.decode_batch), desc="detect", leave=False):
        detections.extend(detector.detect(frames[start:start + args.decode_batch]))
    detect_s = time.perf_counter() - tic
    found = sum(len(d) > 0 for d in detections)
    row("detect (opencv-haar)", len(frames) / detect_s, "frames/s",
        f"defaults scale_factor=1.1 min_neighbors=5 max_side=480; face in {found}/{len(frames)} frames; "
        f"cascade runs one image at a time, so no batch-1 baseline")

    # ---- crop_faces (boxes from the tracked detections; frames without a face get a centred box)
    track = track_faces(detections, frame_size=(info.width, info.height), side=None, max_gap=args.max_gap)
    boxes = np.where(track.present[:, None], track.boxes,
                     np.array([info.width * 0.3, info.height * 0.2, info.width * 0.7, info.height * 0.8],
                              np.float32))
    frames_t = torch.from_numpy(frames).permute(0, 3, 1, 2).to(device)
    boxes_t = torch.from_numpy(boxes.astype(np.float32)).to(device)
    chunk = 64

    def crop_all() -> None:
        for start in range(0, len(frames_t), chunk):
            crop_faces(frames_t[start:start + chunk], boxes_t[start:start + chunk], scales=scales,
                       out_size=args.image_size)

    reset_peak(device)
    crop_s = time_calls(crop_all, device=device, repeats=2, desc="crop_faces")
    n_base = min(len(frames_t), 64)

    def crop_one_by_one() -> None:
        for i in range(n_base):
            crop_faces(frames_t[i:i + 1], boxes_t[i:i + 1], scales=scales, out_size=args.image_size)

    base_rate = None
    if baseline:
        base_rate = n_base * len(scales) / time_calls(crop_one_by_one, device=device, repeats=1, desc="crop batch 1")
    row("crop_faces", len(frames) * len(scales) / crop_s, "crops/s",
        f"{chunk} frames x {len(scales)} scales per call -> {args.image_size}px, antialiased", base_rate,
        "one frame per call", extra=f", peak GPU {peak_gib(device)}" if cuda else "")

    # ---- backbone crops/s
    model = build_backbone(arch=args.arch, img_size=args.image_size).to(device).eval()
    flops, formula = vit_flops_per_image(model)
    mean, std = input_mean_std(model)
    images = normalize(torch.rand(batch_size, 3, args.image_size, args.image_size, device=device), mean, std)
    autocast = (lambda: torch.autocast(device_type="cuda", dtype=dtype)) if cuda else nullcontext

    def forward_batches() -> None:
        with torch.inference_mode(), autocast():
            for _ in range(crop_batches):
                model(images)

    reset_peak(device)
    def warm_up() -> None:  # kernels and allocator, on a small batch (a full one takes ~20 s on 2 CPU cores)
        with torch.inference_mode(), autocast():
            model(images[: min(len(images), 2 if not cuda else len(images))])

    backbone_s = time_calls(forward_batches, device=device, repeats=1, desc=f"{args.arch} batches", warmup=warm_up)
    rate = crop_batches * batch_size / backbone_s
    peak_mem = peak_gib(device)
    base_rate, n_single = None, 4 if cuda else 2
    if baseline:
        one = images[:1].float()

        def forward_single() -> None:
            with torch.inference_mode():
                for _ in range(n_single):
                    model(one)

        base_rate = n_single / time_calls(forward_single, device=device, repeats=1, desc="batch 1 fp32",
                                          warmup=lambda: None)  # already warm
    achieved = flops * rate / 1e12
    extra = f"; {flops / 1e9:.1f} GFLOP/crop -> {achieved:.2f} TFLOP/s"
    if cuda:
        extra += f" = {achieved / args.peak_tflops:.1%} of {args.peak_tflops:.0f} TFLOP/s peak; peak GPU {peak_mem}"
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    row("backbone", rate, "crops/s",
        f"{args.arch} {params_m:.0f}M random init @{args.image_size}px, batch {batch_size} x {crop_batches}, "
        f"inference_mode, {'bf16 autocast, ' if cuda else 'fp32, '}sdpa={model.blocks[0].attn.fused_attn}",
        base_rate, f"fp32 batch 1 x {n_single}", extra)
    print(f"{'':22s} FLOPs/crop = {formula}")
    model = images = None  # free the large backbone before the end-to-end run
    reset_peak(device)

    # ---- end to end
    e2e_model = build_backbone(arch=e2e_arch, img_size=e2e_size)
    e2e_mean, e2e_std = input_mean_std(e2e_model)
    track_rec = Track(txtid=video.stem, videoid=video.stem, split="Test_Set", video_path=video, labels_path=None,
                      side=None)

    def run_e2e(tag: str, *, batch: int, decode_batch: int, run_dtype: torch.dtype) -> tuple[float, object]:
        store = FeatureStore(workdir / f"store_{tag}", "visual")
        tic = time.perf_counter()
        report = extract_visual_features([track_rec], store, e2e_model, detector=detector, crop_scales=scales,
                                         image_size=e2e_size, mean=e2e_mean, std=e2e_std, batch_size=batch,
                                         max_gap=args.max_gap, device=device, dtype=run_dtype,
                                         decode_batch=decode_batch, manifest={"benchmark": tag})
        sync(device)
        return time.perf_counter() - tic, report

    reset_peak(device)
    busy = GpuBusy(e2e_model, device)  # summed CUDA-event time of the backbone forwards
    with PeakMemory() as host_peak:
        e2e_s, report = run_e2e("kit", batch=e2e_batch, decode_batch=args.decode_batch, run_dtype=dtype)
    e2e_peak = peak_gib(device)
    busy_s = busy.seconds()
    busy.close()
    n_frames = int(report["frames"].iloc[0])
    status = f"{report['status'].iloc[0]}, detected {report['detected'].iloc[0]}, bridged {report['bridged'].iloc[0]}"
    base_ms = None
    if baseline and (cuda or args.e2e_baseline):
        base_s, _ = run_e2e("baseline", batch=len(scales), decode_batch=1, run_dtype=torch.float32)
        base_ms = 1000 * base_s / n_frames
    kit_ms = 1000 * e2e_s / n_frames
    settings = (f"{e2e_arch} @{e2e_size}px, {len(scales)} scales, batch {e2e_batch} crops, decode_batch "
                f"{args.decode_batch}, {'bf16' if cuda else 'fp32'}; {n_frames} frames, {status}")
    base = f" | baseline {base_ms:.1f} ms/frame (fp32, one frame's crops per forward, decode_batch 1), " \
           f"x{base_ms / kit_ms:.1f}" if base_ms else ""
    print(f"{'end to end':22s} {kit_ms:9.1f} ms/frame = {1000 / kit_ms:.1f} frames/s ({settings}){base}"
          + (f", peak GPU {e2e_peak}, GPU busy (backbone) {busy_s:.1f} s of {e2e_s:.1f} s wall = {busy_s / e2e_s:.0%}"
             if cuda else "") + f"; kit run {host_peak.summary()}", flush=True)


if __name__ == "__main__":
    main()
