"""Fusion training with the features resident on the device: the same batches, the same model as host batches."""
import functools

import numpy as np
import pytest
import torch

import kitlib.fusion.train as fusion_train
from kitlib.fusion import load_frame_table, predict_logits, train_head
from kitlib.fusion.train import _labelled_batch, _resident_batch, resident_table
from test_fusion import _fill, _track


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    rng = np.random.default_rng(2)
    root = tmp_path_factory.mktemp("resident")
    names = [f"t{i}" for i in range(5)]
    vis, aud, labels = _fill(root, names, [90, 120, 60, 100, 80], rng, centers=rng.normal(size=(8, 12)) * 3)
    table = load_frame_table([_track(t) for t in names], visual_store=vis, audio_store=aud, labels=labels)
    table.audio_mask[::7] = False  # filled audio: zeroed in both paths
    return table.subset(names[:3]), table.subset(names[3:])


def test_resident_batches_equal_host_batches(tables):
    train, _ = tables
    res = resident_table(train, torch.device("cpu"), on_cpu=True)
    assert resident_table(train, torch.device("cpu")) is None  # off on the CPU unless asked
    for rows in (np.array([0, 5, 17, 200]), np.array([[3, 4, 5, -1], [-1, -1, 0, 1]])):
        host = _labelled_batch(train, rows, torch.device("cpu"))
        device = _resident_batch(res, torch.from_numpy(rows))
        for a, b in zip(host, device):
            assert a.shape == b.shape and a.dtype == b.dtype
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("head", ["gated", "safe_xattn"])
def test_training_on_resident_features_matches_host_batches(tables, monkeypatch, head):
    train, val = tables
    options = dict(hidden=16, epochs=2, batch_size=32, device="cpu", seed=4, window=16, stride=8)
    host = train_head(head, train, val, resident_features=False, **options)
    monkeypatch.setattr(fusion_train, "resident_table", functools.partial(resident_table, on_cpu=True))
    resident = train_head(head, train, val, **options)
    for a, b in zip(host.history, resident.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_f1"] == pytest.approx(b["val_f1"])
    np.testing.assert_allclose(predict_logits(host.module, val, device="cpu", window=16, stride=8),
                               predict_logits(resident.module, val, device="cpu", window=16, stride=8,
                                              resident=resident_table(val, torch.device("cpu"), on_cpu=True)),
                               atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resident_training_on_cuda(tables):
    train, val = tables
    trained = train_head("gated", train, val, hidden=16, epochs=2, batch_size=32, device="cuda")
    assert next(trained.module.parameters()).device.type == "cuda"
    assert np.isfinite(trained.history[-1]["train_loss"])
