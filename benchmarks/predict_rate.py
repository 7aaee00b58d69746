"""``abaw-kit predict``'s speed: frames per second of ``Predictor.predict`` (decode, detect, track, crops,
backbone, audio encoder and alignment, head, smoothing: everything but writing the CSV) on a demo video at
the demo's resolution (256x192) and at 1280x720, both made by the kit's demo generator (the same faces and
sounds, drawn at each size).

    .venv/bin/python benchmarks/predict_rate.py --run outputs/demo               # exports the run to a scratch bundle
    .venv/bin/python benchmarks/predict_rate.py --bundle bundles/demo --device cuda --seconds 20

Each size: one untimed call first (lazy initialisation, file caches), then ``--repeats`` timed calls; the
best is printed with the bundle's settings (detector, detect_every, backbone, image size) and peak memory.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PeakMemory, machine_line  # noqa: E402

SIZES = ((256, 192), (1280, 720))


def clip(folder: Path, size: tuple[int, int], seconds: float) -> Path:
    """One demo test video of ``seconds`` at ``size`` (with sound)."""
    from kitlib.data import demo

    root = folder / f"{size[0]}x{size[1]}"
    demo.generate_demo(root, seed=0, n_train=0, n_val=0, n_test=1, seconds=(seconds, seconds), size=size,
                       sample_rate=16000, images_per_class=1)
    return sorted((root / "videos").rglob("*.mp4"))[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path, help="a bundle folder (abaw-kit export)")
    source.add_argument("--run", type=Path, help="a finished run folder, exported to a scratch bundle first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each generated clip")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from kitlib.inference import Predictor
    from kitlib.tools import export

    print(machine_line(args.device))
    with tempfile.TemporaryDirectory(prefix="predict-rate-") as scratch:
        scratch = Path(scratch)
        bundle = args.bundle or export.export(args.run, scratch / "bundle")
        tic = time.perf_counter()
        predictor = Predictor.from_bundle(bundle, device=args.device)
        m = predictor.bundle.manifest
        print(f"bundle {bundle}: {m['visual']['arch']} @ {m['visual']['image_size']} px, "
              f"{len(m['visual']['crop_scales'])} crop scales, detector {m['faces']['detector']['name']} "
              f"(detect_every {m['faces']['detect_every']}, max side {m['faces']['detector']['max_side']}), "
              f"head {m['head']['name']}, {m['smoothing']['strategy']} {m['smoothing']['window']}; "
              f"loaded in {time.perf_counter() - tic:.1f} s on {predictor.device}, "
              f"{torch.get_num_threads()} torch threads")
        for size in SIZES:
            video = clip(scratch, size, args.seconds)
            predictor.predict(video)                                   # untimed: first-call costs
            best = float("inf")
            with PeakMemory(device=args.device if predictor.device.type == "cuda" else None) as peak:
                for _ in range(args.repeats):
                    tic = time.perf_counter()
                    frames = predictor.predict(video)
                    best = min(best, time.perf_counter() - tic)
            print(f"{size[0]}x{size[1]}: {len(frames)} frames in {best:.2f} s = {len(frames) / best:.1f} frames/s "
                  f"(best of {args.repeats}; face on {frames['face_found'].mean():.0%} of frames); {peak.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
