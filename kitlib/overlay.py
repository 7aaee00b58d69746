"""A short MP4 of one track for people: the video with its face box, the predicted and the true label,
the class probabilities of the current frame, and the whole track's truth and prediction as strips
with a cursor. Drawn with OpenCV, encoded with PyAV (H.264), so it plays in browsers and notebooks.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from kitlib import CLASSES
from kitlib.faces.video import iter_frames, probe

WIDTH = 480            # output width in pixels (the frame is scaled to it)
BAR_ROW = 16           # pixels per class in the probability panel
STRIP = 14             # pixels per timeline strip (truth, prediction)


def _palette() -> list[tuple[int, int, int]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [tuple(int(255 * c) for c in cmap(i)[:3]) for i in range(len(CLASSES))]


def _strip(labels: np.ndarray, width: int, colours: list[tuple[int, int, int]]) -> np.ndarray:
    """A (STRIP, width, 3) image of a label sequence (-1 = grey), resampled to ``width`` columns."""
    cols = labels[np.linspace(0, len(labels) - 1, width).round().astype(int)] if len(labels) else np.full(width, -1)
    lut = np.array([*colours, (200, 200, 200)], dtype=np.uint8)
    return np.repeat(lut[np.where(cols < 0, len(colours), cols)][None], STRIP, axis=0)


def render_frame(frame: np.ndarray, *, boxes: np.ndarray, probs: np.ndarray | None, pred: int | None, truth: int | None,
                 position: float, strips: np.ndarray, colours: list[tuple[int, int, int]]) -> np.ndarray:
    """One output image (RGB): the frame with its boxes and labels over the probability panel and the strips
    (``truth`` None: a video without labels, no "true" line)."""
    scale = WIDTH / frame.shape[1]
    height = int(round(frame.shape[0] * scale / 2)) * 2
    top = cv2.resize(frame, (WIDTH, height), interpolation=cv2.INTER_AREA)
    for x1, y1, x2, y2 in boxes:
        cv2.rectangle(top, (int(x1 * scale), int(y1 * scale)), (int(x2 * scale), int(y2 * scale)), (0, 255, 0), 2)
    font = cv2.FONT_HERSHEY_SIMPLEX
    said = "no prediction" if pred is None else f"predicted: {CLASSES[pred]} ({probs[pred]:.2f})"
    lines = [(20, said, (255, 255, 255))]
    if truth is not None:
        ok = pred is not None and pred == truth
        lines.append((42, "true: -" if truth < 0 else f"true: {CLASSES[truth]}",
                      (120, 255, 120) if ok else (255, 150, 150)))
    for y, text, colour in lines:
        cv2.putText(top, text, (8, y), font, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(top, text, (8, y), font, 0.55, colour, 1, cv2.LINE_AA)
    panel = np.full((BAR_ROW * len(CLASSES) + 6, WIDTH, 3), 255, dtype=np.uint8)
    for k, name in enumerate(CLASSES):
        y = 3 + k * BAR_ROW
        cv2.putText(panel, name, (6, y + BAR_ROW - 4), font, 0.42, (40, 40, 40), 1, cv2.LINE_AA)
        length = 0 if probs is None else int(probs[k] * (WIDTH - 130))
        cv2.rectangle(panel, (100, y + 2), (100 + length, y + BAR_ROW - 3), colours[k], -1)
        if truth is not None and k == truth:
            cv2.rectangle(panel, (99, y + 1), (WIDTH - 29, y + BAR_ROW - 2), (0, 0, 0), 1)
    timeline = strips.copy()
    x = int(position * (WIDTH - 1))
    timeline[:, max(0, x - 1):x + 2] = 0
    image = np.vstack([top, panel, timeline])
    return image[: image.shape[0] // 2 * 2]


def write_overlay(video_path: Path, out_path: Path, *, probs: np.ndarray, frame_index: np.ndarray,
                  truth: np.ndarray | None, pred: np.ndarray, boxes: dict[int, np.ndarray], start_frame: int = 1,
                  max_frames: int | None = 300) -> Path:
    """Write the overlay MP4 of frames ``start_frame``.. (at most ``max_frames``) and its first frame as PNG.

    ``probs`` (N, C) and ``pred`` (N,) belong to the 1-based frames ``frame_index``; ``truth`` is per
    frame (index 0 = frame 1), or None for a video without labels (``abaw-kit predict``: no "true" line,
    the prediction's strip alone); ``boxes`` maps a frame to its (k, 4) boxes in source pixels.
    """
    import av

    info = probe(video_path)
    colours = _palette()
    row_of = {int(f): i for i, f in enumerate(frame_index)}
    n_labels = info.n_frames if truth is None else len(truth)
    full_pred = np.full(n_labels, -1)
    inside = (frame_index >= 1) & (frame_index <= n_labels)
    full_pred[frame_index[inside] - 1] = pred[inside]
    strips = _strip(full_pred, WIDTH, colours) if truth is None else np.vstack(
        [_strip(truth, WIDTH, colours), np.full((2, WIDTH, 3), 255, np.uint8), _strip(full_pred, WIDTH, colours)])
    last = info.n_frames if max_frames is None else min(info.n_frames, start_frame + max_frames - 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    first_png = out_path.with_suffix(".png")
    with av.open(str(out_path), mode="w") as container:
        stream = None
        for batch in iter_frames(video_path, batch_size=32):
            for number, frame in zip(batch.index, batch.frames):
                if number < start_frame:
                    continue
                if number > last:
                    break
                row = row_of.get(int(number))
                image = render_frame(frame, boxes=boxes.get(int(number), np.zeros((0, 4))),
                                     probs=None if row is None else probs[row],
                                     pred=None if row is None else int(pred[row]),
                                     truth=None if truth is None else
                                     int(truth[number - 1]) if number <= len(truth) else -1,
                                     position=(number - 1) / max(1, info.n_frames - 1), strips=strips, colours=colours)
                if stream is None:
                    stream = container.add_stream("libx264", rate=round(info.fps) or 30)
                    stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
                    cv2.imwrite(str(first_png), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            if batch.index[-1] >= last:
                break
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return out_path
