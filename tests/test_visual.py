"""Streaming multi-scale visual feature extraction on tiny self-made videos, and the linear probe."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from skimage import data as skdata

from kitlib.data import Track
from kitlib.faces import BRIDGED, DETECTED, MISSING, build_detector
from kitlib.metrics import linear_probe_f1
from kitlib.store import FeatureStore
from kitlib.visual.extract import (OFFICIAL_REPORT_COLUMNS, REPORT_COLUMNS, extract_official_crop_features,
                                   extract_visual_features)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCALES = (0.9, 1.2, 1.5)
N_FRAMES = 20


def write_video(path: Path, *, n_frames: int = N_FRAMES, with_face: bool = True, blank: set[int] = frozenset()) -> Path:
    """A 200 x 150 mp4 of the astronaut's head sliding right over grey (no face in frames ``blank``, 0-based)."""
    patch = cv2.resize(skdata.astronaut()[0:320, 80:380], (130, 140), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (200, 150))
    assert writer.isOpened()
    for t in range(n_frames):
        frame = np.full((150, 200, 3), 90, np.uint8)
        if with_face and t not in blank:
            x = 5 + 3 * t
            frame[5:145, x:x + 130] = patch
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def tiny_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=28, depth=1,
                             embed_dim=32, num_heads=2, global_pool="avg")  # random CLS barely sees the input


def track(txtid: str, video: Path) -> Track:
    videoid, side = (txtid.rsplit("_", 1) + [None])[:2] if txtid.endswith(("_left", "_right")) else (txtid, None)
    return Track(txtid=txtid, videoid=videoid, split="Train_Set", video_path=video, labels_path=None, side=side)


def run(tracks, store, **overrides) -> pd.DataFrame:
    args = dict(detector=build_detector("opencv-haar"), crop_scales=SCALES, image_size=28, mean=MEAN, std=STD,
                batch_size=16, max_gap=3, device=torch.device("cpu"), decode_batch=8,
                manifest={"run": "test"})
    args.update(overrides)
    return extract_visual_features(tracks, store, tiny_backbone(), **args)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    corrupt = root / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return {
        "face": write_video(root / "face.mp4", blank={9, 10}),  # a 2-frame gap, bridged with max_gap 3
        "empty": write_video(root / "empty.mp4", with_face=False),
        "broken": corrupt,
    }


def test_extract_writes_features_mask_and_report(tmp_path, videos):
    store = FeatureStore(tmp_path, "visual")
    tracks = [track("face", videos["face"]), track("broken", videos["broken"]), track("empty", videos["empty"])]
    report = run(tracks, store)

    assert list(report.columns) == list(REPORT_COLUMNS)
    rows = report.set_index("txtid")
    assert rows.loc["face", "status"] == "ok"
    assert rows.loc["broken", "status"].startswith("error: ")  # reported, the others still processed
    assert rows.loc["empty", "status"] == "no face"
    assert store.keys() == ["empty", "face"]

    saved = store.load("face")
    assert saved["frame_index"].tolist() == list(range(1, N_FRAMES + 1))
    assert saved["features"].shape == (N_FRAMES, 32) and saved["features"].dtype == np.float16
    assert saved["features_by_scale"].shape == (N_FRAMES, 3, 32) and saved["features_by_scale"].dtype == np.float16
    assert saved["boxes"].shape == (N_FRAMES, 4) and saved["boxes"].dtype == np.float32
    assert saved["landmarks"].shape == (N_FRAMES, 5, 2) and np.isnan(saved["landmarks"]).all()   # Haar has none
    assert saved["status"].dtype == np.uint8 and saved["times_s"].dtype == np.float64
    np.testing.assert_allclose(saved["times_s"][:3], [0.0, 0.04, 0.08], atol=1e-3)
    status = saved["status"]
    assert status[9] == BRIDGED and status[10] == BRIDGED, status
    assert (status == DETECTED).sum() >= N_FRAMES - 4
    np.testing.assert_array_equal(saved["mask"], status != MISSING)
    summary = rows.loc["face", ["frames", "detected", "bridged", "missing"]].tolist()
    assert rows.loc["face", "followed"] == 0   # a face that never reaches the border is never followed
    assert summary == [N_FRAMES, (status == DETECTED).sum(), (status == BRIDGED).sum(), (status == MISSING).sum()]
    # eq. 7: the frame feature is the mean over the scales; the scales see different crops
    mean = saved["features_by_scale"].astype(np.float32).mean(axis=1)
    np.testing.assert_allclose(saved["features"].astype(np.float32), mean, atol=2e-3)
    by_scale = saved["features_by_scale"][saved["mask"]].astype(np.float32)
    assert np.abs(by_scale[:, 0] - by_scale[:, 2]).max() > 1e-3
    assert np.abs(saved["features"][saved["mask"]]).max() > 0
    # the face moves right by 3 px a frame: the box follows it
    boxes = saved["boxes"]
    assert boxes[15, 0] - boxes[0, 0] > 30

    empty = store.load("empty")
    assert not empty["mask"].any() and (empty["status"] == MISSING).all()
    assert np.all(empty["features"] == 0) and np.isnan(empty["boxes"]).all()

    manifest = store.read_manifest()
    assert manifest["run"] == "test" and manifest["crop_scales"] == list(SCALES)
    assert manifest["image_size"] == 28 and manifest["detector"] == "opencv-haar" and manifest["feature_dim"] == 32


def test_resume_skips_done_tracks(tmp_path, videos):
    store = FeatureStore(tmp_path, "visual")
    run([track("face", videos["face"])], store)
    before = store.path("face").stat().st_mtime_ns
    report = run([track("face", videos["face"]), track("empty", videos["empty"])], store)
    assert report.set_index("txtid")["status"].to_dict() == {"face": "skipped (done)", "empty": "no face"}
    assert store.path("face").stat().st_mtime_ns == before


def test_two_person_video_is_decoded_once_for_both_sides(tmp_path, videos, monkeypatch):
    import kitlib.visual.extract as visual

    opened = []
    real = visual.iter_frames
    monkeypatch.setattr(visual, "iter_frames", lambda path, **kw: (opened.append(path), real(path, **kw))[1])
    # the video id "face" with _left / _right annotations: the one face starts on the left and drifts right
    store = FeatureStore(tmp_path, "visual")
    report = run([track("face_left", videos["face"]), track("face_right", videos["face"])], store)
    assert len(opened) == 1
    assert set(report["txtid"]) == {"face_left", "face_right"}
    left, right = store.load("face_left"), store.load("face_right")
    # joint tracks: the face stays the left person's after it crosses the middle (no longer also the right's)
    assert left["mask"][-1] and not right["mask"][-1] and right["features"].shape == (N_FRAMES, 32)


def test_results_do_not_depend_on_the_decode_chunking(tmp_path, videos):
    a = FeatureStore(tmp_path / "a", "visual")
    b = FeatureStore(tmp_path / "b", "visual")
    run([track("face", videos["face"])], a, decode_batch=3, batch_size=4)
    run([track("face", videos["face"])], b, decode_batch=64, batch_size=64)
    fa, fb = a.load("face"), b.load("face")
    np.testing.assert_array_equal(fa["status"], fb["status"])
    np.testing.assert_allclose(fa["boxes"], fb["boxes"])
    np.testing.assert_allclose(fa["features"].astype(np.float32), fb["features"].astype(np.float32), atol=1e-2)


def test_boxes_detector_drives_the_extraction(tmp_path, videos):
    csv = tmp_path / "boxes.csv"
    marks = lambda f: ",".join(f"{50 + 3 * (f - 1) + 5 * k},{45 + k}" for k in range(5))  # noqa: E731
    rows = [f"face,{f},{40 + 3 * (f - 1)},30,{90 + 3 * (f - 1)},80,1,{marks(f)}" for f in range(1, N_FRAMES + 1, 2)]
    csv.write_text("videoid,frame,x1,y1,x2,y2,score,lx1,ly1,lx2,ly2,lx3,ly3,lx4,ly4,lx5,ly5\n" + "\n".join(rows) + "\n")
    store = FeatureStore(tmp_path, "visual")
    report = run([track("face", videos["face"])], store, detector=build_detector("boxes", path=csv), max_gap=1)
    saved = store.load("face")
    assert report["status"].tolist() == ["ok"]
    assert saved["status"][:19].tolist() == [DETECTED, BRIDGED] * 9 + [DETECTED]
    assert saved["status"][19] == MISSING  # after the last box: no extrapolation
    np.testing.assert_allclose(saved["boxes"][1], [43, 30, 93, 80])
    # the picked detection's landmarks on DETECTED frames, never interpolated
    assert saved["landmarks"].shape == (N_FRAMES, 5, 2) and saved["landmarks"].dtype == np.float32
    np.testing.assert_allclose(saved["landmarks"][2], [[56 + 5 * k, 45 + k] for k in range(5)])
    assert np.isnan(saved["landmarks"][saved["status"] != DETECTED]).all()
    assert np.isfinite(saved["landmarks"][saved["status"] == DETECTED]).all()


def test_linear_probe_separates_synthetic_classes(rng):
    centres = rng.normal(size=(8, 16)) * 4
    y = rng.integers(0, 8, size=800)
    X = centres[y] + rng.normal(size=(800, 16))
    y_invalid = y.copy()
    y_invalid[:50] = -1  # invalid frames are left out
    score = linear_probe_f1(X[:600], y_invalid[:600], X[600:], y[600:], seed=0)
    assert score > 0.9
    noise = linear_probe_f1(rng.normal(size=(600, 16)), y[:600], rng.normal(size=(200, 16)), y[600:])
    assert noise < 0.4


# --------------------------------------------------------------------------- Table 1's official face crops

def write_crops(folder: Path, numbers: list[int]) -> np.ndarray:
    """The astronaut's face as 112 x 112 JPEGs ``<folder>/<number:05d>.jpg``; returns the image (RGB)."""
    folder.mkdir(parents=True, exist_ok=True)
    face = cv2.resize(skdata.astronaut()[66:161, 177:272], (112, 112), interpolation=cv2.INTER_AREA)
    for number in numbers:
        cv2.imwrite(str(folder / f"{number:05d}.jpg"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    return face


def test_official_crops_with_a_missing_and_a_corrupt_jpeg(tmp_path, caplog):
    root = tmp_path / "cropped_aligned"
    write_crops(root / "v1", [1, 2, 4, 5, 6])                   # frame 3: no face, no file
    (root / "v1" / "00005.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")  # corrupt
    good = (root / "v1" / "00006.jpg").read_bytes()
    (root / "v1" / "00004.jpg").write_bytes(good[: len(good) // 3])        # truncated
    write_crops(root / "v1", [9])                                # past the video's 7 frames: ignored
    store = FeatureStore(tmp_path / "features", "visual_official")
    tracks = [track("v1", tmp_path / "v1.mp4"), track("gone", tmp_path / "gone.mp4")]
    with caplog.at_level("WARNING", logger="kitlib.visual"):
        report = extract_official_crop_features(
            tracks, store, tiny_backbone(), crops_root=root, n_frames={"v1": 7, "gone": 5}, image_size=28,
            mean=MEAN, std=STD, batch_size=4, device=torch.device("cpu"), chunk_frames=2, manifest={"run": "test"})
    assert list(report.columns) == list(OFFICIAL_REPORT_COLUMNS)
    rows = report.set_index("txtid")
    assert rows.loc["v1", "status"] == "ok" and rows.loc["v1", "images"] == 5 and rows.loc["v1", "unreadable"] == 2
    assert "00005.jpg" in rows.loc["v1", "problems"] and "00004.jpg" in rows.loc["v1", "problems"]
    assert "00005.jpg" in caplog.text
    assert rows.loc["gone", "status"].startswith("error: no crop folder") and not store.done("gone")
    saved = store.load("v1")
    assert saved["frame_index"].tolist() == list(range(1, 8))
    assert saved["mask"].tolist() == [True, True, False, False, False, True, False]
    features = saved["features"].astype(np.float32)
    assert np.abs(features[~saved["mask"]]).max() == 0 and np.abs(features[saved["mask"]]).min(axis=1).max() > 0
    np.testing.assert_allclose(features[0], features[5], atol=1e-3)   # the same image, wherever in the chunks
    assert store.read_manifest()["image_size"] == 28
    again = extract_official_crop_features(
        tracks[:1], store, tiny_backbone(), crops_root=root, n_frames={"v1": 7}, image_size=28, mean=MEAN,
        std=STD, device=torch.device("cpu"), manifest={})
    assert again["status"].tolist() == ["skipped (done)"]


def test_official_crop_features_match_the_recrop_encoder(tmp_path):
    """One way to encode: an official crop goes through the same resize + normalise + backbone as a re-crop."""
    from kitlib.faces import crop_faces, normalize

    face = write_crops(tmp_path / "crops" / "v1", [1])
    store = FeatureStore(tmp_path / "features", "visual_official")
    backbone = tiny_backbone()
    extract_official_crop_features([track("v1", tmp_path / "v1.mp4")], store, backbone, crops_root=tmp_path / "crops",
                                   n_frames={"v1": 1}, image_size=28, mean=MEAN, std=STD, device=torch.device("cpu"),
                                   manifest={})
    decoded = cv2.cvtColor(cv2.imread(str(tmp_path / "crops" / "v1" / "00001.jpg")), cv2.COLOR_BGR2RGB)
    image = torch.from_numpy(decoded).permute(2, 0, 1)[None]
    crops = crop_faces(image, torch.tensor([[0.0, 0.0, 112.0, 112.0]]), scales=(1.0,), out_size=28)
    with torch.inference_mode():
        expected = backbone(normalize(crops, MEAN, STD).flatten(0, 1))[0].numpy()
    np.testing.assert_allclose(store.load("v1")["features"][0].astype(np.float32), expected, atol=2e-3)
    assert face.shape == (112, 112, 3)


def test_official_crop_stride_encodes_every_nth_frame(tmp_path):
    write_crops(tmp_path / "crops" / "v1", [1, 2, 3, 4, 5])
    store = FeatureStore(tmp_path / "features", "visual_official")
    report = extract_official_crop_features(
        [track("v1", tmp_path / "v1.mp4")], store, tiny_backbone(), crops_root=tmp_path / "crops", n_frames={"v1": 5},
        image_size=28, mean=MEAN, std=STD, device=torch.device("cpu"), frame_stride=2, manifest={})
    assert store.load("v1")["mask"].tolist() == [True, False, True, False, True]
    assert report.loc[0, "images"] == 5 and report.loc[0, "missing"] == 2
    assert store.read_manifest()["frame_stride"] == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_official_crops_on_cuda_match_cpu(tmp_path):
    write_crops(tmp_path / "crops" / "v1", [1, 3])
    features = {}
    for name in ("cpu", "cuda"):
        store = FeatureStore(tmp_path / name, "visual_official")
        extract_official_crop_features([track("v1", tmp_path / "v1.mp4")], store, tiny_backbone(),
                                       crops_root=tmp_path / "crops", n_frames={"v1": 3}, image_size=28, mean=MEAN,
                                       std=STD, device=torch.device(name), manifest={})
        features[name] = store.load("v1")["features"].astype(np.float32)
    np.testing.assert_allclose(features["cuda"], features["cpu"], atol=5e-3)


def test_detect_every_kth_frame_interpolates_between_and_reports_it(tmp_path, videos):
    from kitlib.faces import INTERPOLATED

    calls = []
    haar = build_detector("opencv-haar")

    class Counting:
        name = "counting-haar"

        def for_video(self, videoid):
            return self

        def detect(self, frames, *, frame_index=None):
            calls.extend(np.asarray(frame_index).tolist())
            return haar.detect(frames, frame_index=frame_index)

    store = FeatureStore(tmp_path, "visual")
    report = run([track("face", videos["face"])], store, detector=Counting(), detect_every=3, decode_batch=4, max_gap=6)
    assert calls == list(range(1, N_FRAMES + 1, 3))   # frames 1, 4, 7, ...: independent of the decode chunking
    saved = store.load("face")
    row = report.iloc[0]
    assert row["interpolated"] == int((saved["status"] == INTERPOLATED).sum()) > 8
    assert row["strategy"] == "largest" and row["identity_switches"] == 0 and row["overlap"] == 0
    assert saved["mask"].sum() >= N_FRAMES - 3


def test_two_person_tracks_never_share_the_face_and_manifest_records_the_detector(tmp_path, videos):
    store = FeatureStore(tmp_path, "visual")
    report = run([track("face_left", videos["face"]), track("face_right", videos["face"])], store).set_index("txtid")
    left, right = store.load("face_left"), store.load("face_right")
    # one face on screen, starting on the left: the left track holds it through the 2-frame detector miss and
    # after it crosses the middle; the right track at most takes Haar's one false box (a second "face", frame 6)
    assert (left["status"] != MISSING).all() and (right["status"] != MISSING).sum() <= 1
    assert report.loc["face_left", "strategy"] == "left" and report["overlap"].tolist() == [0, 0]
    manifest = store.read_manifest()
    assert manifest["detector_settings"]["name"] == "opencv-haar" and manifest["detect_every"] == 1
    selection = {"face_left": "right", "face_right": "left"}   # a selection table overrides the sides
    swapped = FeatureStore(tmp_path / "swapped", "visual")
    out = run([track("face_left", videos["face"]), track("face_right", videos["face"])], swapped, selection=selection)
    assert out.set_index("txtid").loc["face_left", "strategy"] == "right"


def test_a_full_disk_stops_the_extraction_at_the_first_failed_write(tmp_path, videos, monkeypatch):
    """The first write the disk refuses ends the loop (no more videos tried): the tracks finished before stay,
    the partial file is removed, and the error names the file."""
    import errno

    import kitlib.store

    names = [f"v{i}" for i in range(5)]
    for name in names:
        (tmp_path / f"{name}.mp4").write_bytes(videos["face"].read_bytes())
    writes = []
    real_savez = np.savez

    def savez(fh, **arrays):
        writes.append(Path(fh.name).name)
        if len(writes) == 2:
            fh.write(b"the first bytes of a file the disk has no room for")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_savez(fh, **arrays)

    monkeypatch.setattr(kitlib.store.np, "savez", savez)
    store = FeatureStore(tmp_path / "features", "visual")
    with pytest.raises(kitlib.store.DiskFullError, match=r"No space left on device while writing .*v1\.npz"):
        run([track(name, tmp_path / f"{name}.mp4") for name in names], store)
    assert len(writes) == 2 and store.keys() == ["v0"]
    assert not list(store.root.glob(".*.partial"))
