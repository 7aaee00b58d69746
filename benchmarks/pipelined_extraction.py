"""Visual extraction at the release's real resolutions: each stage's rate, serial vs pipelined end to end.

Generates ``--clips`` H.264 clips per size (``--sizes``: 720p = 1280x720, 1080p = 1920x1080, 30 fps,
``--seconds`` long) of a face moving and changing scale over a textured, panning background, then
measures on ``--device``:

* matmul peak           a square matrix product in the compute dtype (bf16 on CUDA, fp32 on CPU),
                        measured here rather than assumed: the backbone's fraction is of THIS figure
* decode                ``iter_frames`` per size, one thread; and the pipelined extractor's parallel
                        decode (``--decode-workers`` threads over all clips)
* detect                the registry's ``--detector`` on decoded frames (its own detection resolution)
* crop                  ``crop_faces`` on the device from full-resolution frames (3 scales)
* backbone              ``--arch`` at ``--image-size``, batches of ``--batch-size`` crops (bf16 weights on
                        CUDA, timm's SDPA attention): crops/s, GFLOP/crop, fraction of the measured peak
* end to end            ``extract_visual_features`` (serial) and ``extract_visual_features_pipelined`` (faces
                        detected in its decode workers) on the SAME clips, one after the other: frames/s each and their ratio, where the
                        pipelined main thread spent its time, GPU busy (backbone forwards, CUDA events) /
                        wall, peak GPU and host memory, and the largest feature difference between the two
* projection            the whole release's visual extraction time from the metadata's frame counts
                        (../shared/abaw10-metadata: decoded frames of train+validation+test, and crops =
                        3 scales x frames of every annotation track), at the end-to-end rate and per stage

``--json PATH`` writes every figure to one JSON file (benchmarks/gpu_check.sh collects it).

    .venv/bin/python benchmarks/pipelined_extraction.py                       # CPU, 2 x 2 short clips, ~5 min on 2 cores
    .venv/bin/python benchmarks/pipelined_extraction.py --device cuda --arch vit_large_patch14_dinov2 \
        --image-size 224 --batch-size 384 --seconds 20 --clips 4 --decode-workers 8     # one H100/H200
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kitlib.data import Track  # noqa: E402
from kitlib.faces import build_detector, crop_faces  # noqa: E402
from kitlib.faces.video import iter_frames, probe  # noqa: E402
from kitlib.runtime import pick_device, seed_everything  # noqa: E402
from kitlib.store import FeatureStore  # noqa: E402
from kitlib.visual.backbones import build_backbone, input_mean_std  # noqa: E402
from kitlib.visual.extract import extract_visual_features  # noqa: E402
from kitlib.visual.pipelined import StageTimes, _Decoder, extract_visual_features_pipelined, prepare_backbone  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GpuBusy, PeakMemory, machine_line, metadata_dir  # noqa: E402

SIZES = {"360p": (640, 360), "480p": (848, 480), "720p": (1280, 720), "1080p": (1920, 1080)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_clip(path: Path, *, width: int, height: int, n_frames: int, seed: int) -> Path:
    """An H.264 clip (30 fps, yuv420p) of the astronaut's face moving on a Lissajous path, growing and
    shrinking, over a smooth textured background that pans: what a tracker and a codec both have to work at."""
    import av
    import cv2
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    noise = cv2.resize(rng.integers(0, 255, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8),
                       (width + 64, height + 64), interpolation=cv2.INTER_CUBIC)
    face = skdata.astronaut()[20:300, 110:360]  # the head, 250 x 280
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for t in range(n_frames):
            shift = int(32 + 30 * np.sin(t / 25))
            frame = noise[shift:shift + height, shift:shift + width].copy()
            side = int(height * (0.35 + 0.1 * np.sin(t / 40 + seed)))
            patch = cv2.resize(face, (side * 250 // 280, side), interpolation=cv2.INTER_AREA)
            x = int((width - patch.shape[1]) * (0.5 + 0.4 * np.sin(t / 30 + seed)))
            y = int((height - side) * (0.5 + 0.4 * np.cos(t / 45)))
            frame[y:y + side, x:x + patch.shape[1]] = patch
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """Measured TFLOP/s of an n x n x n matrix product (mean of ``repeats`` after warm-up)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    tic = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - tic) / 1e12


def vit_flops_per_image(model: torch.nn.Module) -> float:
    """Forward FLOPs per image of a timm ViT (formula in benchmarks/visual_extraction.py)."""
    n_patches = int(model.patch_embed.num_patches)
    n = n_patches + int(getattr(model, "num_prefix_tokens", 1))
    d, depth, h = int(model.embed_dim), len(model.blocks), int(model.blocks[0].mlp.fc1.out_features)
    p = int(model.patch_embed.patch_size[0])
    return float(depth * (2 * n * (4 * d * d + 2 * d * h) + 4 * n * n * d) + 2 * n_patches * 3 * p * p * d)


def parallel_decode_rate(paths: list[Path], *, workers: int, decode_batch: int, pin: bool) -> float:
    """Frames/s of the pipelined extractor's decode workers over ``paths`` (``workers`` videos at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    decoders = [_Decoder(p, decode_batch=decode_batch, max_batches=2, pin=pin) for p in paths]

    def drain(decoder: _Decoder) -> int:
        decoder.info()
        return sum(len(b.index) for b in decoder.batches(torch.device("cpu"), StageTimes()))

    tic = time.perf_counter()
    with ThreadPoolExecutor(workers) as decode, ThreadPoolExecutor(len(decoders)) as consume:
        for decoder in decoders:
            decode.submit(decoder.run)
        frames = sum(consume.map(drain, decoders))
    return frames / (time.perf_counter() - tic)


def fp8_backbone(bb: torch.nn.Module, images: torch.Tensor, *, device: torch.device, compile: bool, bf16_rate: float,
                 flops: float, peak: float, emit) -> dict:
    """fp8 (e4m3, dynamic per-row activation scales) inference of a copy of the bf16 backbone through torchao:
    crops/s and the cosine agreement of its features with bf16's. Skipped (said why) where it cannot run."""
    import copy

    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as exc:
        emit("backbone fp8", f"skipped: torchao is not installed ({exc})")
        return {"skipped": f"torchao: {exc}"}
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        emit("backbone fp8", "skipped: needs a CUDA GPU with fp8 tensor cores (Ada / Hopper)")
        return {"skipped": "no fp8 GPU"}
    fp8 = copy.deepcopy(bb)
    quantize_(fp8, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    if compile:
        fp8 = torch.compile(fp8)
    with torch.inference_mode():
        reference = bb(images).float()
        out = fp8(images).float()
        sync(device)
        tic = time.perf_counter()
        for _ in range(10):
            fp8(images)
        sync(device)
    rate = 10 * len(images) / (time.perf_counter() - tic)
    cosine = torch.nn.functional.cosine_similarity(out, reference, dim=1)
    result = {"crops_per_s": rate, "speedup_over_bf16": rate / bf16_rate, "cosine_min": float(cosine.min()),
              "cosine_mean": float(cosine.mean()), "fraction_of_bf16_peak": flops * rate / 1e12 / peak}
    emit("backbone fp8", f"{rate:8.1f} crops/s (torchao fp8 e4m3, per-row dynamic scales{', compiled' if compile else ''}; "
                         f"x{rate / bf16_rate:.2f} over bf16; cosine with bf16 features min {result['cosine_min']:.4f}, "
                         f"mean {result['cosine_mean']:.4f})")
    return result


def release_counts(metadata: Path) -> dict[str, float] | None:
    """Decoded frames (videos), track frames (annotation files) and audio hours of the whole release."""
    files = [metadata / f for f in ("expr_video_meta.csv", "expr_test_video_meta.csv", "expr_video_index.csv",
                                    "expr_test_video_index.csv")]
    if not all(f.is_file() for f in files):
        return None
    meta = pd.concat([pd.read_csv(files[0]), pd.read_csv(files[1])]).drop_duplicates("videoid")
    index = pd.concat([pd.read_csv(files[2]), pd.read_csv(files[3])]).drop_duplicates("txtid")
    tracks = index.merge(meta, on="videoid")
    return {"videos": int(len(meta)), "decoded_frames": int(meta["n_frames"].sum()), "tracks": int(len(tracks)),
            "track_frames": int(tracks["n_frames"].sum()), "audio_hours": float(meta["audio_duration_sec"].sum() / 3600)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=["720p", "1080p"], choices=sorted(SIZES))
    parser.add_argument("--clips", type=int, default=2, help="clips per size")
    parser.add_argument("--seconds", type=float, default=None, help="clip length (default 2 s CPU, 10 s CUDA)")
    parser.add_argument("--arch", default=None, help="default vit_small_patch14_dinov2 (CPU), vit_large_patch14_dinov2 (CUDA)")
    parser.add_argument("--image-size", type=int, default=None, help="default 56 CPU, 224 CUDA")
    parser.add_argument("--batch-size", type=int, default=None, help="crops per forward (default 96 CPU, 384 CUDA)")
    parser.add_argument("--decode-batch", type=int, default=64)
    parser.add_argument("--decode-workers", type=int, default=None, help="default min(cores, 8)")
    parser.add_argument("--detector", default="opencv-haar", help="a registered face detector")
    parser.add_argument("--detector-option", nargs="*", default=[], metavar="KEY=VALUE",
                        help="detector keyword options, values read as YAML (e.g. device=cuda runtime=torch)")
    parser.add_argument("--crop-scales", type=float, nargs="+", default=[0.9, 1.2, 1.5])
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone in the pipelined run")
    parser.add_argument("--fp8", action="store_true", help="also time an fp8 copy of the backbone (torchao, Hopper)")
    parser.add_argument("--pin-decoded", action="store_true", help="pipelined: pinned copies of decoded batches (CUDA)")
    parser.add_argument("--no-serial", action="store_true", help="skip the serial end-to-end run")
    parser.add_argument("--metadata", type=Path, default=metadata_dir())
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    seed_everything(0)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    arch = args.arch or ("vit_large_patch14_dinov2" if cuda else "vit_small_patch14_dinov2")
    image_size = args.image_size or (224 if cuda else 56)
    batch_size = args.batch_size or (384 if cuda else 96)
    seconds = args.seconds or (10.0 if cuda else 2.0)
    workers = args.decode_workers or min(os.cpu_count() or 1, 8)
    scales = tuple(args.crop_scales)
    figures: dict = {"machine": machine_line(device), "device": str(device),
                     "gpu": torch.cuda.get_device_name(device) if cuda else None, "arch": arch,
                     "image_size": image_size, "batch_size": batch_size, "dtype": str(dtype), "sizes": {}}
    print(figures["machine"], flush=True)

    def emit(name: str, text: str) -> None:
        print(f"{name:26s} {text}", flush=True)

    peak = matmul_peak(device, dtype, 8192 if cuda else 1024, 10 if cuda else 3)
    figures["matmul_peak_tflops"] = peak
    emit("matmul peak", f"{peak:.2f} TFLOP/s ({'bf16 8192^3' if cuda else 'fp32 1024^3'}, measured here)")

    workdir = Path(tempfile.mkdtemp(prefix="pipelined_bench_"))
    detector_options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.detector_option)}
    detector = build_detector(args.detector, **detector_options)
    figures["detector"] = {"name": args.detector, **{k: str(v) for k, v in detector_options.items()}}
    clips: list[Path] = []
    tic = time.perf_counter()
    for size in args.sizes:
        width, height = SIZES[size]
        for k in range(args.clips):
            clips.append(write_clip(workdir / f"{size}_{k}.mp4", width=width, height=height,
                                    n_frames=int(seconds * 30), seed=k))
    emit("clips", f"{len(clips)} x {seconds:g} s H.264 at {', '.join(args.sizes)} written in "
                  f"{time.perf_counter() - tic:.0f} s ({workdir})")

    # ---- per size: decode, detect, crop
    model = build_backbone(arch=arch, img_size=image_size).eval()
    mean, std = input_mean_std(model)
    for size in args.sizes:
        path = next(p for p in clips if p.name.startswith(size))
        tic = time.perf_counter()
        batches = list(iter_frames(path, batch_size=args.decode_batch))
        decode_rate = sum(len(b.index) for b in batches) / (time.perf_counter() - tic)
        frames = np.concatenate([b.frames for b in batches])
        detector.detect(batches[0].frames)  # warm-up: a CNN detector's first call on a size searches its kernels
        sync(device)
        tic = time.perf_counter()
        detections = [d for b in batches for d in detector.detect(b.frames, frame_index=b.index)]
        detect_rate = len(frames) / (time.perf_counter() - tic)
        found = sum(len(d) > 0 for d in detections)
        boxes = np.stack([d[np.argmax(d[:, 4]), :4] if len(d) else
                          np.array([0.3 * frames.shape[2], 0.2 * frames.shape[1], 0.7 * frames.shape[2],
                                    0.8 * frames.shape[1]], np.float32) for d in detections]).astype(np.float32)
        chunk = min(len(frames), max(1, batch_size // len(scales)))
        frames_t = torch.from_numpy(frames[:chunk]).to(device).permute(0, 3, 1, 2)
        boxes_t = torch.from_numpy(boxes[:chunk]).to(device)
        crop_faces(frames_t, boxes_t, scales=scales, out_size=image_size)
        sync(device)
        tic = time.perf_counter()
        repeats = 5 if cuda else 2
        for _ in range(repeats):
            crop_faces(frames_t, boxes_t, scales=scales, out_size=image_size)
        sync(device)
        crop_rate = repeats * chunk * len(scales) / (time.perf_counter() - tic)
        figures["sizes"][size] = dict(decode_fps=decode_rate, detect_fps=detect_rate, faces_found=found,
                                      frames=len(frames), crop_per_s=crop_rate)
        emit(f"decode {size}", f"{decode_rate:8.1f} frames/s (iter_frames, one thread, batch {args.decode_batch})")
        emit(f"detect {size}", f"{detect_rate:8.1f} frames/s ({args.detector}; a face in {found}/{len(frames)} frames)")
        emit(f"crop {size}", f"{crop_rate:8.1f} crops/s ({chunk} full-resolution frames x {len(scales)} scales "
                             f"-> {image_size}px on {device.type})")
        del frames, frames_t, batches

    rate = parallel_decode_rate(clips, workers=workers, decode_batch=args.decode_batch, pin=cuda and args.pin_decoded)
    figures["parallel_decode_fps"] = rate
    emit("decode, parallel", f"{rate:8.1f} frames/s ({workers} decode workers over the {len(clips)} clips"
                             f"{', into pinned memory' if cuda and args.pin_decoded else ''})")

    # ---- backbone
    bb, input_dtype, use_autocast = prepare_backbone(build_backbone(arch=arch, img_size=image_size), device=device,
                                                     dtype=dtype, weights_bf16=True, compile=False)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device, dtype=input_dtype)
    n_batches = 10 if cuda else 2
    with torch.inference_mode():
        bb(images)
        sync(device)
        tic = time.perf_counter()
        for _ in range(n_batches):
            bb(images)
        sync(device)
    crops_rate = n_batches * batch_size / (time.perf_counter() - tic)
    flops = vit_flops_per_image(bb)
    achieved = flops * crops_rate / 1e12
    figures["backbone"] = dict(crops_per_s=crops_rate, gflop_per_crop=flops / 1e9, tflops=achieved,
                               fraction_of_peak=achieved / peak, sdpa=bool(bb.blocks[0].attn.fused_attn))
    emit("backbone", f"{crops_rate:8.1f} crops/s ({arch} @{image_size}px, batch {batch_size}, weights {input_dtype}, "
                     f"sdpa={bb.blocks[0].attn.fused_attn}; {flops / 1e9:.1f} GFLOP/crop -> {achieved:.2f} TFLOP/s "
                     f"= {achieved / peak:.0%} of the measured peak)")
    if args.fp8:
        figures["fp8"] = fp8_backbone(bb, images, device=device, compile=args.compile, bf16_rate=crops_rate,
                                      flops=flops, peak=peak, emit=emit)
    del bb, images

    # ---- end to end: serial vs pipelined on the same clips
    tracks = [Track(txtid=p.stem, videoid=p.stem, split="Test_Set", video_path=p, labels_path=None, side=None)
              for p in clips]
    total_frames = sum(probe(p).n_frames for p in clips)
    common = dict(detector=detector, crop_scales=scales, image_size=image_size, mean=mean, std=std,
                  batch_size=batch_size, max_gap=15, device=device, dtype=dtype, decode_batch=args.decode_batch,
                  manifest={"benchmark": "pipelined_extraction"})
    runs = {}
    for name in (["serial"] if not args.no_serial else []) + ["pipelined"]:
        torch.manual_seed(0)  # the same random weights in both runs, so their features can be compared
        model = build_backbone(arch=arch, img_size=image_size)
        store = FeatureStore(workdir / f"store_{name}", "visual")
        if cuda:
            torch.cuda.empty_cache()
        busy = GpuBusy(model, device)
        times = StageTimes()
        with PeakMemory(device=device) as memory:
            tic = time.perf_counter()
            if name == "serial":
                report = extract_visual_features(tracks, store, model, **common)
            else:
                report = extract_visual_features_pipelined(
                    tracks, store, model, decode_workers=workers, queue_batches=2, compile=args.compile,
                    pin_decoded=args.pin_decoded,
                    stage_times=times, detector_factory=lambda: build_detector(args.detector, **detector_options), **common)
            sync(device)
            wall = time.perf_counter() - tic
        busy_s = busy.seconds()
        busy.close()
        bad = report[~report["status"].isin(["ok", "no face"])]
        runs[name] = dict(wall_s=wall, fps=total_frames / wall, gpu_busy_s=busy_s,
                          gpu_busy_fraction=busy_s / wall if cuda else None,
                          peak_gpu_gib=torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
                          peak_host_anon_gib=memory.gib("RssAnon"), failed=int(len(bad)), store=store,
                          stage_times=vars(times) if name == "pipelined" else None)
        emit(f"end to end, {name}", f"{total_frames / wall:8.1f} frames/s ({total_frames} frames of {len(clips)} clips "
                                    f"in {wall:.1f} s; {memory.summary()}"
                                    + (f"; GPU busy {busy_s:.1f} s = {busy_s / wall:.0%}" if cuda else "") + ")")
        if len(bad):
            emit("", f"FAILED tracks: {bad[['txtid', 'status']].to_dict('records')}")
    piped = runs["pipelined"]
    st = piped["stage_times"]
    emit("pipelined main thread", f"waiting for decode {st['wait_decode']:.1f} s, uploads {st['upload']:.1f} s, "
                                  f"detect+track+crop+backbone launch {st['track_encode']:.1f} s, waiting for the "
                                  f"writer {st['wait_writer']:.1f} s")
    if "serial" in runs:
        ratio = piped["fps"] / runs["serial"]["fps"]
        diffs = []
        for key in runs["serial"]["store"].keys():
            a, b = runs["serial"]["store"].load(key), piped["store"].load(key)
            diffs.append(float(np.abs(a["features"].astype(np.float32) - b["features"].astype(np.float32)).max()))
        figures["pipelined_over_serial"] = ratio
        figures["max_feature_difference"] = max(diffs) if diffs else None
        emit("pipelined / serial", f"x{ratio:.2f} end to end on the same clips, in one run "
                                   f"(largest feature difference {max(diffs) if diffs else float('nan'):.2g})")
    for run in runs.values():
        run.pop("store")
    figures["end_to_end"] = runs

    # ---- the whole release, projected
    counts = release_counts(args.metadata)
    if counts is None:
        emit("projection", f"skipped: no metadata at {args.metadata}")
    else:
        crops = counts["track_frames"] * len(scales)
        proj = {"end_to_end_h": counts["decoded_frames"] / piped["fps"] / 3600,
                "backbone_only_h": crops / crops_rate / 3600,
                "parallel_decode_h": counts["decoded_frames"] / rate / 3600,
                "detect_h": counts["decoded_frames"] / np.mean([s["detect_fps"] for s in figures["sizes"].values()]) / 3600}
        figures["release"] = counts
        figures["projection"] = proj
        emit("projection, whole release", f"{counts['decoded_frames']:,} decoded frames, {crops:,} crops: end to end "
                                          f"(pipelined, at these clips' rate) {proj['end_to_end_h']:.2f} h; bounds: backbone "
                                          f"{proj['backbone_only_h']:.2f} h, decode {proj['parallel_decode_h']:.2f} h, "
                                          f"detection (one thread) {proj['detect_h']:.2f} h")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
