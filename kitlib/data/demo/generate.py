"""Writing the demo release: videos with sound, annotations, test names and template, images, crops, truth, manifest.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from kitlib.progress import tqdm

from kitlib import CLASSES, NUM_CLASSES
from kitlib.data import HEADER
from kitlib.data.demo import release
from kitlib.data.demo.faces import (IMAGE_SIZE, OFFICIAL_CROPS_DIR, Identity, _background, _composite, _placement,
                                    face_sprites, official_crop)
from kitlib.data.demo.timeline import (_assign_classes, _chunk_modes, _fill_frames, _plan_person, _trajectory, _VideoPlan,
                                       synth_audio)

log = logging.getLogger(__name__)


DEMO_VERSION = 2                 # bump when the generated content changes: old demos are regenerated
MANIFEST_NAME = "demo_manifest.json"
TEMPLATE_HEADER = "image_location," + HEADER


# ----------------------------------------------------------------------------- rendering

def _render_video(plan: _VideoPlan, path: Path, *, fps: float, size: tuple[int, int], sample_rate: int,
                  crops_root: Path) -> dict[str, dict[str, np.ndarray]]:
    """Render and encode one video; return the truth arrays of each annotated person.

    Each person's face crops (``official_crop`` of the truth box, frames where the face shows)
    are written as ``crops_root/<txtid>/<00001>.jpg``, the layout of the release's
    ``cropped_aligned`` folder.
    """
    rng = np.random.default_rng(plan.seed)
    width, height = size
    n = plan.n_frames
    background = _background(rng, width, height)
    two_people = len(plan.people) == 2
    layouts = []
    for person in plan.people:
        identity = Identity.sample(rng)
        if two_people:
            region = (0.0, width / 2) if person.side == "left" else (width / 2, float(width))
            size_range, exit_side = (0.25, 0.42), (-1 if person.side == "left" else 1)
        else:
            region, size_range, exit_side = (0.0, float(width)), (0.25, 0.60), int(rng.choice([-1, 1]))
        centre, box_h, roll, covered = _trajectory(rng, person, identity, n=n, fps=fps, width=width,
                                                   height=height, region=region, size_range=size_range,
                                                   exit_side=exit_side)
        layouts.append((identity, face_sprites(identity), centre, box_h, roll, covered,
                        tuple(float(c) for c in rng.uniform(30, 220, 3))))

    if two_people:
        left_sounds = plan.people[0].audio_class >= 0
        audio_class = np.where(left_sounds, plan.people[0].audio_class, plan.people[1].audio_class)
        pan = np.where(left_sounds, 0.3, 0.7)          # the speaker's side is louder
    else:
        audio_class, pan = plan.people[0].audio_class, None
    audio = synth_audio(audio_class, fps=fps, sample_rate=sample_rate, rng=rng, pan=pan)

    boxes = [np.full((n, 4), np.nan, np.float32) for _ in plan.people]
    visible = [np.zeros(n, bool) for _ in plan.people]
    crop_dirs = [crops_root / person.txtid for person in plan.people]
    for folder in crop_dirs:
        folder.mkdir(parents=True, exist_ok=True)

    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            canvas = background.copy()
            for k, (person, (identity, sprites, centre, box_h, roll, covered, cover_colour)) in enumerate(
                    zip(plan.people, layouts)):
                affine, box = _placement(identity, centre=(centre[i, 0], centre[i, 1]), box_height=box_h[i],
                                         roll_deg=roll[i])
                if box[2] <= 0 or box[0] >= width or box[3] <= 0 or box[1] >= height:
                    continue                                      # the face has left the frame
                _composite(canvas, sprites[person.visual_class[i]], affine)
                if covered[i]:
                    pad_w, pad_h = 0.2 * (box[2] - box[0]), 0.25 * (box[3] - box[1])
                    cv2.rectangle(canvas, (int(box[0] - pad_w), int(box[1] - pad_h)),
                                  (int(box[2] + pad_w), int(box[3] + pad_h)), cover_colour, -1)
                    continue
                boxes[k][i] = box
                visible[k][i] = box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height
            image = np.clip(canvas, 0, 255).astype(np.uint8)
            for k, folder in enumerate(crop_dirs):   # after every face is drawn: crops show what the video shows
                if np.isfinite(boxes[k][i, 0]):
                    crop = official_crop(image, boxes[k][i])
                    cv2.imwrite(str(folder / f"{i + 1:05d}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            yield image

    write_mp4(path, frames(), audio, fps=fps, size=(width, height), sample_rate=sample_rate)
    return {person.txtid: dict(labels=person.labels, boxes=boxes[k], face_visible=visible[k],
                               visual_signal=person.visual_signal, audio_signal=person.audio_signal,
                               visual_class=person.visual_class, audio_class=person.audio_class)
            for k, person in enumerate(plan.people)}


def write_mp4(path: Path, frames: Iterable[np.ndarray], audio: np.ndarray, *, fps: float, size: tuple[int, int],
              sample_rate: int) -> None:
    """Mux RGB frames (H, W, 3 uint8, streamed) as h264 yuv420p and stereo float audio (2, samples) as AAC.

    Audio is sent alongside the video so the two streams interleave in the file as in a real
    recording; what is left of it after the last frame is sent at the end.
    """
    import av

    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"{path}: yuv420p needs an even frame size, got {width}x{height}")
    rate = Fraction(fps).limit_denominator(1001)
    samples_per_frame = sample_rate / fps
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": "20", "preset": "veryfast"}
        sound = container.add_stream("aac", rate=sample_rate, layout="stereo")

        def send_audio(start: int, stop: int) -> None:
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start:stop]), format="fltp",
                                               layout="stereo")
            chunk.sample_rate, chunk.pts, chunk.time_base = sample_rate, start, Fraction(1, sample_rate)
            container.mux(sound.encode(chunk))

        sent = 0
        for i, image in enumerate(frames):
            if image.shape != (height, width, 3):
                raise ValueError(f"{path}: frame {i + 1} is {image.shape}, expected {(height, width, 3)}")
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(video.encode(frame))
            upto = min(audio.shape[1], int(round((i + 1) * samples_per_frame)))
            if upto - sent >= 4096:
                send_audio(sent, upto)
                sent = upto
        if sent < audio.shape[1]:
            send_audio(sent, audio.shape[1])
        container.mux(video.encode(None))
        container.mux(sound.encode(None))


def _face_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """One face image of class ``label`` (IMAGE_SIZE square, RGB uint8): a new identity, placement, tilt."""
    identity = Identity.sample(rng)
    sprite = face_sprites(identity)[label]
    expand = rng.uniform(1.1, 1.5)
    box_h = IMAGE_SIZE / expand
    centre = (IMAGE_SIZE / 2 + rng.uniform(-0.08, 0.08) * IMAGE_SIZE,
              IMAGE_SIZE / 2 + rng.uniform(-0.08, 0.08) * IMAGE_SIZE)
    affine, _ = _placement(identity, centre=centre, box_height=box_h,
                           roll_deg=identity.tilt_deg + rng.uniform(-6, 6))
    canvas = _background(rng, IMAGE_SIZE, IMAGE_SIZE)
    _composite(canvas, sprite, affine)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _render_images(root: Path, *, rng: np.random.Generator, images_per_class: int) -> dict[str, int]:
    """The class-per-folder face crop set (images/{train,val}/<ClassName>/*.png)."""
    counts = {"train": images_per_class, "val": max(1, int(round(images_per_class / 3)))}
    written = {}
    for split, per_class in counts.items():
        for label, name in enumerate(CLASSES):
            folder = root / "images" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                image = _face_image(rng, label)
                cv2.imwrite(str(folder / f"{split}_{label}_{j:04d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            written[f"{split}/{name}"] = per_class
    return written


def _render_release_images(root: Path, *, rng: np.random.Generator, images_per_class: int) -> dict[str, int]:
    """The same faces in AffectNet's and RAF-DB's layouts (``stage1.dataset: affectnet_rafdb``)."""
    val = max(1, int(round(images_per_class / 3)))
    draw = lambda label: _face_image(rng, label)   # noqa: E731
    return {**release.write_affectnet(root, draw, per_class={"train": images_per_class, "val": val}),
            **release.write_rafdb(root, draw, per_class={"train": images_per_class, "test": val})}


# ----------------------------------------------------------------------------- the dataset

def _params(**kwargs: Any) -> dict[str, Any]:
    """Generator params as they are stored in the manifest (JSON types, so they compare equal)."""
    return json.loads(json.dumps({"version": DEMO_VERSION, **kwargs}))


def _plan_release(params: dict[str, Any], rng: np.random.Generator,
                  seeds: list[np.random.SeedSequence]) -> list[_VideoPlan]:
    """The videos of ``release.RELEASE_VIDEOS``: real names, sizes, frame rates and splits."""
    plans = []
    for k, video in enumerate(release.RELEASE_VIDEOS):
        n = int(round(rng.uniform(*params["seconds"]) * video.fps))
        people = [_plan_person(rng, txtid=release.txtid_of(video, side), side=side, n=n, fps=video.fps)
                  for side in video.sides]
        plans.append(_VideoPlan(videoid=video.videoid, split=video.split, batch=f"batch{1 + k % 2}", n_frames=n,
                                extra_label_line=k == 0, people=people, seed=seeds[k], size=video.size,
                                fps=video.fps, person_splits=video.person_splits))
    _fill_plans(rng, plans)
    return plans


def _fill_plans(rng: np.random.Generator, plans: list[_VideoPlan]) -> None:
    """Classes of each split's segments, then every person's frames (a pair's speakers take turns)."""
    for split in ("Train_Set", "Validation_Set", "Test_Set"):
        split_plans = [v for v in plans if v.split == split]
        people = [p for v in split_plans for p in v.people]
        if not people:
            continue
        _assign_classes(rng, people, [v.n_frames for v in split_plans for _ in v.people])
        for video in split_plans:
            fps = video.fps
            speaking = None
            if len(video.people) == 2:
                turns = _chunk_modes(rng, video.n_frames, fps, (0.5, 0.5))   # who speaks, 1-3 s turns
                speaking = [turns == 0, turns == 1]
            for idx, person in enumerate(video.people):
                _fill_frames(rng, person, video.n_frames, fps, None if speaking is None else speaking[idx])


def _plan(params: dict[str, Any], rng: np.random.Generator,
          seeds: list[np.random.SeedSequence]) -> list[_VideoPlan]:
    """Names, lengths and label timelines of every video of every split."""
    if params.get("layout") == "release":
        return _plan_release(params, rng, seeds)
    fps, (width, height) = params["fps"], params["size"]
    counts = {"Train_Set": params["n_train"], "Validation_Set": params["n_val"], "Test_Set": params["n_test"]}
    total = sum(counts.values())
    numbers = rng.choice(np.arange(1, 4 * total + 20), size=total, replace=False)   # ids like "46-30-256x192"
    plans: list[_VideoPlan] = []
    k = 0
    for split, count in counts.items():
        split_plans = []
        two_person_at = 0 if split == "Train_Set" and count > 0 else -1
        extra_line_at = (1 if count > 1 else -1) if split == "Train_Set" else -1
        if params["n_train"] <= 1 and split == "Validation_Set" and count > 0:
            extra_line_at = 0
        for j in range(count):
            number = int(numbers[k])
            videoid = f"{number}-{int(round(fps))}-{width}x{height}"
            n = int(round(rng.uniform(*params["seconds"]) * fps))
            sides = ["left", "right"] if j == two_person_at else [None]
            people = [_plan_person(rng, txtid=videoid if side is None else f"{videoid}_{side}", side=side, n=n,
                                   fps=fps) for side in sides]
            split_plans.append(_VideoPlan(videoid=videoid, split=split, batch=f"batch{1 + number % 2}",
                                          n_frames=n, extra_label_line=j == extra_line_at, people=people,
                                          seed=seeds[k]))
            k += 1
        people = [p for v in split_plans for p in v.people]
        _assign_classes(rng, people, [v.n_frames for v in split_plans for _ in v.people])
        for video in split_plans:
            speaking = None
            if len(video.people) == 2:
                turns = _chunk_modes(rng, video.n_frames, fps, (0.5, 0.5))   # who speaks, 1-3 s turns
                speaking = [turns == 0, turns == 1]
            for idx, person in enumerate(video.people):
                _fill_frames(rng, person, video.n_frames, fps, None if speaking is None else speaking[idx])
        plans.extend(split_plans)
    return plans


def _layout_names(layout: str) -> dict[str, str]:
    """Where a layout keeps its annotation folders and the organisers' two test files."""
    if layout == "release":
        return {"annotations": release.ANNOTATIONS_DIR, "test_names": release.TEST_NAMES,
                "test_template": release.TEST_TEMPLATE}
    return {"annotations": "annotations", "test_names": "test/names.txt", "test_template": "test/template.txt"}


def _write_annotation(path: Path, labels: np.ndarray, *, extra_line: bool) -> None:
    lines = labels.tolist() + ([int(labels[-1])] if extra_line else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "\n" + "\n".join(str(v) for v in lines) + "\n")


def _statistics(truths: dict[str, dict[str, np.ndarray]], plans: list[_VideoPlan]) -> dict[str, Any]:
    split_of = {p.txtid: v.split_of(k) for v in plans for k, p in enumerate(v.people)}
    stats: dict[str, Any] = {"class_hist": {}, "frames": {}}
    for split in ("Train_Set", "Validation_Set", "Test_Set"):
        labels = [t["labels"] for k, t in truths.items() if split_of[k] == split]
        if not labels:
            continue
        labels = np.concatenate(labels)
        stats["class_hist"][split] = np.bincount(labels[labels >= 0], minlength=NUM_CLASSES).tolist()
        stats["frames"][split] = int(len(labels))
    every = {key: np.concatenate([t[key] for t in truths.values()]) for key in next(iter(truths.values()))}
    valid = every["labels"] >= 0
    stats.update(
        video_frames=int(sum(v.n_frames for v in plans)),
        track_frames=int(len(every["labels"])),
        invalid_fraction=float(1 - valid.mean()),
        face_absent_fraction=float(np.isnan(every["boxes"][:, 0]).mean()),
        face_partial_fraction=float((~np.isnan(every["boxes"][:, 0]) & ~every["face_visible"]).mean()),
        visual_off_fraction=float((valid & ~every["visual_signal"]).sum() / max(valid.sum(), 1)),
        audio_off_fraction=float((valid & ~every["audio_signal"]).sum() / max(valid.sum(), 1)),
        both_off_fraction=float((valid & ~every["visual_signal"] & ~every["audio_signal"]).sum()
                                / max(valid.sum(), 1)),
    )
    return stats


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("%s is unreadable (%s): treating the demo as incomplete", path, exc)
        return None


def demo_is_complete(root: Path) -> bool:
    """Whether ``root`` holds a finished demo: its manifest, every file it lists and every face crop."""
    root = Path(root)
    manifest = _read_manifest(root)
    if manifest is None or "files" not in manifest:
        return False
    if not all((root / rel).is_file() for rel in manifest["files"]):
        return False
    crops = root / OFFICIAL_CROPS_DIR
    return all(len(list((crops / t["txtid"]).glob("*.jpg"))) == t.get("official_crops", -1)
               for t in manifest["tracks"])


def generate_demo(root: Path, *, seed: int = 0, n_train: int = 7, n_val: int = 3, n_test: int = 3,
                  seconds: Sequence[float] = (14.0, 24.0), fps: float = 30.0, size: Sequence[int] = (256, 192),
                  sample_rate: int = 44100, images_per_class: int = 60, layout: str = "demo",
                  force: bool = False) -> dict[str, Any]:
    """Write the demo dataset into ``root`` (unless a complete one with the same params is there).

    ``layout="release"`` writes the release-shaped set of :mod:`kitlib.data.demo.release` instead
    (its fixed videos: ``n_train`` / ``n_val`` / ``n_test``, ``fps`` and ``size`` are not used).

    ``n_train`` / ``n_val`` / ``n_test`` count raw videos; the first train video has two annotated
    people (``_left`` / ``_right``), so Train_Set holds ``n_train + 1`` annotation files. The
    dataset is built in a hidden sibling folder and renamed onto ``root`` at the end, with
    ``demo_manifest.json`` written last, so a killed run leaves nothing that looks finished.
    Returns the manifest. The same ``seed`` and params give the same labels, boxes and pixels.
    """
    root = Path(root)
    if len(seconds) != 2 or not 0 < seconds[0] <= seconds[1]:
        raise ValueError(f"seconds must be [min, max] with 0 < min <= max, got {list(seconds)}")
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"size must be [width, height] of at least 32 px, got {list(size)}")
    if min(n_train, n_val, n_test) < 0 or n_train + n_val + n_test == 0:
        raise ValueError(f"video counts must be >= 0 and not all 0, got {n_train}, {n_val}, {n_test}")
    if layout not in ("demo", "release"):
        raise ValueError(f"layout must be 'demo' or 'release', got {layout!r}")
    params = _params(seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, seconds=list(seconds), fps=fps,
                     size=list(size), sample_rate=sample_rate, images_per_class=images_per_class,
                     **({"layout": layout} if layout != "demo" else {}))
    names = _layout_names(layout)
    existing = _read_manifest(root)
    if existing is not None and not force and existing.get("params") == params and demo_is_complete(root):
        log.info("demo: %s is complete (%d tracks), not regenerating", root, len(existing["tracks"]))
        return existing
    if root.exists() and any(root.iterdir()) and existing is None:
        raise FileExistsError(f"{root} exists, is not empty and holds no {MANIFEST_NAME}: refusing to "
                              f"overwrite it with the demo dataset (choose an empty or new folder)")

    started = time.perf_counter()
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f".{root.name}.partial-*"):
        log.warning("demo: removing %s left by an interrupted generation", stale)
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        seq = np.random.SeedSequence(seed)
        n_videos = len(release.RELEASE_VIDEOS) if layout == "release" else n_train + n_val + n_test
        plan_seed, image_seed, *video_seeds = seq.spawn(2 + n_videos)
        plans = _plan(params, np.random.default_rng(plan_seed), video_seeds)
        log.info("demo: planned %d videos (%d tracks), %d frames", len(plans),
                 sum(len(v.people) for v in plans), sum(v.n_frames for v in plans))

        truths: dict[str, dict[str, np.ndarray]] = {}
        tracks, files = [], []
        for video in tqdm(plans, desc="demo videos", unit="video"):
            video_rel = Path("videos") / video.batch / f"{video.videoid}.mp4"
            (work / video_rel).parent.mkdir(parents=True, exist_ok=True)
            truth = _render_video(video, work / video_rel, fps=video.fps or fps,
                                  size=video.size or (int(size[0]), int(size[1])),
                                  sample_rate=sample_rate, crops_root=work / OFFICIAL_CROPS_DIR)
            files.append(str(video_rel))
            for k, person in enumerate(video.people):
                split = video.split_of(k)
                entry = {"txtid": person.txtid, "videoid": video.videoid, "split": split,
                         "side": person.side, "video": str(video_rel), "n_frames": video.n_frames}
                if split != "Test_Set":
                    ann_rel = Path(names["annotations"]) / split / f"{person.txtid}.txt"
                    _write_annotation(work / ann_rel, person.labels, extra_line=video.extra_label_line)
                    entry.update(annotation=str(ann_rel), n_label_lines=video.n_frames + video.extra_label_line)
                    files.append(str(ann_rel))
                truth_rel = Path("truth") / f"{person.txtid}.npz"
                (work / truth_rel).parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(work / truth_rel, **truth[person.txtid])
                entry["truth"] = str(truth_rel)
                entry["official_crops"] = int(np.isfinite(truth[person.txtid]["boxes"][:, 0]).sum())
                files.append(str(truth_rel))
                tracks.append(entry)
            truths.update(truth)

        test_tracks = [t for t in tracks if t["split"] == "Test_Set"]
        for rel in (names["test_names"], names["test_template"]):
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / names["test_names"]).write_text("".join(f"{t['txtid']}\n" for t in test_tracks))
        rows = [f"{t['txtid']}/{i:05d}.jpg" for t in test_tracks for i in range(1, t["n_frames"] + 1)]
        (work / names["test_template"]).write_text("\n".join([TEMPLATE_HEADER, *rows]) + "\n")
        files += [names["test_names"], names["test_template"]]
        render = _render_release_images if layout == "release" else _render_images
        images = render(work, rng=np.random.default_rng(image_seed), images_per_class=images_per_class)
        if layout == "release":
            (work / release.SELECTION_FILE).write_text(
                "txtid,strategy\n" + "".join(f"{t},{s}\n" for t, s in release.selection_rows()))
            files.append(release.SELECTION_FILE)
        log.info("demo: wrote %d face images for Stage I", sum(images.values()))

        manifest = {"generator": "kitlib.demo", "params": params, "tracks": tracks, "images": images,
                    "files": files, "statistics": _statistics(truths, plans),
                    "elapsed_s": round(time.perf_counter() - started, 1)}
        (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

        if root.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-old-", dir=root.parent))
            root.rename(retired / "old")
            work.rename(root)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            work.rename(root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    stats = manifest["statistics"]
    log.info("demo: %d videos, %d tracks, %d frames, class histogram (train) %s, in %.1f s -> %s",
             len(plans), len(tracks), stats["video_frames"], stats["class_hist"].get("Train_Set"),
             manifest["elapsed_s"], root)
    return manifest
