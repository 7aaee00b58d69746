"""Image-level FER data for Stage-I adaptation (seed 000, sec. 3.1 and 4.2).

Readers turn each dataset's release layout into a list of ``(image path, label)`` with labels in
the 8 ABAW classes (``kitlib.CLASSES``: 0 Neutral, 1 Anger, 2 Disgust, 3 Fear, 4 Happiness,
5 Sadness, 6 Surprise, 7 Other):

* ``class_folder_items``     ``<root>/<ClassName>/*.png|jpg``
* ``affectnet_items``        AffectNet (Contempt -> Other)
* ``rafdb_items``            RAF-DB basic (no Other)
* ``affwild2_frame_items``   Aff-Wild2 cropped frames + EXPR annotation files (label -1 skipped)

``FaceImageDataset`` loads them with the Stage-I train augmentation (mild random resized crop,
flip, colour jitter, then PadAug, sec. 3.1.1) or the eval transform (resize + normalise).
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
from kitlib.visual.padaug import PadAug

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


def face_transform(*, image_size: int, train: bool, padaug: PadAug | None,
                   mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """Stage-I train augmentation (crop/flip/colour + PadAug before normalising) or eval resize."""
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
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

    def __init__(self, items: list[Item], *, image_size: int, train: bool, padaug: PadAug | None = None,
                 mean: tuple[float, ...], std: tuple[float, ...]):
        labels = np.array([label for _, label in items], dtype=np.int64)
        if len(items) == 0:
            raise ValueError("FaceImageDataset got no items")
        if ((labels < 0) | (labels >= NUM_CLASSES)).any():
            raise ValueError(f"item labels must be 0..{NUM_CLASSES - 1}, found {sorted(set(labels.tolist()))}")
        self.items, self.labels = list(items), labels
        self.transform = face_transform(image_size=image_size, train=train, padaug=padaug if train else None,
                                        mean=mean, std=std)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        return self.transform(load_rgb(path)), int(label)
