"""The embedded demo dataset: layout, annotation quirks, decodable video + audio, determinism."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from kitlib import CLASSES, NUM_CLASSES
from kitlib.data import demo
from kitlib.data.demo import generate
from kitlib.data.demo import CLASS_F0_HZ, MANIFEST_NAME, demo_is_complete, generate_demo

TINY = dict(seed=3, n_train=2, n_val=1, n_test=1, seconds=(3.0, 4.0), images_per_class=3)
HEADER = ",".join(CLASSES)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo") / "aw2"
    return root, generate_demo(root, **TINY)


def _labels(path: Path) -> tuple[str, np.ndarray]:
    header, *lines = path.read_text().splitlines()
    return header, np.array([int(v) for v in lines])


def _decoded_frames(path: Path) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_layout_and_names(tiny):
    root, manifest = tiny
    train = sorted((root / "annotations" / "Train_Set").glob("*.txt"))
    val = sorted((root / "annotations" / "Validation_Set").glob("*.txt"))
    assert len(train) == TINY["n_train"] + 1 and len(val) == TINY["n_val"]
    names = (root / "test" / "names.txt").read_text().split()
    assert len(names) == TINY["n_test"]
    videos = sorted((root / "videos").glob("batch*/*.mp4"))
    assert len(videos) == TINY["n_train"] + TINY["n_val"] + TINY["n_test"]
    assert {v.parent.name for v in videos} <= {"batch1", "batch2"}
    for video in videos:
        assert re.fullmatch(r"\d+-30-256x192", video.stem), video.stem
    stems = {v.stem for v in videos}
    for track in manifest["tracks"]:
        assert track["videoid"] in stems
        assert (root / "truth" / f"{track['txtid']}.npz").is_file()
    assert {t["txtid"] for t in manifest["tracks"] if t["split"] == "Test_Set"} == set(names)
    for split, per_class in (("train", 3), ("val", 1)):
        for name in CLASSES:
            images = sorted((root / "images" / split / name).glob("*.png"))
            assert len(images) == per_class, (split, name)
            assert cv2.imread(str(images[0])).shape == (demo.IMAGE_SIZE, demo.IMAGE_SIZE, 3)


def test_annotation_header_lengths_and_one_longer_file(tiny):
    root, manifest = tiny
    longer = []
    for track in manifest["tracks"]:
        if track["split"] == "Test_Set":
            assert "annotation" not in track
            continue
        header, labels = _labels(root / track["annotation"])
        assert header == HEADER
        assert labels.min() >= -1 and labels.max() < NUM_CLASSES
        truth = np.load(root / track["truth"])["labels"]
        assert len(labels) in (len(truth), len(truth) + 1)
        np.testing.assert_array_equal(labels[: len(truth)], truth)
        if len(labels) == len(truth) + 1:
            longer.append(track["txtid"])
    assert len(longer) == 1, f"expected exactly one annotation one line longer than its video, got {longer}"


def test_left_right_pair_share_a_video(tiny):
    root, manifest = tiny
    sides = {t["side"]: t for t in manifest["tracks"] if t["side"]}
    assert set(sides) == {"left", "right"}
    left, right = sides["left"], sides["right"]
    assert left["video"] == right["video"] and left["split"] == right["split"] == "Train_Set"
    assert left["txtid"] == left["videoid"] + "_left" and right["txtid"] == right["videoid"] + "_right"
    width = 256
    truth_l, truth_r = np.load(root / left["truth"]), np.load(root / right["truth"])
    centre_l = (truth_l["boxes"][:, 0] + truth_l["boxes"][:, 2]) / 2
    centre_r = (truth_r["boxes"][:, 0] + truth_r["boxes"][:, 2]) / 2
    assert np.nanmax(centre_l) <= width / 2 + 1 and np.nanmin(centre_r) >= width / 2 - 1
    # the sound belongs to one of them at a time
    assert not (truth_l["audio_signal"] & truth_r["audio_signal"]).any()


def test_decoded_frame_count_equals_truth_length(tiny):
    import decord

    root, manifest = tiny
    for track in manifest["tracks"]:
        reader = decord.VideoReader(str(root / track["video"]))
        truth = np.load(root / track["truth"])
        assert len(reader) == len(truth["labels"]) == track["n_frames"]
        assert reader[0].shape == (192, 256, 3)
        for key in ("boxes", "face_visible", "visual_signal", "audio_signal", "visual_class", "audio_class"):
            assert len(truth[key]) == len(truth["labels"]), key


def test_audio_is_decodable_and_carries_the_class(tiny):
    import av

    root, manifest = tiny
    track = next(t for t in manifest["tracks"] if t["side"] is None)
    with av.open(str(root / track["video"])) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac" and stream.rate == 44100 and stream.channels == 2
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    assert audio.shape[0] == 2
    assert abs(audio.shape[1] / 44100 - track["n_frames"] / 30.0) < 0.1
    truth = np.load(root / track["truth"])
    # the longest run of one sounding class: its spectrum peaks at that class's fundamental
    cls = truth["audio_class"].astype(int)
    change = np.flatnonzero(np.diff(np.r_[-2, cls, -2]))
    starts, stops = change[:-1], change[1:]
    sounding = [(b - a, a, b) for a, b in zip(starts, stops) if cls[a] >= 0]
    assert sounding, "no frame carries a class sound"
    _, start, stop = max(sounding)
    assert stop - start >= 8
    segment = audio[0, int(start / 30 * 44100) + 500: int(stop / 30 * 44100) - 500]
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment))))
    freqs = np.fft.rfftfreq(len(segment), 1 / 44100)
    assert abs(freqs[spectrum.argmax()] - CLASS_F0_HZ[cls[start]]) < 12
    silent = truth["audio_class"] < 0
    if silent.sum() > 10 and (~silent).sum() > 10:
        frame_of = np.minimum((np.arange(audio.shape[1]) * 30 / 44100).astype(int), len(cls) - 1)
        loud = np.sqrt(np.mean(audio[0, ~silent[frame_of]] ** 2))
        quiet = np.sqrt(np.mean(audio[0, silent[frame_of]] ** 2))
        assert loud > 2 * quiet


def test_template_rows_follow_names_order(tiny):
    root, manifest = tiny
    names = (root / "test" / "names.txt").read_text().split()
    header, *rows = (root / "test" / "template.txt").read_text().splitlines()
    assert header == "image_location," + HEADER
    frames = {t["txtid"]: t["n_frames"] for t in manifest["tracks"]}
    expected = [f"{name}/{i:05d}.jpg" for name in names for i in range(1, frames[name] + 1)]
    assert rows == expected


def test_haar_finds_most_fully_visible_faces(tiny):
    root, manifest = tiny
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + demo.HAAR_CASCADE)
    hits = total = 0
    for video in sorted({t["video"] for t in manifest["tracks"]}):
        frames = _decoded_frames(root / video)
        truths = [np.load(root / t["truth"]) for t in manifest["tracks"] if t["video"] == video]
        for i in range(0, len(frames), 2):
            people = [t for t in truths if t["face_visible"][i]]
            if not people:
                continue
            found = cascade.detectMultiScale(cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY), scaleFactor=1.1,
                                             minNeighbors=5, minSize=(24, 24))
            found = [np.array([x, y, x + w, y + h], float) for x, y, w, h in found]
            for truth in people:
                total += 1
                hits += max((_iou(truth["boxes"][i], box) for box in found), default=0.0) >= 0.3
    assert total > 50
    assert hits / total >= 0.8, f"Haar found {hits}/{total} fully visible faces"


def test_truth_flags_are_consistent(tiny):
    root, manifest = tiny
    for track in manifest["tracks"]:
        truth = np.load(root / track["truth"])
        absent = np.isnan(truth["boxes"]).any(1)
        assert not (truth["face_visible"] & absent).any()
        inside = ~absent & (truth["boxes"][:, 0] >= 0) & (truth["boxes"][:, 2] <= 256)
        assert not (truth["face_visible"] & ~inside).any()
        invalid = truth["labels"] < 0
        assert not (truth["visual_signal"] & invalid).any() and not (truth["audio_signal"] & invalid).any()
        assert (truth["audio_class"][~truth["audio_signal"]] == -1).all()
        assert (truth["visual_class"][~truth["visual_signal"] & ~invalid] == 0).all()


def test_manifest_last_idempotent_and_force(tiny, tmp_path):
    root, manifest = tiny
    manifest_path = root / MANIFEST_NAME
    others = [p for p in root.rglob("*") if p.is_file() and p != manifest_path]
    assert max(p.stat().st_mtime_ns for p in others) <= manifest_path.stat().st_mtime_ns
    assert demo_is_complete(root)
    stamp = manifest_path.stat().st_mtime_ns
    again = generate_demo(root, **TINY)
    assert again == manifest and manifest_path.stat().st_mtime_ns == stamp
    # other params regenerate; so does force, with the same content for the same seed
    other_root = tmp_path / "aw2"
    first = generate_demo(other_root, **{**TINY, "n_train": 1, "n_test": 0, "images_per_class": 1})
    stamp = (other_root / MANIFEST_NAME).stat().st_mtime_ns
    forced = generate_demo(other_root, **{**TINY, "n_train": 1, "n_test": 0, "images_per_class": 1}, force=True)
    assert (other_root / MANIFEST_NAME).stat().st_mtime_ns > stamp
    assert forced["tracks"] == first["tracks"]
    assert not list(tmp_path.glob(".aw2.partial-*")), "temporary folders left behind"
    (other_root / first["tracks"][0]["truth"]).unlink()
    assert not demo_is_complete(other_root)


def test_same_seed_same_dataset_other_seed_differs(tiny, tmp_path):
    root, manifest = tiny
    twin = generate_demo(tmp_path / "twin", **TINY)
    assert twin["tracks"] == manifest["tracks"]
    for track in manifest["tracks"]:
        a, b = np.load(root / track["truth"]), np.load(tmp_path / "twin" / track["truth"])
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{track['txtid']}:{key}")
        if "annotation" in track:
            assert (root / track["annotation"]).read_text() == (tmp_path / "twin" / track["annotation"]).read_text()
    video = manifest["tracks"][0]["video"]
    np.testing.assert_array_equal(_decoded_frames(root / video)[:5], _decoded_frames(tmp_path / "twin" / video)[:5])
    # planning alone shows that another seed gives other videos
    params = generate._params(**{**TINY, "seed": 4}, fps=30.0, size=[256, 192], sample_rate=44100)
    seeds = np.random.SeedSequence(4).spawn(2 + 4)
    other = generate._plan(params, np.random.default_rng(seeds[0]), seeds[2:])
    assert [v.videoid for v in other] != [t["videoid"] for t in manifest["tracks"] if t["side"] != "right"]


def test_interrupted_generation_leaves_nothing_finished(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "_render_images", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_demo(tmp_path / "aw2", **{**TINY, "n_train": 1, "n_val": 0, "seconds": (1.0, 1.0)})
    assert not (tmp_path / "aw2").exists()
    assert not list(tmp_path.iterdir()), "partial files left behind"
    assert not demo_is_complete(tmp_path / "aw2")


def test_refuses_to_overwrite_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="precious|not empty"):
        generate_demo(tmp_path / "data", **TINY)
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep me"


def test_default_plan_statistics():
    """The default-size plan (labels only, nothing rendered) has the promised proportions."""
    params = generate._params(seed=0, n_train=7, n_val=3, n_test=3, seconds=[14.0, 24.0], fps=30.0,
                          size=[256, 192], sample_rate=44100, images_per_class=60)
    seeds = np.random.SeedSequence(0).spawn(2 + 13)
    plans = generate._plan(params, np.random.default_rng(seeds[0]), seeds[2:])
    people = [(v.split, p) for v in plans for p in v.people]
    assert sum(len(v.people) for v in plans) == 14 and sum(v.extra_label_line for v in plans) == 1
    for split in ("Train_Set", "Validation_Set"):
        labels = np.concatenate([p.labels for s, p in people if s == split])
        assert (np.bincount(labels[labels >= 0], minlength=NUM_CLASSES) > 0).all(), split
    labels = np.concatenate([p.labels for _, p in people])
    valid = labels >= 0
    visual = np.concatenate([p.visual_signal for _, p in people])
    audio = np.concatenate([p.audio_signal for _, p in people])
    assert 0.05 < 1 - valid.mean() < 0.12
    assert 0.15 < (valid & ~visual).sum() / valid.sum() < 0.35
    assert 0.15 < (valid & ~audio).sum() / valid.sum() < 0.40
    assert not (valid & ~visual & ~audio).any()
    total = sum(v.n_frames for v in plans)
    assert 6000 < total < 10000
    hist = np.bincount(labels[valid], minlength=NUM_CLASSES) / valid.sum()
    assert hist[[0, 7]].min() > hist[[1, 2, 3]].max(), "imbalance like the real release: Neutral/Other dominate"


@pytest.mark.parametrize("label", range(NUM_CLASSES))
def test_each_expression_is_distinct_and_detectable(label):
    faces = np.stack([demo.draw_expression(demo.base_face(), c) for c in range(NUM_CLASSES)]).astype(float)
    others = [c for c in range(NUM_CLASSES) if c != label]
    assert min(np.abs(faces[label] - faces[c]).mean() for c in others) > 3.0
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + demo.HAAR_CASCADE)
    canvas = np.full((240, 240, 3), 128, np.uint8)
    canvas[30:210, 30:210] = faces[label].astype(np.uint8)
    found = cascade.detectMultiScale(cv2.cvtColor(canvas, cv2.COLOR_RGB2GRAY), 1.1, 5, minSize=(24, 24))
    assert len(found) >= 1


def test_cropped_aligned_layout_like_the_release(tiny):
    root, manifest = tiny
    folders = sorted(p.name for p in (root / demo.OFFICIAL_CROPS_DIR).iterdir())
    assert folders == sorted(t["txtid"] for t in manifest["tracks"])    # _left / _right have their own folders
    for track in manifest["tracks"]:
        truth = np.load(root / track["truth"])
        shown = np.flatnonzero(np.isfinite(truth["boxes"][:, 0])) + 1  # 1-based frames with a face
        names = sorted(p.name for p in (root / demo.OFFICIAL_CROPS_DIR / track["txtid"]).iterdir())
        assert names == [f"{i:05d}.jpg" for i in shown] and track["official_crops"] == len(shown)
        assert len(shown) < track["n_frames"]                             # absent / covered frames have no file
    # a face crossing the border: the crop is cut, not zero-padded, and shows the face's pixels
    track = next(t for t in manifest["tracks"] if not np.load(root / t["truth"])["face_visible"][
        np.isfinite(np.load(root / t["truth"])["boxes"][:, 0])].all())
    truth = np.load(root / track["truth"])
    partial = int(np.flatnonzero(np.isfinite(truth["boxes"][:, 0]) & ~truth["face_visible"])[0])
    crop = cv2.imread(str(root / demo.OFFICIAL_CROPS_DIR / track["txtid"] / f"{partial + 1:05d}.jpg"))
    assert crop.shape == (demo.OFFICIAL_CROP_SIZE, demo.OFFICIAL_CROP_SIZE, 3)
    assert min(crop[:, :3].mean(), crop[:, -3:].mean(), crop[:3].mean(), crop[-3:].mean()) > 12  # no black bars
    frame = _decoded_frames(root / track["video"])[partial]
    expected = demo.official_crop(frame, truth["boxes"][partial])
    assert np.abs(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(float) - expected).mean() < 12  # video vs crop
    # a missing crop makes the demo incomplete, so it is regenerated
    first = next((root / demo.OFFICIAL_CROPS_DIR / track["txtid"]).iterdir())
    data = first.read_bytes()
    first.unlink()
    try:
        assert not demo_is_complete(root)
    finally:
        first.write_bytes(data)
    assert demo_is_complete(root)


def test_official_crop_is_shifted_inside_the_frame_never_padded():
    image = np.arange(100 * 80 * 3, dtype=np.uint32).reshape(100, 80, 3).astype(np.uint8)
    crop = demo.official_crop(image, np.array([60.0, -10.0, 100.0, 30.0]), size=40)  # past the right and top
    np.testing.assert_array_equal(crop, image[0:40, 40:80])
    whole = demo.official_crop(image, np.array([-50.0, -50.0, 200.0, 200.0]), size=80)  # larger than the frame
    np.testing.assert_array_equal(whole, image[20:100, 0:80])     # centred as far as the frame allows
