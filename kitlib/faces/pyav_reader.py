"""Video decoding with PyAV where decord has no wheel (aarch64 GH200 boxes, macOS arm64).

``PyAVReader`` offers the part of ``decord.VideoReader`` that ``kitlib.faces.video`` uses (length,
average fps, per-frame [start, end] times from the container's packet timestamps, batches of RGB
frames), decoding front to back and keeping its place, so the kit's in-order batches decode each
frame once. Frames and times match decord's on the same file (tests/test_video_backend.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class PyAVReader:
    _container = None
    def __init__(self, path: Path | str):
        import av

        self.path = str(path)
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            packets = [(p.pts, p.duration) for p in container.demux(stream) if p.pts is not None and p.size > 0]
            base = float(stream.time_base)
            self._fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
        packets.sort()
        starts = np.array([p[0] for p in packets], dtype=np.float64) * base
        fallback = 1.0 / self._fps if self._fps else 0.0
        ends = np.array([s + (d * base if d else fallback) for s, (_, d) in zip(starts, packets)], dtype=np.float64)
        self._times = np.stack([starts, ends], axis=1) if len(starts) else np.zeros((0, 2))
        self._container = None
        self._frames = None
        self._next = 0                    # index of the frame the decoder yields next

    def __len__(self) -> int:
        return len(self._times)

    def get_avg_fps(self) -> float:
        return self._fps

    def get_frame_timestamp(self, idx) -> np.ndarray:
        return self._times[np.asarray(idx)]

    def _restart(self) -> None:
        import av

        if self._container is not None:
            self._container.close()
        self._container = av.open(self.path)
        self._frames = self._container.decode(self._container.streams.video[0])
        self._next = 0

    def get_batch(self, indices: list[int]) -> np.ndarray:
        """RGB frames (B, H, W, 3) uint8 at ``indices`` (ascending; decoding goes forward, restarting if asked back)."""
        out = []
        for i in indices:
            if self._frames is None or i < self._next:
                self._restart()
            while True:
                frame = next(self._frames, None)
                if frame is None:
                    raise RuntimeError(f"the stream ended before frame {i + 1} of {len(self)}")
                self._next += 1
                if self._next - 1 == i:
                    out.append(frame.to_ndarray(format="rgb24"))
                    break
        return np.stack(out)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __del__(self):
        self.close()
