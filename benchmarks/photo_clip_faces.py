"""Face detectors and the joint left/right tracks on a clip of real photographed faces (``kitlib.faces.photo_clip``).

Per backend, at the detection size ``--max-side`` (the clip is 640x360, so 640 = full size) on the CPU
(``--device cuda`` where there is one): recall at IoU >= ``--iou`` on person-frames whose face is
wholly inside the frame ("visible"), on those where it crosses the border ("border"; and of those,
the ones with at least half of the face box inside, "border_half_in"), the mean
IoU of those matches, false boxes on the frames with nobody ("empty") and elsewhere (boxes that
match no face), frames/s in batches of ``--batch``, and the box-size ratio to the true boxes
(WIDER FACE convention: the mean of detected / true box height, and of the long sides, on matched
visible faces: the calibration ``box_scale`` of a backend is 1 / that ratio of long sides, since a
crop's side is ``scale x long side``).

For backends that give landmarks (CenterFace, SCRFD with 9 outputs): the share of detections whose 5
landmarks pass ``kitlib.faces.landmarks.landmark_checks`` (all points inside the box grown by 10 %,
both eyes above both mouth corners, image-left eye and mouth corner left of the right ones) and the
mean inter-ocular distance over the box width, over all detections and over those matching a
visible / a border-crossing face.

Then the identity of the ``_left`` / ``_right`` tracks on the clip's two-person part ("two": Collins
left, Hopper right; "left_exit": Collins alone, leaving through the left border; "cross": Hopper alone,
from just right of the centre into the left half): per track, frames
holding Collins, Hopper or nobody, for the joint assignment (``kitlib.faces.assign``) and for the
former separate per-side trackers.

    .venv/bin/python benchmarks/photo_clip_faces.py
    .venv/bin/python benchmarks/photo_clip_faces.py --scrfd models/buffalo_l/det_10g.onnx --device cuda
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_line  # noqa: E402
from kitlib.faces import FaceDetector, FaceTracker, build_detector, landmarks_of  # noqa: E402
from kitlib.faces.assign import track_video  # noqa: E402
from kitlib.faces.landmarks import interocular_ratio, landmark_checks  # noqa: E402
from kitlib.faces.photo_clip import PEOPLE, photo_clip  # noqa: E402


def _iou(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(k, p) IoU of detected boxes with true boxes (NaN truth rows give 0)."""
    if len(found) == 0 or len(truth) == 0:
        return np.zeros((len(found), len(truth)))
    a, b = found[:, None, :4], truth[None, :, :4]
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
             * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None))
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return np.nan_to_num(inter / (area(a) + area(b) - inter), nan=0.0)


def _inside_share(clip) -> np.ndarray:
    """(N, 2) share of each true box's area inside the frame (0 where absent)."""
    height, width = clip.frames.shape[1:3]
    b = np.nan_to_num(clip.boxes, nan=0.0)
    inter = (np.clip(np.minimum(b[..., 2], width) - np.maximum(b[..., 0], 0), 0, None)
             * np.clip(np.minimum(b[..., 3], height) - np.maximum(b[..., 1], 0), 0, None))
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return np.divide(inter, area, out=np.zeros_like(area), where=area > 0)


def score_detector(detector: FaceDetector, clip, *, iou_hit: float, batch: int) -> tuple[dict, list[np.ndarray]]:
    """One detector's row (recall visible / border / border half in, mean IoU, false boxes, box-size ratios,
    frames/s in batches of ``batch``) on ``clip``, and its (k, 15) detections per frame. Any object with the
    kit's ``detect`` convention will do (``benchmarks/detector_compare.py`` passes adapters of other packages)."""
    detector.detect(clip.frames[:2])   # warm-up (session, allocator)
    started = time.perf_counter()
    found = [f for i in range(0, len(clip.frames), batch) for f in detector.detect(clip.frames[i:i + batch])]
    rate = len(clip.frames) / (time.perf_counter() - started)
    visible = clip.visible()
    hits = {"visible": [], "border": [], "border_half": []}
    inside = _inside_share(clip)
    ious, height_ratio, side_ratio = [], [], []
    false_empty = false_other = 0
    for i, boxes in enumerate(found):
        iou = _iou(boxes, clip.boxes[i])
        matched = np.zeros(len(boxes), bool)
        for p in range(len(PEOPLE)):
            if not np.isfinite(clip.boxes[i, p]).all():
                continue
            best = int(np.argmax(iou[:, p])) if len(boxes) else -1
            hit = best >= 0 and iou[best, p] >= iou_hit
            kind = "visible" if visible[i, p] else "border"
            hits[kind].append(hit)
            if kind == "border" and inside[i, p] >= 0.5:
                hits["border_half"].append(hit)
            if hit:
                matched[best] = True
                ious.append(iou[best, p])
                if kind == "visible":
                    t, d = clip.boxes[i, p], boxes[best]
                    height_ratio.append((d[3] - d[1]) / (t[3] - t[1]))
                    side_ratio.append(max(d[2] - d[0], d[3] - d[1]) / max(t[2] - t[0], t[3] - t[1]))
        if clip.segment[i] == "empty":
            false_empty += len(boxes)
        else:
            false_other += int((~matched).sum())
    n_empty = int((clip.segment == "empty").sum())
    return {"recall_visible": np.mean(hits["visible"]),
            "n_visible": len(hits["visible"]), "recall_border": np.mean(hits["border"]), "n_border": len(hits["border"]),
            "recall_border_half_in": np.mean(hits["border_half"]), "n_border_half_in": len(hits["border_half"]),
            "mean_iou": float(np.mean(ious)) if ious else float("nan"),
            "false_boxes_empty": f"{false_empty} on {n_empty}", "false_boxes_other": false_other,
            "height_ratio": float(np.mean(height_ratio)) if height_ratio else float("nan"),
            "long_side_ratio": float(np.mean(side_ratio)) if side_ratio else float("nan"),
            "frames_per_s": rate}, found


def landmark_table(name: str, clip, found: list[np.ndarray], *, iou_hit: float) -> list[dict]:
    """Per subset of ``name``'s detections (all, matching a visible face, matching a border face): how many,
    the share passing each landmark check, and the mean inter-ocular distance / box width."""
    visible = clip.visible()
    kind = []   # per detection: "visible", "border" or "other" (no true face at IoU >= iou_hit)
    for i, boxes in enumerate(found):
        iou = _iou(boxes, clip.boxes[i])
        for k in range(len(boxes)):
            p = int(np.argmax(iou[k])) if iou.shape[1] else -1
            kind.append(("visible" if visible[i, p] else "border") if p >= 0 and iou[k, p] >= iou_hit else "other")
    every, kind = np.concatenate(found), np.array(kind)
    checks, ratio = landmark_checks(every), interocular_ratio(every)
    rows = []
    for subset, rows_in in (("all", np.ones(len(every), bool)), ("visible", kind == "visible"),
                            ("border", kind == "border")):
        rows.append({"backend": name, "detections": subset, "n": int(rows_in.sum()),
                     **{check: float(v[rows_in].mean()) for check, v in checks.items()},
                     "interocular_over_width": float(ratio[rows_in].mean())})
    return rows


def identity_table(clip, found: list[np.ndarray], *, iou_hit: float) -> pd.DataFrame:
    """Frames of the two-person part where each of the _left / _right tracks holds Collins, Hopper or nobody."""
    part = np.isin(clip.segment, ["two", "left_exit", "cross"])
    idx = np.flatnonzero(part)
    detections = [found[i] for i in idx]
    frames = clip.frames[idx]
    size = (clip.frames.shape[2], clip.frames.shape[1])
    joint, stats = track_video(detections, frame_size=size, strategies=["left", "right"], max_gap=0, frames=frames)
    separate = [FaceTracker(frame_size=size, side=s).update(detections)[0] for s in ("left", "right")]
    rows = []
    for method, boxes in (("joint", [t.boxes for t in joint]), ("separate (before)", separate)):
        for side, track in zip(("_left", "_right"), boxes):
            for segment in ("two", "left_exit", "cross"):
                rows_in = clip.segment[idx] == segment
                held = {p: 0 for p in PEOPLE} | {"nobody": 0}
                for box, truth in zip(track[rows_in], clip.boxes[idx][rows_in]):
                    if not np.isfinite(box).all():
                        held["nobody"] += 1
                        continue
                    iou = _iou(box[None], truth)[0]
                    held[PEOPLE[int(np.argmax(iou))] if iou.max() >= iou_hit else "nobody"] += 1
                rows.append({"method": method, "track": side, "segment": segment, **held})
    table = pd.DataFrame(rows)
    print(f"joint tracks: identity switches {[s['identity_switches'] for s in stats]}, "
          f"overlap frames {[s['overlap'] for s in stats]}")
    return table


def clip_arguments(description: str) -> argparse.ArgumentParser:
    """The options every photo-clip benchmark takes: hit IoU, detection size, batch, device."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    return parser


def main() -> None:
    parser = clip_arguments(__doc__.splitlines()[0])
    parser.add_argument("--scrfd", type=Path, default=None, help="an InsightFace det_10g.onnx / det_500m.onnx")
    parser.add_argument("--face-alignment-dir", type=Path, default=None, help="face_alignment weights folder")
    args = parser.parse_args()
    print(machine_line(args.device))
    clip = photo_clip()
    print(f"clip: {len(clip.frames)} frames {clip.frames.shape[2]}x{clip.frames.shape[1]}, person-frames visible "
          f"{int(clip.visible().sum())}, border {int(clip.border().sum())}, empty frames "
          f"{int((clip.segment == 'empty').sum())}")
    backends: list[tuple[str, dict]] = [
        ("centerface", {"max_side": args.max_side, "device": args.device}),
        ("opencv-haar", {"max_side": args.max_side}),
        ("opencv-haar", {"max_side": args.max_side, "min_neighbors": 3}),
    ]
    if args.scrfd is not None:
        backends.append(("scrfd", {"weights": args.scrfd, "max_side": args.max_side, "device": args.device}))
    backends.append(("face-alignment", {"max_side": args.max_side, "device": args.device,
                                        "weights_dir": args.face_alignment_dir}))
    rows, found_by = [], {}
    for name, options in backends:
        try:
            row, found = score_detector(build_detector(name, **options), clip, iou_hit=args.iou, batch=args.batch)
        except (FileNotFoundError, ImportError) as exc:
            print(f"{name}: skipped ({exc})")
            continue
        rows.append({"backend": name, "options": options} | row)
        found_by.setdefault(name, found)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.precision", 3):
        print(pd.DataFrame(rows).drop(columns=["options"]).assign(options=[str(r["options"]) for r in rows])
              .to_string(index=False))
        marks = [row for name, found in found_by.items() if np.isfinite(landmarks_of(np.concatenate(found))).any()
                 for row in landmark_table(name, clip, found, iou_hit=args.iou)]
        if marks:
            print("\n5-point landmarks: share of detections passing each check (10 % box margin), "
                  "mean inter-ocular distance / box width:")
            print(pd.DataFrame(marks).to_string(index=False))
        for name, found in found_by.items():
            print(f"\nidentity of the _left / _right tracks, detector {name}:")
            print(identity_table(clip, found, iou_hit=args.iou).to_string(index=False))


if __name__ == "__main__":
    main()
