"""Image-level FER data for Stage-I adaptation (seed 000, sec. 3.1 and 4.2).

Readers turn each dataset's release layout into a list of ``(image path, label)`` with labels in
the 8 ABAW classes (``kitlib.CLASSES``: 0 Neutral, 1 Anger, 2 Disgust, 3 Fear, 4 Happiness,
5 Sadness, 6 Surprise, 7 Other):

* ``class_folder_items``     ``<root>/<ClassName>/*.png|jpg``
* ``affectnet_items``        AffectNet (Contempt -> Other)
* ``rafdb_items``            RAF-DB basic (no Other)
* ``ferplus_items``          FERPlus (FER2013 images, 10 crowd votes each: majority vote, seed 004 sec. 3.2)
* ``affwild2_frame_items``   Aff-Wild2 cropped frames + EXPR annotation files (label -1 skipped)

``FaceImageDataset`` loads them with the Stage-I train augmentation (mild random resized crop,
flip, colour jitter, then PadAug, sec. 3.1.1) or the eval transform (resize + normalise); with
``recipe="authors"`` the reference code's list instead (``face_transform``).

``stage1.dataset: affectnet_rafdb`` merges AffectNet (8-class) and RAF-DB (basic) as the reference
code trains: train = AffectNet train + RAF-DB train, validation = AffectNet val + RAF-DB test.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from kitlib.progress import tqdm

from kitlib import CLASSES, NUM_CLASSES
from kitlib.data import read_labels

log = logging.getLogger(__name__)


Item = tuple[Path, int]
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# folder names seen in FER releases, mapped to the ABAW class index (lower case)
CLASS_ALIASES: dict[str, int] = {
    **{name.lower(): i for i, name in enumerate(CLASSES)},
    "neutrality": 0, "angry": 1, "anger": 1, "disgusted": 2, "fearful": 3, "happy": 4, "happiness": 4,
    "sad": 5, "surprised": 6, "contempt": 7,
}
# AffectNet: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt
AFFECTNET_TO_ABAW: np.ndarray = np.array([0, 4, 5, 6, 3, 2, 1, 7])
# RAF-DB basic: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral (index 0 unused)
RAFDB_TO_ABAW: np.ndarray = np.array([-1, 6, 3, 2, 4, 5, 1, 0])


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: folder {path} does not exist")
    return path


def label_counts(items: list[Item]) -> np.ndarray:
    """Images per ABAW class (length 8), for class weights and the data table of notebook 02."""
    return np.bincount(np.array([label for _, label in items], dtype=np.int64), minlength=NUM_CLASSES)


def class_folder_items(root: Path) -> list[Item]:
    """``<root>/<ClassName>/*`` images; ClassName is an ABAW class name (or a common alias), any case."""
    root = _require_dir(Path(root), "class-folder dataset")
    items: list[Item] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = CLASS_ALIASES.get(folder.name.lower())
        if label is None:
            raise ValueError(f"class folder {folder} is not an expression class; expected one of {CLASSES}")
        items += [(p, label) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise FileNotFoundError(f"no images found under {root}/<ClassName>/")
    log.info("class folders %s: %d images, per class %s", root, len(items), label_counts(items).tolist())
    return items


def affectnet_items(root: Path, split: str) -> list[Item]:
    """AffectNet ``<root>/<split>_set/images/<id>.jpg`` with ``annotations/<id>_exp.npy`` (split train|val)."""
    if split not in ("train", "val"):
        raise ValueError(f"AffectNet split must be 'train' or 'val', got {split!r}")
    base = _require_dir(Path(root) / f"{split}_set", "AffectNet")
    images = sorted(p for p in _require_dir(base / "images", "AffectNet").iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES)
    ann_dir = _require_dir(base / "annotations", "AffectNet")
    labels = np.empty(len(images), dtype=np.int64)
    for i, image in enumerate(tqdm(images, desc=f"AffectNet {split} labels", unit="img", leave=False)):
        ann = ann_dir / f"{image.stem}_exp.npy"
        try:
            labels[i] = int(np.load(ann, allow_pickle=False))
        except (OSError, ValueError) as err:
            raise ValueError(f"AffectNet annotation {ann} for {image.name} is missing or unreadable: {err}") from err
    bad = (labels < 0) | (labels >= len(AFFECTNET_TO_ABAW))
    if bad.any():
        raise ValueError(f"AffectNet {split}: expression labels must be 0..7, found {sorted(set(labels[bad]))} "
                         f"(e.g. {images[int(np.argmax(bad))].name})")
    items = [(p, int(c)) for p, c in zip(images, AFFECTNET_TO_ABAW[labels])]
    log.info("AffectNet %s: %d images, per class %s", split, len(items), label_counts(items).tolist())
    return items


def rafdb_items(root: Path, split: str) -> list[Item]:
    """RAF-DB basic: ``EmoLabel/list_patition_label.txt`` + ``Image/aligned/<name>_aligned.jpg`` (train|test)."""
    if split not in ("train", "test"):
        raise ValueError(f"RAF-DB split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    list_file = root / "EmoLabel" / "list_patition_label.txt"
    if not list_file.is_file():
        raise FileNotFoundError(f"RAF-DB label list {list_file} does not exist")
    image_dir = _require_dir(root / "Image" / "aligned", "RAF-DB")
    present = {e.name for e in os.scandir(image_dir)}
    items: list[Item] = []
    for line_no, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            name, raw = line.split()
            raf = int(raw)
            if not 1 <= raf <= 7:
                raise ValueError(f"label {raf} outside 1..7")
        except ValueError as err:
            raise ValueError(f"{list_file}:{line_no}: expected '<name>.jpg <1-7>', got {line!r} ({err})") from err
        if not name.startswith(f"{split}_"):
            continue
        stem, suffix = os.path.splitext(name)
        aligned = f"{stem}_aligned{suffix}"
        if aligned not in present:
            raise FileNotFoundError(f"RAF-DB image {image_dir / aligned} (listed in {list_file}:{line_no}) is missing")
        items.append((image_dir / aligned, int(RAFDB_TO_ABAW[raf])))
    if not items:
        raise ValueError(f"RAF-DB {list_file} lists no '{split}_*' images")
    log.info("RAF-DB %s: %d images, per class %s", split, len(items), label_counts(items).tolist())
    return items


def affectnet_rafdb_items(affectnet_root: Path, rafdb_root: Path, split: str) -> list[Item]:
    """The reference code's merged Stage-I set: AffectNet 8-class + RAF-DB basic, train (``train``:
    both train splits) or validation (``val``: AffectNet val + RAF-DB test)."""
    if split not in ("train", "val"):
        raise ValueError(f"merged AffectNet + RAF-DB split must be 'train' or 'val', got {split!r}")
    items = affectnet_items(affectnet_root, split) + rafdb_items(rafdb_root, "train" if split == "train" else "test")
    log.info("AffectNet + RAF-DB %s: %d images, per class %s", split, len(items), label_counts(items).tolist())
    return items


# FERPlus fer2013new.csv vote columns, in file order, mapped to the ABAW class (-1: not an expression)
FERPLUS_VOTES: tuple[str, ...] = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                                  "contempt", "unknown", "NF")
FERPLUS_TO_ABAW: np.ndarray = np.array([0, 4, 6, 5, 1, 2, 3, 7, -1, -1])
# the release's image folders (generate_training_data.py) and their Usage value in the csv
FERPLUS_SPLITS: dict[str, tuple[str, str]] = {"train": ("FER2013Train", "Training"),
                                              "val": ("FER2013Valid", "PublicTest"),
                                              "test": ("FER2013Test", "PrivateTest")}


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """FERPlus's "majority" label per image from its vote counts (N, 10) -> index into ``FERPLUS_VOTES`` or -1.

    As the FERPlus reference code (Barsoum et al. 2016, ``ferplus.py``, majority mode): a class with
    a single vote is dropped as an outlier, then the label is the class holding MORE than half of
    the remaining votes; no such class (a split vote) gives -1.
    """
    votes = np.asarray(votes, dtype=np.float64)
    kept = np.where(votes > 1, votes, 0.0)                    # single votes are outliers
    top = kept.argmax(axis=1)
    has_majority = kept[np.arange(len(kept)), top] > 0.5 * kept.sum(axis=1)
    return np.where(has_majority & (kept.sum(axis=1) > 0), top, -1)


def ferplus_items(root: Path, split: str, *, label_file: str = "fer2013new.csv",
                  drop_contempt: bool = False) -> list[Item]:
    """FERPlus: ``<root>/fer2013new.csv`` and the images ``<root>/FER2013{Train,Valid,Test}/<Image name>``.

    ``split`` train | val | test (the csv's Training / PublicTest / PrivateTest rows). Each image's
    label is the majority of its 10 crowd votes (``ferplus_majority``), mapped to the ABAW classes:
    neutral, happiness, surprise, sadness, anger, disgust, fear to their own class, contempt to
    Other (as AffectNet's contempt; ``drop_contempt``: skipped, leaving the 6 basic expressions and
    neutral that seed 004 sec. 3.2 / 4.1 train on). Skipped and counted in the log: rows without an
    image name (FERPlus removed those faces), images without a majority, and images whose majority
    is "unknown" or "NF" (not a face).
    """
    if split not in FERPLUS_SPLITS:
        raise ValueError(f"FERPlus split must be one of {', '.join(FERPLUS_SPLITS)}, got {split!r}")
    import pandas as pd

    root = Path(root)
    csv = root / label_file
    if not csv.is_file():
        raise FileNotFoundError(f"FERPlus label file {csv} does not exist (fer2013new.csv of the FERPlus release)")
    table = pd.read_csv(csv)
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in ("Usage", "Image name", *FERPLUS_VOTES) if c not in table.columns]
    if missing:
        raise ValueError(f"{csv} lacks the column(s) {missing}; expected Usage, Image name, {', '.join(FERPLUS_VOTES)}")
    folder_name, usage = FERPLUS_SPLITS[split]
    folder = _require_dir(root / folder_name, "FERPlus")
    rows = table[table["Usage"].astype(str).str.strip() == usage]
    names = rows["Image name"].fillna("").astype(str).str.strip()
    named = rows[names != ""]
    majority = ferplus_majority(named[list(FERPLUS_VOTES)].to_numpy())
    labels = np.where(majority >= 0, FERPLUS_TO_ABAW[np.maximum(majority, 0)], -1)
    if drop_contempt:
        labels = np.where(majority == FERPLUS_VOTES.index("contempt"), -1, labels)
    present = {e.name for e in os.scandir(folder)}
    items: list[Item] = []
    for name, label in zip(names[names != ""], labels):
        if label < 0:
            continue
        if name not in present:
            raise FileNotFoundError(f"FERPlus image {folder / name} (listed in {csv}) is missing")
        items.append((folder / name, int(label)))
    if not items:
        raise ValueError(f"FERPlus {csv} gives no labelled '{usage}' image in {folder}")
    log.info("FERPlus %s: %d images kept of %d rows (%d without an image, %d without a majority or not a face%s); "
             "per class %s", split, len(items), len(rows), len(rows) - len(named),
             int((majority < 0).sum() + np.isin(majority, [8, 9]).sum()),
             f", {int((majority == 7).sum())} contempt dropped" if drop_contempt else "", label_counts(items).tolist())
    return items


def affwild2_frame_items(frames_root: Path, annotations_dir: Path, *, frame_stride: int = 1) -> list[Item]:
    """Aff-Wild2 cropped frames ``<frames_root>/<txtid>/<00001>.jpg`` labelled by ``<annotations_dir>/<txtid>.txt``.

    Frames labelled -1 are skipped, and so are labelled frames with no crop on disk (no face was
    found there; counted in the log). ``frame_stride`` keeps every n-th labelled frame, since
    neighbouring frames are near duplicates.
    """
    frames_root = _require_dir(Path(frames_root), "Aff-Wild2 cropped frames")
    ann_files = sorted(_require_dir(Path(annotations_dir), "Aff-Wild2 EXPR annotations").glob("*.txt"))
    if not ann_files:
        raise FileNotFoundError(f"no EXPR annotation files (*.txt) in {annotations_dir}")
    items: list[Item] = []
    n_invalid = n_no_crop = 0
    for ann in tqdm(ann_files, desc="Aff-Wild2 frames", unit="video", leave=False):
        labels = read_labels(ann)
        folder = frames_root / ann.stem
        if not folder.is_dir():
            raise FileNotFoundError(f"no cropped frames folder {folder} for annotation file {ann}")
        present = {e.name for e in os.scandir(folder)}
        valid = np.flatnonzero(labels >= 0)[::frame_stride]
        n_invalid += int((labels < 0).sum())
        names = [f"{i + 1:05d}.jpg" for i in valid]
        keep = [name in present for name in names]
        n_no_crop += len(keep) - sum(keep)
        items += [(folder / name, int(labels[i])) for name, i, k in zip(names, valid, keep) if k]
    log.info("Aff-Wild2 %s: %d videos, %d frames kept, %d labelled -1, %d without a crop; per class %s",
             annotations_dir, len(ann_files), len(items), n_invalid, n_no_crop, label_counts(items).tolist())
    return items


def load_rgb(path: Path) -> Image.Image:
    """An image file as RGB; a clear error names the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read face image {path}: {err}") from err


TRANSFORM_RECIPES: tuple[str, ...] = ("kit", "authors")


def face_transform(*, image_size: int, train: bool, padaug: torch.nn.Module | None,
                   mean: tuple[float, ...], std: tuple[float, ...], recipe: str = "kit") -> v2.Compose:
    """Stage-I train augmentation (crop/flip/colour + PadAug before normalising) or eval resize.

    ``recipe="authors"`` (the reference code at ``image_size`` 224): RandomResizedCrop(0.8-1,
    bicubic), horizontal flip, ColorJitter(0.25, 0.25, 0.15, 0.02) with p 0.8, grayscale p 0.1,
    Gaussian blur (3, sigma 0.1-1.5) p 0.1, PadAug, normalise, RandomErasing(p 0.25, 2-12 %, value
    0); evaluation Resize(256) + CenterCrop(224) (both scaled by ``image_size / 224``).
    """
    if recipe not in TRANSFORM_RECIPES:
        raise ValueError(f"recipe must be one of {TRANSFORM_RECIPES}, got {recipe!r}")
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if recipe == "authors":
        if not train:
            return v2.Compose([v2.Resize(round(image_size * 256 / 224), interpolation=v2.InterpolationMode.BICUBIC,
                                         antialias=True), v2.CenterCrop(image_size), *to_float, v2.Normalize(mean, std)])
        return v2.Compose([
            v2.RandomResizedCrop(image_size, scale=(0.8, 1.0), interpolation=v2.InterpolationMode.BICUBIC,
                                 antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.15, hue=0.02)], p=0.8),
            v2.RandomGrayscale(p=0.1),
            v2.RandomApply([v2.GaussianBlur(kernel_size=3, sigma=(0.1, 1.5))], p=0.1),
            *to_float,
            *([padaug] if padaug is not None else []),
            v2.Normalize(mean, std),
            v2.RandomErasing(p=0.25, scale=(0.02, 0.12), ratio=(0.3, 3.3), value=0),
        ])
    if not train:
        return v2.Compose([v2.Resize((image_size, image_size), antialias=True), *to_float, v2.Normalize(mean, std)])
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),  # mild: keep the face
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
        *to_float,
        *([padaug] if padaug is not None else []),   # bars are black pixels, so before Normalize
        v2.Normalize(mean, std),
    ])


class FaceImageDataset(torch.utils.data.Dataset):
    """(normalised image tensor (3, S, S), ABAW label) pairs from a reader's item list."""

    def __init__(self, items: list[Item], *, image_size: int, train: bool, padaug: torch.nn.Module | None = None,
                 mean: tuple[float, ...], std: tuple[float, ...], recipe: str = "kit"):
        labels = np.array([label for _, label in items], dtype=np.int64)
        if len(items) == 0:
            raise ValueError("FaceImageDataset got no items")
        if ((labels < 0) | (labels >= NUM_CLASSES)).any():
            raise ValueError(f"item labels must be 0..{NUM_CLASSES - 1}, found {sorted(set(labels.tolist()))}")
        self.items, self.labels = list(items), labels
        self.transform = face_transform(image_size=image_size, train=train, padaug=padaug if train else None,
                                        mean=mean, std=std, recipe=recipe)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        return self.transform(load_rgb(path)), int(label)
