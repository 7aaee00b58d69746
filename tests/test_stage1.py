import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kitlib.visual.backbones import build_backbone, load_backbone
from kitlib.visual.images import (FaceImageDataset, affectnet_items, affwild2_frame_items, class_folder_items,
                                  rafdb_items)
from kitlib.visual.padaug import PadAug
from kitlib.visual.stage1 import (MLPHead, MoEHead, build_head, class_weights_from_counts, mixup, smooth_targets,
                                  soft_target_cross_entropy, train_stage1)

TINY = dict(arch="vit_small_patch14_dinov2", img_size=28, overrides=dict(depth=2, embed_dim=32, num_heads=2))


def write_image(path, colour, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


# ----------------------------------------------------------------------------- heads and loss

def test_moe_head_matches_eqs_2_to_4():
    torch.manual_seed(0)
    head = MoEHead(6, num_classes=8, num_experts=3, hidden=5, dropout=0.1).eval()
    u = torch.randn(4, 6)
    logits, alpha = head(u, return_alpha=True)
    assert logits.shape == (4, 8) and alpha.shape == (4, 3)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(4))
    # manual eqs. 2-4
    ln = F.layer_norm(u, (6,), head.router_norm.weight, head.router_norm.bias)
    a = torch.softmax(ln @ head.router.weight.T + head.router.bias, -1)
    experts = []
    for e in head.experts:
        h = F.gelu(u @ e[0].weight.T + e[0].bias)
        experts.append(h @ e[2].weight.T + e[2].bias)
    u_tilde = sum(a[:, m:m + 1] * experts[m] for m in range(3))
    manual = F.layer_norm(u_tilde, (6,), head.norm.weight, head.norm.bias) @ head.classifier.weight.T \
        + head.classifier.bias
    torch.testing.assert_close(alpha, a)
    torch.testing.assert_close(logits, manual)
    head.train()                                              # dropout acts in training only
    assert not torch.allclose(head(u), logits)


def test_build_head_kinds():
    assert isinstance(build_head("moe", dim=8), MoEHead)
    mlp = build_head("mlp", dim=8, hidden=4)
    assert isinstance(mlp, MLPHead) and mlp(torch.randn(2, 8)).shape == (2, 8)
    with pytest.raises(ValueError, match="head_kind"):
        build_head("transformer", dim=8)


def test_loss_eq5():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 7, 4, 4])
    one_hot = smooth_targets(labels)
    torch.testing.assert_close(soft_target_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))
    smoothed = smooth_targets(labels, label_smoothing=0.1)
    torch.testing.assert_close(soft_target_cross_entropy(logits, smoothed),
                               F.cross_entropy(logits, labels, label_smoothing=0.1))
    weights = torch.arange(1.0, 9.0)
    manual = -(weights * smoothed * F.log_softmax(logits, -1)).sum(-1).mean()
    weighted = soft_target_cross_entropy(logits, smoothed, weights)
    torch.testing.assert_close(weighted, manual)
    assert not torch.allclose(weighted, soft_target_cross_entropy(logits, smoothed))
    # one-hot targets: each sample's loss is scaled by its class weight
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(soft_target_cross_entropy(logits, one_hot, weights),
                               (weights[labels] * per_sample).mean())


def test_mixup_and_class_weights():
    x, y = torch.randn(5, 3, 4, 4), smooth_targets(torch.tensor([0, 1, 2, 3, 4]))
    xm, ym, lam = mixup(x, y, 0.2, torch.Generator().manual_seed(0))
    assert 0 <= lam <= 1 and xm.shape == x.shape
    torch.testing.assert_close(ym.sum(-1), torch.ones(5))
    xm2, _, lam2 = mixup(x, y, 0.2, torch.Generator().manual_seed(0))
    assert lam2 == lam and torch.equal(xm, xm2)
    assert mixup(x, y, 0.0)[0] is x
    w = class_weights_from_counts([10, 30, 0, 60, 0, 0, 0, 0])
    assert w[2] == 0 and w[0] == pytest.approx(6 * w[3])
    assert (w * [10, 30, 0, 60, 0, 0, 0, 0]).sum() == pytest.approx(100)    # mean weight per sample is 1
    with pytest.raises(ValueError):
        class_weights_from_counts([0] * 8)


# ----------------------------------------------------------------------------- readers

def test_class_folder_items(tmp_path):
    write_image(tmp_path / "happy" / "a.png", (255, 0, 0))
    write_image(tmp_path / "NEUTRAL" / "b.jpg", (0, 0, 0))
    write_image(tmp_path / "Other" / "c.jpg", (0, 0, 0))
    (tmp_path / "Other" / "notes.txt").write_text("x")
    items = class_folder_items(tmp_path)
    assert sorted((p.name, c) for p, c in items) == [("a.png", 4), ("b.jpg", 0), ("c.jpg", 7)]
    write_image(tmp_path / "Bored" / "d.jpg", (0, 0, 0))
    with pytest.raises(ValueError, match="Bored"):
        class_folder_items(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        class_folder_items(tmp_path / "missing")


def test_affectnet_items(tmp_path):
    base = tmp_path / "train_set"
    for i, label in enumerate(range(8)):
        write_image(base / "images" / f"{i}.jpg", (i, i, i))
        (base / "annotations").mkdir(exist_ok=True)
        np.save(base / "annotations" / f"{i}_exp.npy", np.array(str(label)))
    items = affectnet_items(tmp_path, "train")
    # AffectNet 0 Neutral,1 Happy,2 Sad,3 Surprise,4 Fear,5 Disgust,6 Anger,7 Contempt -> ABAW
    assert [c for _, c in sorted(items, key=lambda it: int(it[0].stem))] == [0, 4, 5, 6, 3, 2, 1, 7]
    (base / "annotations" / "3_exp.npy").unlink()
    with pytest.raises(ValueError, match="3_exp.npy"):
        affectnet_items(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="val_set"):
        affectnet_items(tmp_path, "val")


def test_rafdb_items(tmp_path):
    lines = [f"train_{i:05d}.jpg {raf}" for i, raf in enumerate(range(1, 8), 1)] + ["test_0001.jpg 7"]
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        write_image(tmp_path / "Image" / "aligned" / line.split()[0].replace(".jpg", "_aligned.jpg"), (1, 2, 3))
    items = rafdb_items(tmp_path, "train")
    # RAF 1 Surprise,2 Fear,3 Disgust,4 Happiness,5 Sadness,6 Anger,7 Neutral -> ABAW
    assert [c for _, c in items] == [6, 3, 2, 4, 5, 1, 0]
    assert items[0][0].name == "train_00001_aligned.jpg"
    assert [c for _, c in rafdb_items(tmp_path, "test")] == [0]
    (tmp_path / "Image" / "aligned" / "train_00002_aligned.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="train_00002_aligned.jpg"):
        rafdb_items(tmp_path, "train")


def test_affwild2_frame_items(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "vid_left.txt").write_text("Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n3\n-1\n4\n5\n")
    for i in (1, 2, 3):                                       # frame 4 has no crop
        write_image(tmp_path / "frames" / "vid_left" / f"{i:05d}.jpg", (5, 5, 5))
    items = affwild2_frame_items(tmp_path / "frames", ann)
    assert [(p.name, c) for p, c in items] == [("00001.jpg", 3), ("00003.jpg", 4)]
    (ann / "other.txt").write_text("Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n1\n")
    with pytest.raises(FileNotFoundError, match="other"):
        affwild2_frame_items(tmp_path / "frames", ann)


def test_face_dataset_eval_and_train(tmp_path):
    write_image(tmp_path / "a.png", (255, 255, 255), size=(40, 30))
    items = [(tmp_path / "a.png", 4)]
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    x, y = FaceImageDataset(items, image_size=28, train=False, mean=mean, std=std)[0]
    assert x.shape == (3, 28, 28) and y == 4 and torch.allclose(x, torch.ones_like(x))
    torch.manual_seed(0)
    x, _ = FaceImageDataset(items, image_size=28, train=True, padaug=PadAug(p=1.0), mean=mean, std=std)[0]
    assert x.shape == (3, 28, 28) and (x == -1).all(0).any()      # black bar = (0 - 0.5) / 0.5
    (tmp_path / "bad.jpg").write_bytes(b"xx")
    with pytest.raises(ValueError, match="bad.jpg"):
        FaceImageDataset([(tmp_path / "bad.jpg", 0)], image_size=28, train=False, mean=mean, std=std)[0]


# ----------------------------------------------------------------------------- training

def test_train_stage1_tiny(tmp_path):
    colours = {4: (220, 40, 40), 5: (40, 40, 220)}            # two separable colour classes
    rng = np.random.default_rng(0)
    items = []
    for i in range(40):
        label = 4 if i % 2 else 5
        noise = rng.integers(-20, 20, 3)
        path = tmp_path / "img" / f"{i}.png"
        write_image(path, tuple(int(c) for c in np.clip(np.array(colours[label]) + noise, 0, 255)))
        items.append((path, label))
    torch.manual_seed(0)
    backbone = build_backbone(**TINY)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    out = tmp_path / "run" / "backbone.safetensors"
    result = train_stage1(backbone=backbone, train_items=items[:32], val_items=items[32:], head_kind="moe",
                          epochs=2, batch_size=8, lr_backbone=1e-3, lr_head=1e-2, padaug=PadAug(p=0.5),
                          n_frozen_blocks=1, image_size=28, device="cpu", out_path=out)
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) and 0 <= h["val_f1"] <= 1 for h in result["history"])
    assert result["best_val_f1"] == max(h["val_f1"] for h in result["history"])
    assert out.is_file() and (tmp_path / "run" / "backbone.safetensors.json").is_file()
    saved, record = load_backbone(out)
    assert record["head_kind"] == "moe" and record["best_epoch"] == result["best_epoch"]
    assert record["params"]["n_frozen_blocks"] == 1 and record["arch"] == TINY["arch"]
    assert json.loads((tmp_path / "run" / "backbone.safetensors.json").read_text())["sha256"] == result["sha256"]
    state = saved.state_dict()
    frozen = [k for k in state if k.startswith(("blocks.0.", "patch_embed.", "cls_token", "pos_embed"))]
    trained = [k for k in state if k.startswith("blocks.1.")]
    assert frozen and all(torch.equal(state[k], before[k]) for k in frozen)
    assert any(not torch.equal(state[k], before[k]) for k in trained)
    assert not any(k.startswith(("head.", "experts", "router")) for k in state)   # only the backbone is saved


def test_a_non_finite_loss_stops_training_at_the_next_host_sync(tmp_path, monkeypatch):
    """The running loss stays on the device between host reads (no sync per step); a NaN still stops the run."""
    from kitlib.visual import stage1

    items = []
    for i in range(32):
        path = tmp_path / f"{i}.png"
        write_image(path, (200, 0, 0) if i % 2 else (0, 0, 200))
        items.append((path, 4 if i % 2 else 5))
    calls = []

    def nan_from_step_3(logits, targets, weights=None):
        calls.append(1)
        loss = stage1.F.cross_entropy(logits, targets.argmax(-1))
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(stage1, "soft_target_cross_entropy", nan_from_step_3)
    monkeypatch.setattr(stage1, "SYNC_EVERY", 2)
    with pytest.raises(FloatingPointError, match="epoch 1, steps 2-3"):
        train_stage1(backbone=build_backbone(**TINY), train_items=items, val_items=items[:8], epochs=1,
                     batch_size=8, padaug=PadAug(), n_frozen_blocks=1, image_size=28, device="cpu",
                     out_path=tmp_path / "bb.safetensors")
    assert len(calls) == 4 and not (tmp_path / "bb.safetensors").exists()


@pytest.mark.gpu
def test_train_stage1_cuda_bf16(tmp_path):
    items = []
    for i in range(16):
        path = tmp_path / f"{i}.png"
        write_image(path, (200, 0, 0) if i % 2 else (0, 0, 200))
        items.append((path, 4 if i % 2 else 5))
    result = train_stage1(backbone=build_backbone(**TINY), train_items=items, val_items=items, epochs=1,
                          batch_size=4, padaug=PadAug(), n_frozen_blocks=1, image_size=28, device="cuda",
                          out_path=tmp_path / "bb.safetensors")
    assert np.isfinite(result["history"][0]["train_loss"])
