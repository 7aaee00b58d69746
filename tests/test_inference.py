"""Model bundles and prediction on new videos (``abaw-kit export`` / ``abaw-kit predict``, ``kitlib.inference``).

Fast tier: a bundle exported from the miniature run (``tests/minirun.py``, plus a backbone and a tiny audio
encoder) and the bad inputs: a changed or missing file, a newer format, a path that is not a video; each is
one line on stderr, a non-zero exit and nothing in ``--out``. Slow tier: a real tiny demo run through the
runner, exported and predicted on its test videos, gives the labels of its ``predictions.txt``; the bundle
still predicts with the run folder gone; a video without audio and an undecodable one are reported.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kitlib import CLASSES, cli
from kitlib.inference import COLUMNS, FORMAT_VERSION, BundleError, Predictor, read_bundle
from kitlib.tools import export, predict
from minirun import make_run


@pytest.fixture(scope="module")
def mini_bundle(tmp_path_factory):
    """A bundle of the miniature run (its features are random: good for the bundle's checks, not for predicting)."""
    from kitlib.audio import make_tiny_encoder
    from kitlib.runfolder import record_params
    from kitlib.stages.s02_stage1_train import pretrained_backbone
    from kitlib.visual.backbones import save_backbone

    root = tmp_path_factory.mktemp("mini")
    make_tiny_encoder(root / "encoder")
    cfg = make_run(root, f"audio.encoder={root / 'encoder'}", "stage1.weights=null", "stage1.image_size=56")
    save_backbone(pretrained_backbone(cfg), cfg.run_dir / "stage1" / "backbone.safetensors", record={})
    record_params(cfg.run_dir, cfg)
    return export.export(cfg.run_dir, root / "bundle")


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def _predict_fails(capsys, tmp_path: Path, bundle: Path, video: Path, code: int = 2) -> str:
    out = tmp_path / "out"
    assert predict.main([str(bundle), str(video), "--out", str(out), "--device", "cpu"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert not out.exists() or not any(out.iterdir())
    return err[-1]


def test_bundle_layout(mini_bundle):
    files = sorted(str(p.relative_to(mini_bundle)) for p in mini_bundle.rglob("*") if p.is_file())
    assert files == ["README.md", "backbone.safetensors", "base/audio_encoder/config.json",
                     "base/audio_encoder/model.safetensors", "base/audio_encoder/preprocessor_config.json",
                     "bundle.json", "head.safetensors"]          # no pickle, one JSON
    manifest = read_bundle(mini_bundle).manifest
    assert manifest["format_version"] == FORMAT_VERSION and manifest["classes"] == list(CLASSES)
    assert manifest["head"]["name"] == "gated" and manifest["smoothing"] == {
        "strategy": "median", "window": 5, "edge": "truncate", "sigma_divisor": 6.0}
    assert manifest["audio"]["encoder"]["included"]              # a local folder, not a hub id: copied in
    assert manifest["faces"]["detector"]["name"] == "centerface" and not manifest["faces"]["detector"]["included"]
    card = (mini_bundle / "README.md").read_text()
    assert "abaw-kit predict" in card and "MIT" in card and "official validation" in card


def test_export_refuses_an_existing_folder_and_another_head(mini_bundle, tmp_path):
    run_dir = mini_bundle.parent / "outputs" / json.loads((mini_bundle / "bundle.json").read_text())["run"]["name"]
    with pytest.raises(BundleError, match="exists"):
        export.export(run_dir, mini_bundle)
    with pytest.raises(BundleError, match="kept only its final head, 'gated'"):
        export.export(run_dir, tmp_path / "b", head="concat_mlp")
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b*"))


def test_changed_file_is_refused(mini_bundle, demo_video, tmp_path, capsys):
    bundle = _copy(mini_bundle, tmp_path)
    with open(bundle / "head.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    line = _predict_fails(capsys, tmp_path, bundle, demo_video)
    assert line.startswith("predict: ") and "head.safetensors: changed since export" in line


def test_missing_file_is_refused(mini_bundle, demo_video, tmp_path, capsys):
    bundle = _copy(mini_bundle, tmp_path)
    (bundle / "base" / "audio_encoder" / "model.safetensors").unlink()
    line = _predict_fails(capsys, tmp_path, bundle, demo_video)
    assert "model.safetensors: missing" in line


def test_newer_format_is_refused(mini_bundle, demo_video, tmp_path, capsys):
    bundle = _copy(mini_bundle, tmp_path)
    manifest = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION + 1}))
    line = _predict_fails(capsys, tmp_path, bundle, demo_video)
    assert f"format version {FORMAT_VERSION + 1} is newer than this kit reads" in line


def test_not_a_bundle_and_not_a_video(mini_bundle, demo_video, tmp_path, capsys):
    line = _predict_fails(capsys, tmp_path, tmp_path, demo_video)
    assert "bundle.json: missing" in line
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    line = _predict_fails(capsys, tmp_path, mini_bundle, notes)
    assert line == f"predict: {notes}: not a video (suffix .txt; expected one of " + \
        ", ".join(predict_suffixes()) + ")"
    line = _predict_fails(capsys, tmp_path, mini_bundle, tmp_path / "nowhere.mp4")
    assert "nowhere.mp4: no such file" in line


def predict_suffixes():
    from kitlib.inference.predictor import VIDEO_SUFFIXES

    return VIDEO_SUFFIXES


def test_expand_inputs_folders_and_globs(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.mp4", "a/y.MKV", "a/z.txt", "w.mp4"):
        (tmp_path / name).write_bytes(b"")
    found = predict.expand_inputs([str(tmp_path / "a"), str(tmp_path / "*.mp4"), str(tmp_path / "w.mp4")])
    assert [p.name for p in found] == ["x.mp4", "y.MKV", "w.mp4"]
    with pytest.raises(ValueError, match="no video matches"):
        predict.expand_inputs([str(tmp_path / "*.avi")])


def test_cli_has_both_words():
    assert {"export", "predict"} <= set(cli.COMMANDS)


# --- slow tier: a real tiny demo run -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The tiny demo through the runner (every stage, real videos), the single head kept in stage 07."""
    from kitlib import config, run

    root = tmp_path_factory.mktemp("demo_run")
    items = ["params/demo.yaml", "params/tiny.yaml", f"run.outputs_root={root / 'outputs'}",
             f"data.root={root / 'data'}", f"audio.encoder={root / 'models' / 'wav2vec2-tiny'}",
             f"fusion.text_encoder={root / 'models' / 'text-tiny'}", "fusion.heads=[a_only,v_only,gated]",
             "submission.ensemble_folds=false", "fusion.xattn_grid=[]", "data.cropped_aligned_dir=null"]
    assert run.main(items) == 0
    cfg = config.load(*items[:2], overrides=items[2:])
    return cfg, root


def _submission(run_dir: Path) -> pd.DataFrame:
    rows = pd.read_csv(run_dir / "submission" / "predictions.txt")
    parts = rows["image_location"].str.extract(r"^(?P<txtid>.+)/(?P<frame>\d+)\.jpg$")
    return pd.DataFrame({"txtid": parts["txtid"], "frame": parts["frame"].astype(int), "label": rows.iloc[:, 1]})


@pytest.mark.slow
def test_bundle_predicts_the_runs_labels_without_the_run_folder(demo_run, tmp_path):
    cfg, root = demo_run
    run_copy = Path(shutil.copytree(cfg.run_dir, tmp_path / "run"))
    made = export.export(run_copy, tmp_path / "made")
    bundle = Path(shutil.move(made, tmp_path / "elsewhere" / "bundle"))
    shutil.rmtree(run_copy)                                    # nothing reads the run folder any more
    submission = _submission(cfg.run_dir)
    predictor = Predictor.from_bundle(bundle, device="cpu")
    videos = {p.stem: p for p in (root / "data" / "videos").rglob("*.mp4")}
    for txtid, expected in submission.groupby("txtid"):
        frames = predictor.predict(videos[txtid])
        assert list(frames.columns) == [*COLUMNS, *CLASSES]
        assert list(frames["frame"]) == list(range(1, len(frames) + 1))
        merged = expected.merge(frames, on="frame", suffixes=("_run", ""))
        assert len(merged) == len(expected)                   # the same frames
        np.testing.assert_array_equal(merged["label_id"], merged["label_run"])
        assert (frames["label"] == [CLASSES[k] for k in frames["label_id"]]).all()
        probs = frames[list(CLASSES)].to_numpy()
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-3)
        assert frames["face_found"].mean() > 0.5 and frames.loc[frames["face_found"], "x1"].notna().all()


def _without_audio(video: Path, out: Path) -> Path:
    """A copy of ``video`` with its video stream only (remuxed, not re-encoded)."""
    import av

    with av.open(str(video)) as source, av.open(str(out), "w") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            target.mux(packet)
    return out


@pytest.mark.slow
def test_predict_command_reports_bad_videos_and_goes_on(demo_run, tmp_path, capsys):
    cfg, root = demo_run
    bundle = export.export(cfg.run_dir, tmp_path / "bundle")
    video = sorted((root / "data" / "videos").rglob("*.mp4"))[0]
    silent = _without_audio(video, tmp_path / "silent.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(4000))
    out = tmp_path / "out"
    code = cli.main(["predict", str(bundle), str(broken), str(video), str(silent), "--out", str(out), "--overlay",
                     "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.mp4: not predicted" in captured.err and "1 of 3 video(s) not predicted: broken.mp4" in captured.err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{video.stem}.csv", f"{video.stem}_overlay.mp4", f"{video.stem}_overlay.png", "silent.csv",
         "silent_overlay.mp4", "silent_overlay.png"])
    lines = [line for line in captured.out.splitlines() if " frames, face on " in line]
    assert len(lines) == 2 and "no audio" in lines[1] and "no audio" not in lines[0]
    with_sound, silent_frames = pd.read_csv(out / f"{video.stem}.csv"), pd.read_csv(out / "silent.csv")
    assert len(with_sound) == len(silent_frames)
    assert (silent_frames["source"][silent_frames["face_found"]] == "face").all()
    assert set(silent_frames["source"]) <= {"face", "filled"}


def test_base_model_by_hub_id_from_the_local_cache(mini_bundle, tmp_path, monkeypatch):
    """A bundle without its encoder finds it by hub id in the Hugging Face cache, checked by checksum."""
    bundle = _copy(mini_bundle, tmp_path)
    hub_id = "facebook/wav2vec2-large-960h-lv60"
    manifest = json.loads((bundle / "bundle.json").read_text())
    encoder = manifest["audio"]["encoder"]
    manifest["audio"]["encoder"] = {**encoder, "hub_id": hub_id, "included": False}
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("base/")}
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    copied = bundle / encoder["folder"]
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BundleError, match="not in the local Hugging Face cache"):
        Predictor.from_bundle(bundle, device="cpu")
    snapshot = tmp_path / "cache" / "models--facebook--wav2vec2-large-960h-lv60" / "snapshots" / "abc123"
    shutil.copytree(copied, snapshot)
    shutil.rmtree(copied)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    predictor = Predictor.from_bundle(bundle, device="cpu")
    assert predictor.encoder.path == snapshot
    with open(snapshot / "model.safetensors", "r+b") as fh:
        fh.seek(-2, 2)
        fh.write(b"\x07\x07")
    with pytest.raises(BundleError, match=f"model.safetensors: changed since export .*audio encoder {hub_id}"):
        Predictor.from_bundle(bundle, device="cpu")
