"""How the chain's cost grows with the release: 1x, 4x and 16x a base size, per stage (issue 23, part 3).

The whole chain (tiny models: params/demo.yaml + params/tiny.yaml) on generated releases of ``--factors``
times a base size, growing tracks and frames together (factor k: sqrt(k) x the videos, each sqrt(k) x
as long; the base is ``--base-videos`` videos of ``--base-seconds`` s). Each stage runs as its own
``python -m kitlib.run ... --stages NN`` process; a sampler adds up the anonymous memory (``RssAnon``)
of that process tree every 0.2 s. Recorded per size and stage: seconds (the stage marker's), seconds
per annotated frame, peak RSS; then the ratios 16x / 1x: seconds per frame should stay flat (a stage
whose cost per frame grows more than 1.3x is superlinear) and peak memory should not grow with the
number of tracks except where the data must be held. Stage fusion epochs run to the end (patience =
epochs), so the work per frame is fixed; Stage I (02) trains on the image set, whose size does not
grow with the release (its per-frame cost falls).

``--real`` also measures, at the release's real resolution on the CPU: decode frames/s of a 1080p
H.264 clip with decord and with PyAV, CenterFace frames/s at ``faces.detect_max_side`` (640), and the
serial against the pipelined extractor on the same clips in one run (``pipelined_extraction.py``'s clips
and code, ViT-S/14 at 56 px so the backbone does not hide the rest).

Writes ``benchmarks/results/scaling_cpu.json`` and ``docs/images/scaling_cpu.png`` (log-log).

    .venv/bin/python benchmarks/scaling.py            # 1x, 4x, 16x: ~15 min on 2 shared cores
    .venv/bin/python benchmarks/scaling.py --real     # + the 1080p figures (~3 min more)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine_line  # noqa: E402
from kitlib import config, run  # noqa: E402

STAGES = run.STAGES


def tree_rss_anon_kib(pid: int) -> int:
    """Anonymous resident memory of ``pid`` and all its descendants (KiB), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(re.search(r"^PPid:\s+(\d+)", (entry / "status").read_text(), re.M).group(1))
            except (OSError, AttributeError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            match = re.search(r"^RssAnon:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(), re.M)
        except OSError:
            continue
        total += int(match.group(1)) if match else 0
        todo += children.get(p, [])
    return total


def run_with_peak(cmd: list[str], *, env: dict[str, str], interval_s: float = 0.2) -> tuple[int, float, float]:
    """Run ``cmd``; return (exit code, wall seconds, peak anonymous RSS of its process tree in GiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_anon_kib(proc.pid))
            time.sleep(interval_s)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        print(err[-3000:], file=sys.stderr)
    return proc.returncode, time.perf_counter() - start, peak[0] / 2**20


def size_items(factor: int, *, base_videos: int, base_seconds: float, work: Path) -> list[str]:
    """The params of one release size: sqrt(factor) x the videos, each sqrt(factor) x as long."""
    grow = math.sqrt(factor)
    videos = max(6, int(round(base_videos * grow)))   # 5 train + validation videos fill the 5 folds
    n_val, n_test = max(1, videos // 4), max(1, videos // 4)
    seconds = base_seconds * grow
    return ["params/demo.yaml", "params/tiny.yaml", f"run.name=scaling-{factor}x",
            f"run.outputs_root={work / 'outputs'}", f"data.root={work / f'data-{factor}x'}",
            f"audio.encoder={work / 'models' / 'wav2vec2-tiny'}", f"fusion.text_encoder={work / 'models' / 'text-tiny'}",
            f"demo.n_train={videos - n_val - n_test}", f"demo.n_val={n_val}", f"demo.n_test={n_test}",
            f"demo.seconds=[{seconds}, {seconds}]", "fusion.patience=3", "fusion.sequence.patience=2"]


def measure_size(factor: int, args: argparse.Namespace, work: Path) -> dict:
    from kitlib.data.demo.generate import _read_manifest
    from kitlib.stages import common

    items = size_items(factor, base_videos=args.base_videos, base_seconds=args.base_seconds, work=work)
    cfg = config.load(*items[:2], overrides=items[2:])
    started = time.perf_counter()
    common.ensure_demo(cfg)
    generate_s = time.perf_counter() - started
    stats = _read_manifest(cfg.path(cfg.data.root))["statistics"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = {"factor": factor, "videos": cfg.demo.n_train + cfg.demo.n_val + cfg.demo.n_test,
           "seconds_per_video": cfg.demo.seconds[0], "video_frames": stats["video_frames"],
           "track_frames": stats["track_frames"], "generate_s": round(generate_s, 1), "stages": {}}
    out["tracks"] = out["videos"] + 1   # one two-person video
    for stage in STAGES:
        code, wall, peak = run_with_peak([sys.executable, "-m", "kitlib.run", *items, "--stages", stage[:2],
                                          "--no-preflight"], env=env)
        if code:
            raise SystemExit(f"{factor}x: stage {stage} failed (exit {code})")
        marker = json.loads((cfg.run_dir / "stages" / f"{stage}.json").read_text())
        seconds = float(marker["seconds"])
        out["stages"][stage] = {"seconds": round(seconds, 2), "wall_s": round(wall, 1),
                                "ms_per_frame": round(1000 * seconds / out["track_frames"], 3),
                                "peak_rss_anon_gib": round(peak, 3)}
        print(f"  {factor:>2}x {stage:<20} {seconds:7.1f} s  {1000 * seconds / out['track_frames']:7.2f} ms/frame  "
              f"peak RSS {peak:5.2f} GiB", flush=True)
    return out


def growth(sizes: list[dict]) -> dict:
    """Per stage, largest size against smallest: ms per frame (overall, which a fixed start-up cost makes
    fall) and marginal ms per frame (the slope between the two largest sizes against the slope between
    the two smallest: what each added frame costs, free of the start-up), and peak RSS. A stage is
    superlinear when its marginal cost per frame grows more than 1.3x."""
    small, large = sizes[0], sizes[-1]
    out = {}
    for stage in STAGES:
        a, b = small["stages"][stage], large["stages"][stage]
        row = {"ms_per_frame_ratio": round(b["ms_per_frame"] / max(a["ms_per_frame"], 1e-9), 2),
               "peak_rss_ratio": round(b["peak_rss_anon_gib"] / max(a["peak_rss_anon_gib"], 1e-9), 2)}
        if len(sizes) >= 3:
            def slope(p: dict, q: dict) -> float:
                return 1000 * (q["stages"][stage]["seconds"] - p["stages"][stage]["seconds"]) / (
                    q["track_frames"] - p["track_frames"])
            first, last = slope(sizes[0], sizes[1]), slope(sizes[-2], sizes[-1])
            row.update(marginal_ms_per_frame_first=round(first, 3), marginal_ms_per_frame_last=round(last, 3),
                       marginal_ratio=round(last / first, 2) if first > 0.05 else None)
            row["superlinear"] = bool(first > 0.05 and last / first > 1.3)
        else:
            row["superlinear"] = row["ms_per_frame_ratio"] > 1.3
        out[stage] = row
    return out


def plot(sizes: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [s["track_frames"] for s in sizes]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    for stage in STAGES:
        ax_t.plot(frames, [s["stages"][stage]["seconds"] for s in sizes], "o-", label=stage)
        ax_m.plot(frames, [s["stages"][stage]["peak_rss_anon_gib"] for s in sizes], "o-", label=stage)
    ideal = [sizes[0]["stages"]["03_crop_extract"]["seconds"] * f / frames[0] for f in frames]
    ax_t.plot(frames, ideal, "k:", label="linear (from 03 at 1x)")
    for ax, title, unit in ((ax_t, "stage seconds", "s"), (ax_m, "peak anonymous RSS of the stage's processes", "GiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("annotated frames (1x, 4x, 16x)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.suptitle("The chain on generated releases (tiny models, 2 CPU cores)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


# ----------------------------------------------------------------------------- real resolution

def real_resolution(args: argparse.Namespace, work: Path) -> dict:
    """decode (decord, PyAV) and CenterFace frames/s on a 1080p clip; serial vs pipelined extraction."""
    import numpy as np
    import torch

    from kitlib.faces import build_detector
    from kitlib.faces.video import iter_frames
    from pipelined_extraction import write_clip

    clip = write_clip(work / "clip_1080p.mp4", width=1920, height=1080, n_frames=args.real_frames, seed=0)
    out: dict = {"clip": "1920x1080 H.264, 30 fps", "frames": args.real_frames}
    for name in ("decord", "pyav"):
        os.environ["KITLIB_VIDEO_BACKEND"] = name
        try:
            start, n = time.perf_counter(), 0
            for batch in iter_frames(clip, batch_size=32):
                n += len(batch.frames)
            out[f"decode_{name}_fps"] = round(n / (time.perf_counter() - start), 1)
        except ImportError as err:
            out[f"decode_{name}_fps"] = f"not installed ({err})"
        finally:
            os.environ.pop("KITLIB_VIDEO_BACKEND", None)
    frames = np.stack([b for batch in iter_frames(clip, batch_size=32) for b in batch.frames][:32])
    detector = build_detector("centerface", max_side=640)
    detector.detect(frames[:2])
    start = time.perf_counter()
    for first in range(0, len(frames), 8):
        detector.detect(frames[first:first + 8])
    out["centerface_fps_at_640"] = round(len(frames) / (time.perf_counter() - start), 1)
    print(f"  decode 1080p: decord {out['decode_decord_fps']} frames/s, PyAV {out['decode_pyav_fps']} frames/s; "
          f"CenterFace at 640 px {out['centerface_fps_at_640']} frames/s", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    report = work / "pipelined.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pipelined_extraction.py"), "--sizes", "1080p", "--clips", "2",
           "--seconds", str(args.real_frames / 30), "--detector", "centerface", "--json", str(report)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        out["pipelined_vs_serial"] = f"failed: {done.stderr[-500:]}"
    else:
        figures = json.loads(report.read_text())
        keep = {k: figures.get(k) for k in ("sizes", "pipelined_over_serial", "max_feature_difference", "end_to_end")}
        out["pipelined_vs_serial"] = keep
        print(f"  pipelined vs serial (1080p, same clips): {json.dumps(keep)[:400]}", flush=True)
    del torch
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--base-videos", type=int, default=6, help="videos at 1x (one has two people)")
    parser.add_argument("--base-seconds", type=float, default=2.0, help="seconds per video at 1x")
    parser.add_argument("--real", action="store_true", help="also the 1080p decode / CenterFace / pipelined figures")
    parser.add_argument("--real-frames", type=int, default=45, help="frames of each 1080p clip")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "scaling_cpu.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "images" / "scaling_cpu.png")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--replot", action="store_true", help="recompute the growth and the plot from --json")
    args = parser.parse_args()
    if args.replot:
        result = json.loads(args.json.read_text())
        result["growth"] = growth(result["sizes"])
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["growth"], indent=1))
        plot(result["sizes"], args.plot)
        return

    print(machine_line("cpu"), flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kit-scaling-") as tmp:
        work = args.work or Path(tmp)
        sizes = []
        for factor in args.factors:
            print(f"{factor}x:", flush=True)
            sizes.append(measure_size(factor, args, work))
        result = {"machine": machine_line("cpu"), "base": {"videos": args.base_videos, "seconds": args.base_seconds},
                  "sizes": sizes, "growth": growth(sizes) if len(sizes) > 1 else {}}
        if args.real:
            print("real resolution:", flush=True)
            result["real_resolution"] = real_resolution(args, work)
    result["total_s"] = round(time.perf_counter() - started, 1)
    for stage, g in result["growth"].items():
        print(f"  {stage:<20} ms/frame x{g['ms_per_frame_ratio']:<5} marginal x{g.get('marginal_ratio')!s:<5} "
              f"peak RSS x{g['peak_rss_ratio']:<5}" + ("  SUPERLINEAR" if g["superlinear"] else ""))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.json} (in {result['total_s']:.0f} s)")
    if len(sizes) > 1:
        plot(sizes, args.plot)


if __name__ == "__main__":
    main()
