"""Which face on screen is the annotated person: per-track selection strategies.

Aff-Wild2's annotation files do not say which face was annotated when several are on screen. The
10th ABAW release's per-video table (``face_extract_strategy.csv`` for train/validation,
``test_face_person_strategy.csv`` for test, from a public participant repository) names one
strategy per video or test track; "largest face" is right for most videos but not for 83 of the 307
single-person training and validation videos and 134 of the 228 test tracks.

A strategy ranks the faces of one frame (``preference``); ``kitlib.faces.assign`` assigns faces to
all tracks of a video jointly from these rankings, continuity and appearance. ``id_keep`` ranks like
``largest`` but, once a person is chosen, never switches to a larger face.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


STRATEGIES: tuple[str, ...] = ("largest", "left", "right", "top", "second_right", "second_left", "centre", "id_keep")
# positional strategies drop a continuing face that has become the opposite extreme of the frame's faces
OPPOSITE_DROPS: frozenset[str] = frozenset({"left", "right", "top"})


def check_strategy(strategy: str) -> str:
    """``strategy`` if it is one of ``STRATEGIES``, else a ValueError naming the valid ones."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown face selection strategy {strategy!r}; valid: {list(STRATEGIES)}")
    return strategy


def preference(faces: np.ndarray, strategy: str, *, frame_size: tuple[int, int]) -> np.ndarray:
    """Faces (k, >=4) in the order ``strategy`` prefers them (indices, best first); may be shorter than k.

    ``largest`` / ``id_keep``: by area; ``left`` / ``right``: by box centre x (a lone face only when
    its centre is on that half of the frame of width ``frame_size[0]``); ``top``: by centre y;
    ``second_right`` / ``second_left``: the second face from that side, then the others by distance
    from it (none when only one face is on screen); ``centre``: by distance of the box centre from
    the frame centre.
    """
    check_strategy(strategy)
    k = len(faces)
    if k == 0:
        return np.zeros(0, np.int64)
    faces = np.asarray(faces, np.float64)
    width, height = frame_size
    cx = 0.5 * (faces[:, 0] + faces[:, 2])
    cy = 0.5 * (faces[:, 1] + faces[:, 3])
    area = (faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1])
    if strategy in ("largest", "id_keep"):
        return np.argsort(-area, kind="stable")
    if strategy in ("left", "right"):
        if k == 1:
            own_half = cx[0] < width / 2 if strategy == "left" else cx[0] >= width / 2
            return np.zeros(1 if own_half else 0, np.int64)
        return np.argsort(cx if strategy == "left" else -cx, kind="stable")
    if strategy == "top":
        return np.argsort(cy, kind="stable")
    if strategy in ("second_right", "second_left"):
        if k == 1:
            return np.zeros(0, np.int64)
        order = np.argsort(-cx if strategy == "second_right" else cx, kind="stable")
        target = cx[order[1]]
        return np.argsort(np.abs(cx - target) + (np.arange(k) == order[0]) * 1e9, kind="stable")[:k - 1]
    return np.argsort(np.hypot(cx - width / 2, cy - height / 2), kind="stable")  # centre


def opposite(faces: np.ndarray, strategy: str) -> int | None:
    """The face at the opposite extreme of a positional ``strategy`` (the other person's), or None."""
    if strategy not in OPPOSITE_DROPS or len(faces) < 2:
        return None
    cx = 0.5 * (faces[:, 0] + faces[:, 2])
    cy = 0.5 * (faces[:, 1] + faces[:, 3])
    return int({"left": np.argmax(cx), "right": np.argmin(cx), "top": np.argmax(cy)}[strategy])


def read_selection(path: Path | str) -> dict[str, str]:
    """A selection table ``txtid,strategy`` (CSV) as a dict; unknown strategies are an error naming the row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"face selection table {path} does not exist (CSV with columns txtid,strategy)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("txtid", "strategy") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected txtid,strategy")
    for i, (txtid, strategy) in enumerate(zip(table["txtid"], table["strategy"])):
        if strategy not in STRATEGIES:
            raise ValueError(f"{path}: line {i + 2} ({txtid}) has strategy {strategy!r}; valid: {list(STRATEGIES)}")
    return dict(zip(table["txtid"], table["strategy"]))


def track_strategy(txtid: str, side: str | None, table: Mapping[str, str], *, default: str = "largest") -> str:
    """The strategy of one track: its row in ``table``, else its annotated ``side``, else ``default``."""
    if txtid in table:
        return table[txtid]
    return side if side in ("left", "right") else check_strategy(default)


def release_selection(metadata_dir: Path | str) -> pd.DataFrame:
    """The 10th ABAW release's selection table (``txtid,strategy``, one row per annotation/test track).

    Train/validation: ``face_extract_strategy.csv`` gives one strategy per single-person video,
    mapped to its annotation files through ``expr_video_index.csv``; in the five two-person videos
    (blank strategy) ``_left`` / ``_right`` files take that side and an unsuffixed file takes the
    side its sibling does not. Test: ``test_face_person_strategy.csv`` is per track already.
    """
    root = Path(metadata_dir)
    per_video = pd.read_csv(root / "face_extract_strategy.csv", dtype=str, keep_default_na=False)
    index = pd.read_csv(root / "expr_video_index.csv", dtype=str)
    strategy_of = dict(zip(per_video["video_id"], per_video["strategy"]))
    siblings = index.groupby("videoid")["txtid"].apply(list).to_dict()
    rows = []
    for txtid, videoid in zip(index["txtid"], index["videoid"]):
        strategy = strategy_of.get(videoid, "")
        if not strategy:  # a two-person video: the side is in the name (or is the sibling's other side)
            sides = [t.rsplit("_", 1)[1] for t in siblings[videoid] if t.endswith(("_left", "_right"))]
            suffix = txtid.rsplit("_", 1)[1] if txtid.endswith(("_left", "_right")) else None
            strategy = suffix or ("left" if sides == ["right"] else "right" if sides == ["left"] else "largest")
        rows.append((txtid, check_strategy(strategy)))
    test = pd.read_csv(root / "test_face_person_strategy.csv", dtype=str)
    rows += [(t, check_strategy(s)) for t, s in zip(test["txtid"], test["strategy"])]
    table = pd.DataFrame(rows, columns=["txtid", "strategy"])
    if table["txtid"].duplicated().any():
        raise ValueError(f"{root}: annotation names listed twice: {table.loc[table['txtid'].duplicated(), 'txtid'].tolist()}")
    return table


def strategies_of(tracks: Sequence, table: Mapping[str, str], *, default: str = "largest") -> list[str]:
    """The strategy of each of one video's ``tracks`` (objects with ``txtid`` and ``side``): ``track_strategy``,
    except that an unlisted, unsuffixed file beside one ``_left`` (``_right``) file takes the other side."""
    sides = {t.side for t in tracks if t.side in ("left", "right")}
    out = []
    for t in tracks:
        if t.txtid not in table and t.side is None and len(sides) == 1:
            out.append("right" if sides == {"left"} else "left")
        else:
            out.append(track_strategy(t.txtid, t.side, table, default=default))
    return out
