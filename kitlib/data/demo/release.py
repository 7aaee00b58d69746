"""The release-shaped layout of the generated dataset (``demo.layout: release``): the rehearsal's data.

The same drawn faces and sounds as the demo, laid out as the real 10th ABAW EXPR release and the
Stage-I image sets are, so ``params/abaw10.yaml`` reads them with its own paths and tables:

* videos named as real release videos (their ids from ``params/abaw10_folds.csv`` /
  ``params/abaw10_face_selection.csv``), at the release's resolutions and frame rates: 640x360,
  1280x720, 1920x1080 and a portrait 1080x1920, 25 and 30 fps, with sound;
* ``6-30-1920x1080``: a two-person video whose ``_left`` file is in Train_Set and ``_right`` file in
  Validation_Set, as in the release;
* the organisers' file names: ``annotations/EXPR_Recognition_Challenge/{Train_Set,Validation_Set}``,
  ``test/names_of_videos_in_each_test_set/Expression_Recognition_Challenge_test_set_release.txt``,
  ``test/prediction_files_format/ABAW_Expr_test_set_sample.txt``;
* ``face_selection.csv``: which face each track is (txtid,strategy), the rows the release's table
  (``params/abaw10_face_selection.csv``) has for these tracks;
* AffectNet (``AffectNet/{train,val}_set/{images,annotations}``) and RAF-DB
  (``RAF-DB/EmoLabel/list_patition_label.txt``, ``RAF-DB/Image/aligned``) layouts of the face images.

The train / validation tracks cover the five published folds, so the authors' fold protocol runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from kitlib import CLASSES

ANNOTATIONS_DIR = "annotations/EXPR_Recognition_Challenge"
TEST_NAMES = "test/names_of_videos_in_each_test_set/Expression_Recognition_Challenge_test_set_release.txt"
TEST_TEMPLATE = "test/prediction_files_format/ABAW_Expr_test_set_sample.txt"
SELECTION_FILE = "face_selection.csv"


@dataclass(frozen=True)
class ReleaseVideo:
    """One video of the release-shaped set: a real release name, its split(s), size and frame rate."""

    videoid: str
    split: str                        # the split of its annotation file(s)
    size: tuple[int, int]             # width, height (the name's)
    fps: float                        # the name's
    sides: tuple[str | None, ...] = (None,)   # (None,) one person; ("left", "right") a _left / _right pair
    person_splits: tuple[str, ...] = ()       # per person where the pair's files sit in different splits


# published fold in the comment (params/abaw10_folds.csv): folds 1-5 each hold a train/val track
RELEASE_VIDEOS: tuple[ReleaseVideo, ...] = (
    ReleaseVideo("102-30-640x360", "Train_Set", (640, 360), 30.0),                      # fold 1
    ReleaseVideo("54-30-1080x1920", "Train_Set", (1080, 1920), 30.0),                   # fold 2, portrait
    ReleaseVideo("6-30-1920x1080", "Train_Set", (1920, 1080), 30.0, ("left", "right"),
                 ("Train_Set", "Validation_Set")),                                      # folds 4 / 3
    ReleaseVideo("111-25-1920x1080", "Train_Set", (1920, 1080), 25.0),                  # fold 5
    ReleaseVideo("125-25-1280x720", "Validation_Set", (1280, 720), 25.0),               # fold 2
    ReleaseVideo("134-30-1280x720", "Test_Set", (1280, 720), 30.0),
)


def txtid_of(video: ReleaseVideo, side: str | None) -> str:
    return video.videoid if side is None else f"{video.videoid}_{side}"


def selection_rows() -> list[tuple[str, str]]:
    """(txtid, strategy) of every track: its side for a pair's files, else the largest face."""
    return [(txtid_of(v, side), side or "largest") for v in RELEASE_VIDEOS for side in v.sides]


# ----------------------------------------------------------------------------- Stage-I image sets

# AffectNet: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt (-> ABAW Other)
_ABAW_TO_AFFECTNET = np.array([0, 6, 5, 4, 1, 2, 3, 7])
# RAF-DB basic: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral; no Other
_ABAW_TO_RAFDB = np.array([7, 6, 3, 2, 4, 5, 1, -1])


def _write_jpg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def write_affectnet(root: Path, face_image, *, per_class: dict[str, int]) -> dict[str, int]:
    """``AffectNet/<split>_set/images/<id>.jpg`` + ``annotations/<id>_exp.npy`` (AffectNet's label order).

    ``face_image(label)`` draws one face of ABAW class ``label``; ``per_class``: images per class per split.
    """
    written = {}
    for split, count in per_class.items():
        base, n = root / "AffectNet" / f"{split}_set", 0
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        for label in range(len(CLASSES)):
            for _ in range(count):
                image_id = f"{n + 1:06d}"
                _write_jpg(base / "images" / f"{image_id}.jpg", face_image(label))
                np.save(base / "annotations" / f"{image_id}_exp.npy", np.array(str(_ABAW_TO_AFFECTNET[label])))
                n += 1
        written[f"AffectNet/{split}"] = n
    return written


def write_rafdb(root: Path, face_image, *, per_class: dict[str, int]) -> dict[str, int]:
    """RAF-DB basic: ``EmoLabel/list_patition_label.txt`` (``train_00001.jpg 4``) + ``Image/aligned``."""
    base, lines, written = root / "RAF-DB", [], {}
    for split, count in per_class.items():
        n = 0
        for label in range(len(CLASSES)):
            if _ABAW_TO_RAFDB[label] < 0:
                continue
            for _ in range(count):
                n += 1
                _write_jpg(base / "Image" / "aligned" / f"{split}_{n:05d}_aligned.jpg", face_image(label))
                lines.append(f"{split}_{n:05d}.jpg {_ABAW_TO_RAFDB[label]}")
        written[f"RAF-DB/{split}"] = n
    (base / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (base / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return written
