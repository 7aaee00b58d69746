"""Precomputed face boxes from a CSV file (``videoid,frame,x1,y1,x2,y2,score``, optionally the 5 landmarks
``lx1,ly1,...,lx5,ly5``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from kitlib.faces.detectors import LANDMARK_COLUMNS, register_detector, _no_faces, pack_detections

log = logging.getLogger(__name__)


BOX_COLUMNS: tuple[str, ...] = ("videoid", "frame", "x1", "y1", "x2", "y2", "score")


@register_detector("boxes")
class BoxesDetector:
    """Precomputed face boxes from a CSV file with columns ``videoid,frame,x1,y1,x2,y2,score``.

    ``frame`` is 1-based. Optional columns ``lx1,ly1,...,lx5,ly5`` (``LANDMARK_COLUMNS``): the 5
    landmarks in the kit's order (``LANDMARK_NAMES``; the ``boxes.csv`` that ``export_boxes`` writes
    from the visual features has them), all ten or none; without them, or in an empty cell, the
    landmarks are NaN. Build it once for the file, then ``for_video(videoid)`` gives the
    detector for one video; its ``detect`` needs the batch's ``frame_index``. A video with no
    rows in the file yields no faces (logged as a warning), so it shows as "no face" in reports.
    """

    name = "boxes"

    def __init__(self, *, path: Path | str, videoid: str | None = None,
                 _table: dict[str, tuple[np.ndarray, np.ndarray]] | None = None):
        self.path = Path(path)
        self._table = _table if _table is not None else self._read(self.path)
        self.videoid = videoid
        if videoid is not None and videoid not in self._table:
            log.warning("%s has no boxes for video %s: every frame will be without a face", self.path, videoid)

    @staticmethod
    def _read(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        import pandas as pd

        if not path.is_file():
            raise FileNotFoundError(f"face box file {path} does not exist")
        table = pd.read_csv(path, dtype={"videoid": str})
        missing = [c for c in BOX_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; expected {list(BOX_COLUMNS)}")
        marks = [c for c in LANDMARK_COLUMNS if c in table.columns]
        if marks and len(marks) < len(LANDMARK_COLUMNS):
            raise ValueError(f"{path}: landmark columns {sorted(set(LANDMARK_COLUMNS) - set(marks))} missing; "
                             f"give all of {list(LANDMARK_COLUMNS)} or none")
        table = table.sort_values(["videoid", "frame"], kind="stable")
        frames = table["frame"].to_numpy(np.int64)
        values = pack_detections(table[list(BOX_COLUMNS[2:6])].to_numpy(np.float32),
                                 table["score"].to_numpy(np.float32),
                                 table[list(LANDMARK_COLUMNS)].to_numpy(np.float32) if marks else None)
        if (frames < 1).any():
            raise ValueError(f"{path}: frame numbers are 1-based, found {int(frames.min())}")
        out = {}
        for videoid, rows in table.groupby("videoid", sort=False).indices.items():
            out[str(videoid)] = (frames[rows], values[rows])
        log.info("read %d face boxes for %d videos from %s", len(table), len(out), path)
        return out

    def for_video(self, videoid: str) -> "BoxesDetector":
        return BoxesDetector(path=self.path, videoid=videoid, _table=self._table)

    def detect(self, frames: np.ndarray, *, frame_index: np.ndarray | None = None) -> list[np.ndarray]:
        if self.videoid is None:
            raise ValueError(f"the boxes detector for {self.path} is not bound to a video: use for_video(videoid)")
        if frame_index is None:
            raise ValueError("the boxes detector needs the frames' 1-based frame_index")
        frame_index = np.asarray(frame_index, np.int64)
        if frames is not None and len(frames) != len(frame_index):
            raise ValueError(f"{len(frames)} frames but {len(frame_index)} frame numbers")
        if self.videoid not in self._table:
            return [_no_faces() for _ in frame_index]
        numbers, values = self._table[self.videoid]
        start = np.searchsorted(numbers, frame_index, side="left")
        stop = np.searchsorted(numbers, frame_index, side="right")
        return [values[a:b] for a, b in zip(start, stop)]


