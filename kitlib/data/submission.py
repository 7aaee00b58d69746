"""The official EXPR submission file: writer, fill policy and validator.

One text file: the header ``image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other``
then one row per row of the organisers' template, in the template's order,
``<txtid>/<frame:05d>.jpg,<label 0-7>``. The template also lists frames where no face was found;
every row needs a label.

Fill policy ``nearest`` (the only one): a template frame with no prediction of its own (no face and
no audio, or past the last decoded frame) takes the label of the nearest predicted frame of the same
track (the earlier one on a tie). A template track with no prediction at all is an error, never a
silent row; stage 07 gives a test track with no face and no audio in any frame the training prior's
most frequent class (``source`` "prior", ``from_prior`` in the coverage report, and a warning).

Both files are read as UTF-8 with an optional byte-order mark (editors such as Notepad and Excel
write one; the organisers' tools accept it), so a BOM is never mistaken for a wrong header.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kitlib import CLASSES
from kitlib.store import atomic_path

log = logging.getLogger(__name__)


HEADER = "image_location," + ",".join(CLASSES)
FILL_POLICIES = ("nearest",)


class SubmissionError(ValueError):
    """A template or submission file that is not what the organisers expect; says where."""


@dataclass(frozen=True)
class TrackPrediction:
    """Per-frame labels of one track: ``frame_index`` 1-based, ``labels`` 0..7, and where each came from."""

    frame_index: np.ndarray
    labels: np.ndarray
    source: np.ndarray | None = None  # per frame: "face", "audio", ... (coverage table); None = "model"


def read_template(path: Path) -> pd.DataFrame:
    """The template's rows as a table (row order kept): columns ``location``, ``txtid``, ``frame``."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: template file missing (data.test_template)")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if not lines or not lines[0].startswith("image_location"):
        raise SubmissionError(f"{path}: line 1 must be the header {HEADER!r}")
    locations = [line.split(",", 1)[0].strip() for line in lines[1:] if line.strip()]
    parts = pd.Series(locations).str.extract(r"^(?P<txtid>.+)/(?P<frame>\d+)\.jpg$")
    bad = parts["txtid"].isna().to_numpy().nonzero()[0]
    if bad.size:
        raise SubmissionError(f"{path}: line {bad[0] + 2} is {locations[bad[0]]!r}, not <txtid>/<frame>.jpg")
    return pd.DataFrame({"location": locations, "txtid": parts["txtid"], "frame": parts["frame"].astype(np.int64)})


def nearest_index(known_frames: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each wanted frame, the position in sorted ``known_frames`` of the nearest one (earlier on a tie)."""
    right = np.clip(np.searchsorted(known_frames, wanted), 0, len(known_frames) - 1)
    left = np.clip(right - 1, 0, None)
    take_left = np.abs(wanted - known_frames[left]) <= np.abs(known_frames[right] - wanted)
    return np.where(take_left, left, right)


def build_rows(template: pd.DataFrame, predictions: dict[str, TrackPrediction], *,
               fill_policy: str = "nearest") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Assign a label to every template row; return (rows: location, label) and per-track coverage.

    Coverage counts, per track, the template frames labelled from each prediction source (e.g.
    ``from_face``, ``from_audio``) and those ``filled`` by the fill policy.
    """
    if fill_policy not in FILL_POLICIES:
        raise SubmissionError(f"unknown submission.fill_policy {fill_policy!r}; valid: {', '.join(FILL_POLICIES)}")
    missing = sorted(set(template["txtid"]) - set(predictions))
    if missing:
        raise SubmissionError(f"the template names {len(missing)} track(s) with no predictions: "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    labels = np.empty(len(template), dtype=np.int64)
    template_frames = template["frame"].to_numpy()
    coverage = []
    for txtid, rows in template.groupby("txtid", sort=False).indices.items():
        pred = predictions[txtid]
        frames = np.asarray(pred.frame_index, dtype=np.int64)
        if frames.size == 0 or np.any(np.diff(frames) <= 0):
            raise SubmissionError(f"track {txtid!r}: frame_index must be non-empty and strictly increasing")
        wanted = template_frames[rows]
        idx = nearest_index(frames, wanted)
        labels[rows] = np.asarray(pred.labels, dtype=np.int64)[idx]
        source = np.asarray(pred.source if pred.source is not None else np.full(frames.size, "model"))[idx]
        source = np.where(frames[idx] == wanted, source, "filled")
        names, counts = np.unique(source, return_counts=True)
        coverage.append({"txtid": txtid, "template_frames": len(rows),
                         **{("filled" if n == "filled" else f"from_{n}"): int(c) for n, c in zip(names, counts)}})
    if ((labels < 0) | (labels >= len(CLASSES))).any():
        raise SubmissionError("predicted labels must be in 0..7")
    coverage = pd.DataFrame(coverage)
    if "filled" not in coverage:
        coverage["filled"] = 0
    counts = [c for c in coverage.columns if c != "txtid"]
    coverage[counts] = coverage[counts].fillna(0).astype(np.int64)
    return pd.DataFrame({"location": template["location"].to_numpy(), "label": labels}), coverage


def write_submission(path: Path, template: pd.DataFrame, predictions: dict[str, TrackPrediction], *,
                     fill_policy: str = "nearest") -> pd.DataFrame:
    """Write the official file (atomically) and return the per-track coverage table."""
    rows, coverage = build_rows(template, predictions, fill_policy=fill_policy)
    body = rows["location"] + "," + rows["label"].astype(str)
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(HEADER + "\n" + "\n".join(body) + "\n")
    return coverage


def validate_submission(path: Path, template: pd.DataFrame | Path) -> int:
    """Check a submission against the template; return its row count or raise ``SubmissionError``.

    Checks: the exact header (a UTF-8 byte-order mark before it is accepted); no blank line among
    the rows; one row per template row; row i names the template's row i (so order and names
    match); every label an integer 0-7.
    """
    path = Path(path)
    if not isinstance(template, pd.DataFrame):
        template = read_template(template)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such submission file")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        log.info("%s starts with a UTF-8 byte-order mark (accepted)", path)
    try:
        lines = raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise SubmissionError(f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None
    if not lines or lines[0].strip() != HEADER:
        raise SubmissionError(f"{path}: line 1 must be exactly {HEADER!r}, got {lines[0][:100]!r}" if lines
                              else f"{path}: empty file")
    body = [line for line in lines[1:]]
    while body and not body[-1].strip():
        body.pop()
    blank = [i for i, line in enumerate(body) if not line.strip()]
    if blank:
        raise SubmissionError(f"{path}: line {blank[0] + 2} is blank (a blank line among the rows; "
                              f"{len(blank)} in all): remove it")
    if len(body) != len(template):
        raise SubmissionError(f"{path}: {len(body)} rows, the template has {len(template)}")
    split = pd.Series(body).str.split(",", n=1, expand=True).reindex(columns=[0, 1])
    wrong_place = np.flatnonzero(split[0].to_numpy() != template["location"].to_numpy())
    if wrong_place.size:
        i = int(wrong_place[0])
        raise SubmissionError(f"{path}: line {i + 2} is {split[0][i]!r}, the template's row {i + 1} is "
                              f"{template['location'][i]!r} (rows must follow the template's order)")
    labels = split[1].fillna("").str.strip()
    bad = np.flatnonzero(~labels.isin([str(c) for c in range(len(CLASSES))]).to_numpy())
    if bad.size:
        i = int(bad[0])
        raise SubmissionError(f"{path}: line {i + 2} has label {labels[i]!r}, not an integer 0-{len(CLASSES) - 1}")
    return len(body)
