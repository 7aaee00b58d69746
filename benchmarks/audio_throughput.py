"""Audio-branch throughput: seconds of audio encoded per wall-clock second (kitlib.audio.encode).

Random-init wav2vec 2.0 encoders built from configs (no download) in the two real shapes:
``base`` (768 x 12 layers, group-norm conv stack, 95M params) and ``large`` (1024 x 24 layers,
layer-norm conv stack + pre-LN transformer as in large-lv60k, 317M params). Speed does not
depend on the weights, so the figures hold for the real checkpoints.

    .venv/bin/python benchmarks/audio_throughput.py                      # CPU, 60 s of audio
    .venv/bin/python benchmarks/audio_throughput.py --device cuda --dtype bfloat16
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
from kitlib.runtime import pick_device, seed_everything  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="autocast dtype (fp16: CUDA only)")
    parser.add_argument("--shapes", nargs="+", default=["base", "large"], choices=sorted(SHAPES))
    parser.add_argument("--audio-s", type=float, default=60.0, help="length of the test signal")
    parser.add_argument("--chunk-s", type=float, default=30.0)
    parser.add_argument("--overlap-s", type=float, default=5.0)
    parser.add_argument("--layers", default="last", help="'last' or k (mean of the last k layers)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    seed_everything(0)
    device = pick_device(args.device)
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
        for _ in range(args.repeats):
            tic, cpu_tic = time.perf_counter(), time.process_time()
            features, _ = encode(waveform, encoder, chunk_s=args.chunk_s, overlap_s=args.overlap_s, layers=layers)
            sync(device)
            walls.append(time.perf_counter() - tic)
            cpus.append(time.process_time() - cpu_tic)
        wall, cpu = min(walls), min(cpus)
        peak = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" \
            if device.type == "cuda" else ""
        print(f"{shape:5s} ({params:.0f}M params): {args.audio_s / wall:8.1f} audio s / wall s "
              f"({wall:.2f} s wall, {cpu:.2f} s process CPU for {args.audio_s:.0f} s; "
              f"{len(features)} frames x {features.shape[1]}){peak}")
        del encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


if __name__ == "__main__":
    main()
