"""The pipelined visual extractor writes what the serial one writes, resumes, reports errors, bounds memory;
Stage I's loader settings."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from kitlib.faces import build_detector
from kitlib.faces.video import iter_frames
from kitlib.store import FeatureStore
from kitlib.visual.extract import REPORT_COLUMNS
from kitlib.visual.pipelined import StageTimes, _Decoder, extract_visual_features_pipelined, prepare_backbone
from kitlib.visual.stage1 import loader_options
from test_visual import MEAN, N_FRAMES, SCALES, run, tiny_backbone, track, write_video


def run_pipelined(tracks, store, **overrides):
    if "detector" not in overrides:
        overrides["detector"] = build_detector("opencv-haar")
    args = dict(crop_scales=SCALES, image_size=28, mean=MEAN,
                std=(0.229, 0.224, 0.225), batch_size=16, max_gap=3, device=torch.device("cpu"), decode_batch=8,
                manifest={"run": "test"}, decode_workers=2, queue_batches=1)
    args.update(overrides)
    return extract_visual_features_pipelined(tracks, store, tiny_backbone(), **args)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    corrupt = root / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return {"face": write_video(root / "face.mp4", blank={9, 10}), "empty": write_video(root / "empty.mp4", with_face=False),
            "long": write_video(root / "long.mp4", n_frames=21, blank={2, 3, 4, 5, 6, 7}), "broken": corrupt}


def test_pipelined_writes_the_serial_files(tmp_path, videos):
    tracks = [track("face_left", videos["face"]), track("face_right", videos["face"]),
              track("broken", videos["broken"]), track("empty", videos["empty"]), track("long", videos["long"])]
    serial, piped = FeatureStore(tmp_path / "serial", "visual"), FeatureStore(tmp_path / "piped", "visual")
    report_s = run(tracks, serial)
    times = StageTimes()
    report_p = run_pipelined(tracks, piped, stage_times=times,
                             detector_factory=lambda: build_detector("opencv-haar"))  # detection in the workers

    assert list(report_p.columns) == list(REPORT_COLUMNS)
    cols = ["txtid", "status", "frames", "detected", "followed", "bridged", "missing"]
    a = report_s[cols].sort_values("txtid").reset_index(drop=True)
    b = report_p[cols].sort_values("txtid").reset_index(drop=True)
    assert a.drop(columns="status").equals(b.drop(columns="status"))
    assert a["status"].str[:6].tolist() == b["status"].str[:6].tolist()  # the broken video is an error in both
    assert piped.keys() == serial.keys() == ["empty", "face_left", "face_right", "long"]
    for key in serial.keys():
        s, p = serial.load(key), piped.load(key)
        assert set(s) == set(p)
        for name in s:
            assert s[name].dtype == p[name].dtype and s[name].shape == p[name].shape, (key, name)
            np.testing.assert_allclose(s[name].astype(np.float64), p[name].astype(np.float64), atol=1e-3,
                                       err_msg=f"{key}/{name}")
    assert piped.read_manifest()["feature_dim"] == serial.read_manifest()["feature_dim"] == 32
    assert times.videos == 3 and times.frames == 2 * N_FRAMES + 21  # the broken video never reaches the tracker


def test_pipelined_resumes_and_skips_done_tracks(tmp_path, videos):
    store = FeatureStore(tmp_path, "visual")
    run_pipelined([track("face", videos["face"])], store)
    before = store.path("face").stat().st_mtime_ns
    report = run_pipelined([track("face", videos["face"]), track("empty", videos["empty"])], store)
    assert report.set_index("txtid")["status"].to_dict() == {"face": "skipped (done)", "empty": "no face"}
    assert store.path("face").stat().st_mtime_ns == before
    assert not list(store.root.glob("*.partial"))


def test_a_failing_write_is_that_video_s_error(tmp_path, videos, monkeypatch):
    store = FeatureStore(tmp_path, "visual")
    real = store.save
    monkeypatch.setattr(store, "save", lambda key, **a: (_ for _ in ()).throw(OSError("disk full"))
                        if key == "face" else real(key, **a))
    report = run_pipelined([track("face", videos["face"]), track("long", videos["long"])], store)
    status = report.set_index("txtid")["status"]
    assert status["face"] == "error: OSError: disk full" and status["long"] == "ok"
    assert store.keys() == ["long"]


def test_decoder_queue_is_bounded_and_cancellable(videos):
    decoder = _Decoder(videos["long"], decode_batch=4, max_batches=2, pin=False)
    worker = threading.Thread(target=decoder.run, daemon=True)
    worker.start()
    info = decoder.info()
    assert info.n_frames == 21
    worker.join(timeout=1.0)
    assert worker.is_alive() and decoder.queue.qsize() == 2  # waits: at most 2 batches decoded ahead
    first = next(decoder.batches(torch.device("cpu"), StageTimes()))
    expected = next(iter_frames(videos["long"], batch_size=4))
    np.testing.assert_array_equal(first.frames, expected.frames)
    decoder.cancel.set()
    worker.join(timeout=5.0)
    assert not worker.is_alive()


def test_decoder_hands_a_decode_error_to_the_consumer(videos):
    decoder = _Decoder(videos["broken"], decode_batch=4, max_batches=1, pin=False)
    decoder.run()
    with pytest.raises(Exception, match="broken.mp4"):
        decoder.info()


def test_prepare_backbone_keeps_fp32_when_given_fp32():
    """The device path is the caller's (stages.common.amp_dtype: float32 on the CPU unless run.amp_on_cpu);
    the half path on the CPU is tested in test_device_dtypes.py."""
    model, input_dtype, autocast = prepare_backbone(tiny_backbone(), device=torch.device("cpu"),
                                                    dtype=torch.float32, weights_bf16=True, compile=False)
    assert input_dtype == torch.float32 and not autocast
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pipelined_on_cuda_bf16_matches_cpu(tmp_path, videos):
    cpu, gpu = FeatureStore(tmp_path / "cpu", "visual"), FeatureStore(tmp_path / "gpu", "visual")
    tracks = [track("face", videos["face"]), track("long", videos["long"])]
    # the same detector (on the CPU) for both runs: the backbone's bf16 on CUDA is what is compared. CenterFace,
    # since GPU images may carry OpenCV 5, which has no Haar cascades (seen on the H200 image, 2026-12-04)
    detector = build_detector("centerface")
    run_pipelined(tracks, cpu, detector=detector)
    run_pipelined(tracks, gpu, detector=detector, device=torch.device("cuda"), dtype=torch.bfloat16)
    for key in ("face", "long"):
        a, b = cpu.load(key), gpu.load(key)
        np.testing.assert_array_equal(a["status"], b["status"])
        fa, fb = a["features"][a["mask"]].astype(np.float32), b["features"][b["mask"]].astype(np.float32)
        cos = (fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1) + 1e-12)
        assert cos.min() > 0.98, cos.min()


def test_loader_options():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert loader_options(0, device=cpu) == {"num_workers": 0, "pin_memory": False}
    options = loader_options(None, device=cuda, prefetch_factor=6)
    assert options["num_workers"] >= 1 and options["pin_memory"] and options["persistent_workers"]
    assert options["prefetch_factor"] == 6
    assert not loader_options(3, device=cpu, persistent=False)["persistent_workers"]
    with pytest.raises(ValueError, match="num_workers"):
        loader_options(-1, device=cpu)


def test_the_extractor_is_a_param():
    from kitlib import config
    from kitlib.stages.s03_crop_extract import extract_visual

    assert config.load("params/base.yaml").visual.extractor == "serial"  # the baseline stays the default
    cfg = config.load("params/demo.yaml", overrides=["visual.extractor=fast"])
    with pytest.raises(ValueError, match="pipelined"):
        extract_visual(cfg, None)


@pytest.mark.slow
def test_sharded_extraction_runs_the_pipelined_extractor(tmp_path):
    """Two gloo ranks of ``kitlib.tools.distributed extract`` with ``visual.extractor: pipelined``."""
    import os
    import subprocess
    import sys

    import pandas as pd

    from kitlib import config, data
    from kitlib.stages import common
    from test_distributed import REPO, _demo_with_boxes, _overrides

    overrides = [*_overrides(tmp_path), "visual.extractor=pipelined", "visual.decode_workers=2"]
    cfg = config.load("params/demo.yaml", "params/tiny.yaml", overrides=overrides)
    _demo_with_boxes(cfg, tmp_path)
    args = [sys.executable, "-m", "kitlib.tools.distributed", "extract", "params/demo.yaml", "params/tiny.yaml",
            *overrides, "--kind", "visual"]
    port = 29900 + os.getpid() % 90
    procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
             for rank in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{out[-3000:]}"
    index = data.discover(cfg.path(cfg.data.root), videos_dir=cfg.data.videos_dir,
                          annotations_dir=cfg.data.annotations_dir, test_names=cfg.data.test_names)
    store = common.feature_store(cfg, "visual")
    assert store.keys() == sorted(t.txtid for t in index.tracks)
    merged = pd.read_csv(cfg.run_dir / "reports" / "visual_extraction.csv")
    assert not merged["status"].str.startswith("error").any() and store.read_manifest()["shards"] == 2
