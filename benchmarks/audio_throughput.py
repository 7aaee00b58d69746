"""Audio-branch throughput: seconds of audio encoded per wall-clock second (kitlib.audio.encode).

Random-init wav2vec 2.0 encoders built from configs (no download) in the two real shapes:
``base`` (768 x 12 layers, group-norm conv stack, 95M params) and ``large`` (1024 x 24 layers,
layer-norm conv stack + pre-LN transformer as in large-lv60k, 317M params). Speed does not
depend on the weights, so the figures hold for the real checkpoints.

Side by side, the straightforward baseline: fp32, one forward per VIDEO frame (``--fps``) of the
``--align-window-s`` window centred on it (eq. 8 computed literally, frame by frame), on the first
``--baseline-s`` seconds; and the ratio. Target on one H100: >= 500x real time for ``large`` in bf16.
Each row prints peak host memory and, on CUDA, peak GPU memory.

    .venv/bin/python benchmarks/audio_throughput.py                      # CPU, 60 s of audio
    .venv/bin/python benchmarks/audio_throughput.py --device cuda --audio-s 600   # bf16 on CUDA
    .venv/bin/python benchmarks/audio_throughput.py --device cuda --audio-s 120 --batch-videos 8   # + batched across videos
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kitlib.audio import AudioEncoder, encode  # noqa: E402
from kitlib.audio.encoders import encode_many  # noqa: E402
from kitlib.runtime import pick_device, seed_everything  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GpuBusy, PeakMemory, machine_line  # noqa: E402

SHAPES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build(shape: str, *, device: torch.device, dtype: torch.dtype) -> AudioEncoder:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    model = Wav2Vec2Model(Wav2Vec2Config(**SHAPES[shape]))
    return AudioEncoder.from_model(model, device=device, dtype=dtype, do_normalize=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_frame_rate(model: torch.nn.Module, waveform: np.ndarray, *, seconds: float, fps: float, window_s: float,
                   device: torch.device) -> float:
    """Audio s / wall s of the baseline: fp32, one forward of a ``window_s`` window per video frame."""
    half = int(window_s * 16000 / 2)
    centres = (np.arange(int(seconds * fps)) / fps * 16000).astype(int) + half
    padded = np.pad(waveform, half)
    model = model.float()
    with torch.inference_mode():
        model(torch.from_numpy(padded[None, : 2 * half]).to(device))  # warm-up
        sync(device)
        tic = time.perf_counter()
        for c in centres:
            piece = torch.from_numpy(padded[None, c - half:c + half]).to(device)
            model(piece).last_hidden_state.mean(1)
        sync(device)
    return seconds / (time.perf_counter() - tic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="autocast dtype (default bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--shapes", nargs="+", default=["base", "large"], choices=sorted(SHAPES))
    parser.add_argument("--audio-s", type=float, default=60.0, help="length of the test signal")
    parser.add_argument("--chunk-s", type=float, default=30.0)
    parser.add_argument("--overlap-s", type=float, default=5.0)
    parser.add_argument("--layers", default="last", help="'last' or k (mean of the last k layers)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--baseline-s", type=float, default=None, help="seconds for the per-frame baseline "
                        "(default 2 CPU, 20 CUDA; 0: none)")
    parser.add_argument("--batch-videos", type=int, default=0,
                        help="also encode this many videos of --audio-s together (encode_many: chunks share batches)")
    parser.add_argument("--batch-chunks", type=int, default=8, help="chunks per forward with --batch-videos")
    parser.add_argument("--fps", type=float, default=30.0, help="video frame rate of the per-frame baseline")
    parser.add_argument("--align-window-s", type=float, default=0.5, help="window per frame of the baseline")
    args = parser.parse_args()

    seed_everything(0)
    device = pick_device(args.device)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    baseline_s = args.baseline_s if args.baseline_s is not None else (20.0 if device.type == "cuda" else 2.0)
    print(machine_line(device))
    layers = args.layers if args.layers == "last" else int(args.layers)
    waveform = (0.1 * np.random.default_rng(0).standard_normal(int(args.audio_s * 16000))).astype(np.float32)
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch threads={torch.get_num_threads()}, dtype={args.dtype}, audio={args.audio_s:.0f} s, "
          f"chunk_s={args.chunk_s}, overlap_s={args.overlap_s}, layers={layers}")
    for shape in args.shapes:
        encoder = build(shape, device=device, dtype=DTYPES[args.dtype])
        params = sum(p.numel() for p in encoder.model.parameters()) / 1e6
        encode(waveform[: 16000 * 2], encoder)  # warm-up (kernels, allocator)
        sync(device)
        walls, cpus = [], []
        busy = GpuBusy(encoder.model, device)  # summed CUDA-event time of the encoder forwards
        with PeakMemory(device=device) as peak:
            for _ in range(args.repeats):
                tic, cpu_tic = time.perf_counter(), time.process_time()
                features, _ = encode(waveform, encoder, chunk_s=args.chunk_s, overlap_s=args.overlap_s, layers=layers)
                sync(device)
                walls.append(time.perf_counter() - tic)
                cpus.append(time.process_time() - cpu_tic)
        wall, cpu = min(walls), min(cpus)
        busy_s = busy.seconds() / args.repeats
        busy.close()
        gpu_busy = f", GPU busy {busy_s / wall:.0%} of wall" if device.type == "cuda" else ""
        print(f"{shape:5s} ({params:.0f}M params): {args.audio_s / wall:8.1f} audio s / wall s = x real time "
              f"({wall:.2f} s wall, {cpu:.2f} s process CPU for {args.audio_s:.0f} s; "
              f"{len(features)} frames x {features.shape[1]}{gpu_busy}); {peak.summary()}", flush=True)
        if args.batch_videos > 1:  # several videos at once: their chunks share the encoder's batches
            waves = [np.roll(waveform, 1000 * k)[: len(waveform) - 1600 * k] for k in range(args.batch_videos)]
            busy = GpuBusy(encoder.model, device)
            with PeakMemory(device=device) as batch_peak:
                tic = time.perf_counter()
                encode_many(waves, encoder, chunk_s=args.chunk_s, overlap_s=args.overlap_s, layers=layers,
                            batch_chunks=args.batch_chunks)
                sync(device)
                batch_wall = time.perf_counter() - tic
            total_s = sum(len(w) for w in waves) / 16000
            batch_busy = f", GPU busy {busy.seconds() / batch_wall:.0%} of wall" if device.type == "cuda" else ""
            busy.close()
            print(f"      {args.batch_videos} videos batched ({args.batch_chunks} chunks per forward): "
                  f"{total_s / batch_wall:8.1f} audio s / wall s = x real time ({batch_wall:.2f} s for {total_s:.0f} s; "
                  f"x{total_s / batch_wall / (args.audio_s / wall):.2f} over one video at a time{batch_busy}); "
                  f"{batch_peak.summary()}", flush=True)
        if baseline_s:
            with PeakMemory(device=device) as base_peak:
                base = per_frame_rate(encoder.model, waveform, seconds=baseline_s, fps=args.fps,
                                      window_s=args.align_window_s, device=device)
            print(f"      baseline: {base:8.4f} audio s / wall s (fp32, one {args.align_window_s} s forward per "
                  f"frame at {args.fps:.0f} fps, {baseline_s:.0f} s of audio); kit x{args.audio_s / wall / base:.1f}; "
                  f"{base_peak.summary()}", flush=True)
        del encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


if __name__ == "__main__":
    main()
