"""``abaw-kit predict <bundle> <video | folder | glob>... --out <dir>``: per-frame expressions of any video.

    python -m kitlib.tools.predict bundles/demo clips/ "more/*.mp4" --out predictions/ --overlay

Per video ``<out>/<name>.csv`` (one row per frame: frame, time_s, face_found, the box x1 y1 x2 y2, label,
label_id, source, then one probability per class), with ``--overlay`` ``<out>/<name>_overlay.mp4`` (+ its
first frame as PNG, the kit's overlay), and one summary line. Files appear under their final names only
when complete. A video that does not decode is reported and the others go on (exit 1 at the end); a bad
bundle or an argument that is not a video stops before anything is written (exit 2).
"""
from __future__ import annotations

import argparse
import glob
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kitlib.inference.bundle import BundleError

EXIT_BAD_INPUT, EXIT_VIDEO_FAILED = 2, 1


def expand_inputs(items: list[str]) -> list[Path]:
    """Videos named directly, inside folders (recursively), or by glob patterns; in order, each once.

    Raises ``ValueError`` naming the first item that is no video (missing, wrong suffix, empty folder or glob).
    """
    from kitlib.inference.predictor import VIDEO_SUFFIXES

    def videos_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)

    found: list[Path] = []
    for item in items:
        path = Path(item)
        if any(ch in item for ch in "*?[") and not path.exists():
            matches = [Path(p) for p in sorted(glob.glob(item, recursive=True))]
            videos = [p for p in matches if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
            if not videos:
                raise ValueError(f"{item}: no video matches this pattern")
            found += videos
        elif path.is_dir():
            videos = videos_in(path)
            if not videos:
                raise ValueError(f"{path}: no video in this folder (looked for {', '.join(VIDEO_SUFFIXES)})")
            found += videos
        elif not path.is_file():
            raise ValueError(f"{path}: no such file")
        elif path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{path}: not a video (suffix {path.suffix or 'none'}; expected one of "
                             f"{', '.join(VIDEO_SUFFIXES)})")
        else:
            found.append(path)
    return list(dict.fromkeys(p.resolve() for p in found))


def _outputs(out: Path, video: Path, names: dict[str, int]) -> str:
    """The output stem of ``video``: its name, numbered when two inputs share it."""
    stem = video.stem
    names[stem] = names.get(stem, 0) + 1
    return stem if names[stem] == 1 else f"{stem}_{names[stem]}"


def main(argv: list[str] | None = None) -> int:
    from kitlib.faces.selection import STRATEGIES

    parser = argparse.ArgumentParser(prog="abaw-kit predict", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path, help="a bundle folder written by abaw-kit export")
    parser.add_argument("videos", nargs="+", help="video files, folders of videos, or glob patterns")
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSVs (and overlays)")
    parser.add_argument("--face", default="largest", choices=STRATEGIES, help="which face is the person")
    parser.add_argument("--overlay", action="store_true", help="also write <name>_overlay.mp4 (+ .png)")
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one) | cpu | cuda | cuda:N")
    parser.add_argument("-v", "--verbose", action="store_true", help="the kit's log lines too")
    args = parser.parse_args(argv)

    from kitlib import runtime
    from kitlib.faces.video import VideoError
    from kitlib.inference import Predictor
    from kitlib.inference.predictor import write_overlay
    from kitlib.progress import tqdm
    from kitlib.store import atomic_path

    runtime.setup_logging(logging.INFO if args.verbose else logging.WARNING)
    try:
        videos = expand_inputs(args.videos)
        predictor = Predictor.from_bundle(args.bundle, device=args.device)
    except (ValueError, BundleError, FileNotFoundError, RuntimeError) as err:
        print(f"predict: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"predict: {len(videos)} video(s) with {args.bundle} ({predictor.bundle.manifest['head']['name']} head) "
          f"on {predictor.device}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    failed, names = [], {}
    for video in tqdm(videos, desc="videos", unit="video", disable=len(videos) < 2):
        stem = _outputs(args.out, video, names)
        started = time.perf_counter()
        try:
            result = predictor.predict_video(video, face=args.face)
        except VideoError as err:
            failed.append(video)
            print(f"{video.name}: not predicted: {err.reason}", file=sys.stderr)
            continue
        with atomic_path(args.out / f"{stem}.csv") as tmp:
            result.frames.to_csv(tmp, index=False)
        if args.overlay:
            with tempfile.TemporaryDirectory(dir=args.out, prefix=".overlay-") as scratch:
                made = write_overlay(video, result.frames, Path(scratch) / f"{stem}_overlay.mp4",
                                     classes=predictor.classes)
                for path in (made.with_suffix(".png"), made):   # the video last: it says the overlay is complete
                    shutil.move(str(path), args.out / path.name)
        rate = len(result.frames) / max(time.perf_counter() - started, 1e-9)
        print(f"{result.summary(predictor.classes)} ({rate:.1f} frames/s) -> {args.out / (stem + '.csv')}")
    if failed:
        print(f"predict: {len(failed)} of {len(videos)} video(s) not predicted: "
              f"{', '.join(v.name for v in failed)}", file=sys.stderr)
        return EXIT_VIDEO_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
