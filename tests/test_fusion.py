"""Stage II fusion heads (eqs. 9-12), the frame table, training (eq. 13) and Table 3's evaluation."""
from pathlib import Path

import numpy as np
import pytest
import torch

from kitlib.data import Track
from kitlib.fusion import (HEADS, build_head, class_weights_for, count_parameters, evaluate_heads,
                           load_frame_table, predict_logits, split_by_track, train_head)
from kitlib.store import FeatureStore

DV, DA = 12, 6


@pytest.mark.parametrize("name", list(HEADS))
def test_head_forward_backward(name):
    torch.manual_seed(0)
    head = build_head(name, visual_dim=DV, audio_dim=DA, hidden=16, dropout=0.1)
    visual, audio = torch.randn(5, DV, requires_grad=True), torch.randn(5, DA)
    logits = head(visual, audio, torch.tensor([True, False, True, True, False]))
    assert logits.shape == (5, 8)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    grads = [p.grad for p in head.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["v_only", "gated", "concat_mlp", "cross_attention"])
def test_masked_frames_ignore_visual_input(name):
    torch.manual_seed(0)
    head = build_head(name, visual_dim=DV, audio_dim=DA, hidden=16).eval()
    audio, mask = torch.randn(4, DA), torch.tensor([False, True, False, True])
    out1 = head(torch.randn(4, DV), audio, mask)
    out2 = head(torch.randn(4, DV) * 10, audio, mask)
    torch.testing.assert_close(out1[~mask], out2[~mask])
    assert not torch.allclose(out1[mask], out2[mask])


def test_gated_matches_eqs_9_to_12():
    torch.manual_seed(0)
    head = build_head("gated", visual_dim=DV, audio_dim=DA, hidden=16).eval()
    f_v, f_a = torch.randn(3, DV), torch.randn(3, DA)
    lin = torch.nn.functional.linear
    z_v = lin(f_v, head.proj_v.weight, head.proj_v.bias)
    z_a = lin(f_a, head.proj_a.weight, head.proj_a.bias)
    g = torch.sigmoid(lin(torch.cat([f_v, f_a], 1), head.gate.weight, head.gate.bias))
    h = g * z_v + (1 - g) * z_a
    norm, out = head.classifier[0], head.classifier[2]                      # eq. 12: LN, dropout, W_o
    h = (h - h.mean(1, keepdim=True)) / torch.sqrt(h.var(1, unbiased=False, keepdim=True) + norm.eps)
    h = h * norm.weight + norm.bias
    expected = lin(h, out.weight, out.bias)
    torch.testing.assert_close(head(f_v, f_a, torch.ones(3, dtype=torch.bool)), expected)


@pytest.mark.parametrize("name,structure,old_names", [
    ("gated", "kit", {"classifier.0.": "norm.", "classifier.2.": "out."}),
    ("bilinear", "authors", {"classifier.": "post."})])
def test_checkpoints_of_earlier_kits_still_load(name, structure, old_names):
    """Heads built on one base renamed a few layers: a state dict saved under the old names loads the same."""
    torch.manual_seed(0)
    head = build_head(name, visual_dim=DV, audio_dim=DA, hidden=16, structure=structure).eval()
    old = {}
    for key, value in head.state_dict().items():
        prefix = next((p for p in old_names if key.startswith(p)), None)
        old[old_names[prefix] + key[len(prefix):] if prefix else key] = value
    assert set(old) != set(head.state_dict())
    fresh = build_head(name, visual_dim=DV, audio_dim=DA, hidden=16, structure=structure).eval()
    fresh.load_state_dict(old)
    f_v, f_a, mask = torch.randn(3, DV), torch.randn(3, DA), torch.ones(3, dtype=torch.bool)
    torch.testing.assert_close(fresh(f_v, f_a, mask), head(f_v, f_a, mask))


def test_count_parameters_and_unknown_head():
    head = build_head("concat_linear", visual_dim=DV, audio_dim=DA)
    assert count_parameters(head) == (DV + DA) * 8 + 8
    assert count_parameters(build_head("concat_linear", visual_dim=1024, audio_dim=1024)) == 16392
    with pytest.raises(ValueError, match="gated"):
        build_head("transformer", visual_dim=DV, audio_dim=DA)


def test_class_weights():
    y = np.array([0] * 9 + [1] * 1 + [-1] * 5)
    w = class_weights_for(y, "inverse")
    assert w[0] == pytest.approx(0.2) and w[1] == pytest.approx(1.8) and w[2:].sum() == 0
    assert np.all(class_weights_for(y, None) == 1)
    with pytest.raises(ValueError, match="class_weights"):
        class_weights_for(y, "focal")


# ----------------------------------------------------------------------------- data


def _track(txtid: str) -> Track:
    return Track(txtid=txtid, videoid=txtid, split="Train_Set", video_path=Path(f"{txtid}.mp4"),
                 labels_path=None, side=None)


def _fill(root: Path, txtids, lengths, rng, *, centers=None, vdim=DV, adim=DA):
    """Feature stores whose visual features carry the label (class centres + noise)."""
    vis, aud = FeatureStore(root, "visual"), FeatureStore(root, "audio")
    centers = rng.normal(size=(8, vdim)) * 3 if centers is None else centers
    labels = {}
    for txtid, n in zip(txtids, lengths):
        y = np.repeat(rng.integers(0, 8, size=n // 10 + 1), 10)[:n]
        y[rng.random(n) < 0.1] = -1
        fi = np.arange(1, n + 1)
        mask = rng.random(n) > 0.05
        v = centers[np.maximum(y, 0)] + rng.normal(size=(n, vdim))
        vis.save(txtid, frame_index=fi, features=v, mask=mask, features_by_scale=np.stack([v, v * 2], 1))
        aud.save(txtid, frame_index=fi, features=rng.normal(size=(n, adim)), mask=np.ones(n, bool))
        labels[txtid] = y
    return vis, aud, labels


def test_load_frame_table(tmp_path, rng):
    vis, aud, labels = _fill(tmp_path, ["a", "b_left"], [30, 17], rng)
    table = load_frame_table([_track("a"), _track("b_left")], visual_store=vis, audio_store=aud, labels=labels)
    assert len(table) == 47 and table.txtids == ("a", "b_left")
    assert table.visual.dtype == np.float16 and table.visual_dim == DV and table.audio_dim == DA
    np.testing.assert_array_equal(table.labels[30:], labels["b_left"])
    parts = split_by_track(table, np.arange(47 * 8, dtype=np.float32).reshape(47, 8))
    assert parts["b_left"].shape == (17, 8) and parts["b_left"][0, 0] == 30 * 8
    second = load_frame_table([_track("a")], visual_store=vis, audio_store=None, labels=None,
                              visual_key=lambda d: d["features_by_scale"][:, 1])
    np.testing.assert_array_equal(second.visual, vis.load("a")["features_by_scale"][:, 1])
    assert second.audio_dim == 0 and not second.audio_mask.any() and (second.labels == -1).all()
    sub = table.subset(["b_left"])
    np.testing.assert_array_equal(sub.visual, table.visual[30:])


def test_load_frame_table_errors(tmp_path, rng):
    vis, aud, labels = _fill(tmp_path, ["a"], [20], rng)
    with pytest.raises(FileNotFoundError, match=r"'ghost'.*visual"):
        load_frame_table([_track("a"), _track("ghost")], visual_store=vis, audio_store=aud, labels=None)
    FeatureStore(tmp_path, "visual").save("wide", frame_index=np.arange(1, 6), features=np.zeros((5, DV + 1)),
                                          mask=np.ones(5, bool))
    FeatureStore(tmp_path, "audio").save("wide", frame_index=np.arange(1, 6), features=np.zeros((5, DA)),
                                         mask=np.ones(5, bool))
    with pytest.raises(ValueError, match=r"'wide'.*dim 13.*'a' has 12"):
        load_frame_table([_track("a"), _track("wide")], visual_store=vis, audio_store=aud, labels=None)
    with pytest.raises(ValueError, match="labels"):
        load_frame_table([_track("a")], visual_store=vis, audio_store=aud, labels={"a": np.zeros(3, int)})


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("fusion")
    names = [f"t{i}" for i in range(6)]
    centers = rng.normal(size=(8, DV)) * 3
    vis, aud, labels = _fill(root, names, [200] * 6, rng, centers=centers)
    table_all = load_frame_table([_track(t) for t in names], visual_store=vis, audio_store=aud, labels=labels)
    return table_all.subset(names[:4]), table_all.subset(names[4:]), table_all


def test_train_head_separable(tables):
    train, val, _ = tables
    trained = train_head("gated", train, val, hidden=32, dropout=0.1, epochs=40, batch_size=64, lr=3e-3,
                         patience=3, device="cpu")
    assert trained.best_val_f1 > 0.9
    assert len(trained.history) < 40  # early-stopped
    assert trained.best_epoch == max(trained.history, key=lambda r: r["val_f1"])["epoch"]
    logits = predict_logits(trained.module, val, batch_size=100, device="cpu")
    assert logits.shape == (len(val), 8) and logits.dtype == np.float32
    from kitlib.metrics import macro_f1
    assert macro_f1(val.labels, logits.argmax(1)) == pytest.approx(trained.best_val_f1)


def test_train_head_is_seeded(tables):
    train, val, _ = tables
    runs = [train_head("concat_linear", train, val, hidden=8, epochs=2, batch_size=128, device="cpu", seed=3)
            for _ in range(2)]
    assert runs[0].history[-1]["train_loss"] == runs[1].history[-1]["train_loss"]


def test_evaluate_heads_with_folds(tables):
    train, val, table_all = tables
    folds = {t: i % 3 + 1 for i, t in enumerate(table_all.txtids)}
    result = evaluate_heads(["concat_linear", "gated"], train=train, val=val, folds=folds, table_all=table_all,
                            hidden=16, epochs=3, batch_size=128, device="cpu")
    assert list(result.table.columns) == ["head", "params", "official_val_f1", "best_epoch", "cv_protocol",
                                          "cv_mean_f1", "cv_std_f1", "fold_1", "fold_2", "fold_3"]
    assert set(result.table["cv_protocol"]) == {"kit"}
    assert list(result.table["head"]) == ["concat_linear", "gated"]
    assert result.val_logits["gated"].shape == (len(val), 8)
    assert result.fold_logits["gated"].shape == (len(table_all), 8)
    row = result.table.iloc[1]
    assert row["cv_mean_f1"] == pytest.approx(np.mean([row["fold_1"], row["fold_2"], row["fold_3"]]))


@pytest.mark.gpu
def test_train_head_cuda(tables):
    train, val, _ = tables
    trained = train_head("cross_attention", train, val, hidden=16, epochs=2, batch_size=64, device="cuda")
    assert next(trained.module.parameters()).device.type == "cuda"


@pytest.mark.parametrize("structure", ["kit", "authors"])
def test_gated_head_draws_its_initial_weights_in_the_order_of_earlier_kits(structure):
    """A seed gives the same gated head as before the heads shared a base: P_v, P_a, the gate, then W_o
    (a change of order changes every demo score)."""
    from torch import nn

    from kitlib.fusion.heads import build_head

    torch.manual_seed(0)
    head = build_head("gated", visual_dim=6, audio_dim=5, hidden=4, dropout=0.1, num_classes=8, structure=structure)
    torch.manual_seed(0)
    proj_v, proj_a = nn.Linear(6, 4), nn.Linear(5, 4)
    gate = nn.Linear(11, 4) if structure == "kit" else nn.Sequential(nn.Linear(11, 4), nn.ReLU(), nn.Linear(4, 4))
    out = nn.Linear(4, 8)
    expected = [proj_v.weight, proj_a.weight, *(m.weight for m in gate.modules() if isinstance(m, nn.Linear)), out.weight]
    got = [head.proj_v.weight, head.proj_a.weight,
           *(m.weight for m in head.gate.modules() if isinstance(m, nn.Linear)), head.classifier[-1].weight]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
