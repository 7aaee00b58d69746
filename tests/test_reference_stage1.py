"""The reference code's Stage I (params/abaw10.yaml): MoE head structure, LLRD learning rates per block,
weight-decay exclusions, trainable tokens, the merged AffectNet + RAF-DB set, the augmentation list and
PadAug as the authors draw it."""
import numpy as np
import pytest
import torch
from PIL import Image

from kitlib.visual.backbones import build_backbone, freeze_backbone_blocks
from kitlib.visual.images import affectnet_rafdb_items, face_transform
from kitlib.visual.padaug import ReferencePadAug, bar_fraction, build_padaug
from kitlib.visual.stage1 import (ReferenceMoEHead, Stage1Model, build_head, class_weights_from_counts, param_groups,
                                  train_stage1, train_tokens)

TINY = dict(arch="vit_small_patch14_dinov2", img_size=28, overrides=dict(depth=6, embed_dim=32, num_heads=2))


def write_image(path, colour, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_reference_moe_head_structure():
    head = build_head("moe", dim=1024, moe_structure="authors", dropout=0.6)
    assert isinstance(head, ReferenceMoEHead)
    d, hidden = 1024, 2048
    block = 2 * d + 2 * (d * hidden + hidden) + hidden * d + d
    router = 2 * d + (d * 256 + 256) + 2 * 256 + (256 * 4 + 4)
    expected = router + 4 * 3 * block + 2 * d + (d * 8 + 8)
    assert sum(p.numel() for p in head.parameters()) == expected == 75_859_724
    rates = [b.drop_path.p for b in head.experts[0]]
    assert rates == pytest.approx([0.0, 0.05, 0.1])
    assert head.drop.p == 0.6 and head.experts[0][0].drop.p == 0.6
    small = build_head("moe", dim=16, moe_structure="authors").eval()
    logits, alpha = small(torch.randn(3, 16), return_alpha=True)
    assert logits.shape == (3, 8) and torch.allclose(alpha.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match="moe_structure"):
        build_head("moe", dim=16, moe_structure="deep")


def test_llrd_learning_rates_per_block_and_weight_decay_exclusions():
    backbone = build_backbone(**TINY)
    freeze_backbone_blocks(backbone, 2)
    train_tokens(backbone)
    model = Stage1Model(backbone, build_head("moe", dim=32, moe_structure="authors"))
    groups = param_groups(model, lr_backbone=1e-5, lr_head=3e-4, weight_decay=0.05, layer_decay=0.85,
                          no_decay_bias_norm=True)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    blocks = backbone.blocks
    assert all(id(p) not in lr_of for i in (0, 1) for p in blocks[i].parameters())   # frozen blocks
    for i in range(2, 6):   # block 5 (the last) at 1e-5, each earlier one 0.85 times slower
        rates = {lr_of[id(p)] for p in blocks[i].parameters()}
        assert len(rates) == 1 and rates.pop() == pytest.approx(1e-5 * 0.85 ** (5 - i))
    assert lr_of[id(backbone.cls_token)] == 1e-5 and lr_of[id(backbone.pos_embed)] == 1e-5
    assert all(lr_of[id(p)] == 3e-4 for p in model.head.parameters())
    assert wd_of[id(blocks[5].attn.qkv.weight)] == 0.05 and wd_of[id(blocks[5].attn.qkv.bias)] == 0.0
    assert wd_of[id(blocks[5].norm1.weight)] == 0.0 and wd_of[id(model.head.classifier.weight)] == 0.05
    assert wd_of[id(model.head.in_norm.weight)] == 0.0
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(lr_of) == trainable
    assert not backbone.patch_embed.proj.weight.requires_grad
    # the kit's grouping: two learning rates, one weight decay
    kit = param_groups(model, lr_backbone=1e-5, lr_head=3e-4, weight_decay=0.05)
    assert sorted(g["lr"] for g in kit) == [1e-5, 3e-4] and {g["weight_decay"] for g in kit} == {0.05}


def test_class_weights_normalised_over_classes():
    counts = np.array([100, 50, 25, 25, 200, 100, 50, 10])
    w = class_weights_from_counts(counts, normalise="classes")
    assert w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(w * counts, (w * counts)[0])
    kit = class_weights_from_counts(counts)
    assert (kit * counts).sum() == pytest.approx(counts.sum())
    np.testing.assert_allclose(w / kit, (w / kit)[0])   # same shape, another scale


def test_merged_affectnet_rafdb_set(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        base = tmp_path / "AffectNet" / f"{split}_set"
        for i in range(n):
            write_image(base / "images" / f"{i}.jpg", (i, i, i))
            (base / "annotations").mkdir(exist_ok=True)
            np.save(base / "annotations" / f"{i}_exp.npy", np.array(str(i)))
    lines = ["train_00001.jpg 1", "train_00002.jpg 4", "test_0001.jpg 7", "test_0002.jpg 5", "test_0003.jpg 6"]
    raf = tmp_path / "RAF-DB"
    (raf / "EmoLabel").mkdir(parents=True)
    (raf / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        write_image(raf / "Image" / "aligned" / line.split()[0].replace(".jpg", "_aligned.jpg"), (1, 2, 3))
    train = affectnet_rafdb_items(tmp_path / "AffectNet", raf, "train")
    val = affectnet_rafdb_items(tmp_path / "AffectNet", raf, "val")
    assert [c for _, c in train] == [0, 4, 5, 6, 4] and len(train) == 5
    assert [p.parent.parent.name for p, _ in val[:2]] == ["val_set", "val_set"]
    assert [p.name for p, _ in val[2:]] == ["test_0001_aligned.jpg", "test_0002_aligned.jpg", "test_0003_aligned.jpg"]
    assert [c for _, c in val] == [0, 4, 0, 5, 1]


def test_rafdb_stage1_dataset_uses_its_test_split(tmp_path):
    from kitlib import config
    from kitlib.stages.common import stage1_items

    lines = ["train_00001.jpg 1", "test_0001.jpg 7"]
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        write_image(tmp_path / "Image" / "aligned" / line.split()[0].replace(".jpg", "_aligned.jpg"), (1, 2, 3))
    cfg = config.load("params/demo.yaml", overrides=["stage1.dataset=rafdb", f"stage1.images_root={tmp_path}"])
    train, val = stage1_items(cfg)
    assert [c for _, c in train] == [6] and [c for _, c in val] == [0]


def test_authors_transforms():
    img = Image.new("RGB", (40, 30), (120, 80, 60))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    evaluation = face_transform(image_size=28, train=False, padaug=None, mean=mean, std=std, recipe="authors")
    assert evaluation(img).shape == (3, 28, 28)
    names = [type(t).__name__ for t in evaluation.transforms]
    assert names[:2] == ["Resize", "CenterCrop"] and evaluation.transforms[0].size == [32]
    train = face_transform(image_size=28, train=True, padaug=ReferencePadAug(), mean=mean, std=std, recipe="authors")
    names = [type(t).__name__ for t in train.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomGrayscale", "RandomApply",
                     "ToImage", "ToDtype", "ReferencePadAug", "Normalize", "RandomErasing"]
    assert train.transforms[2].p == 0.8 and train.transforms[4].p == 0.1 and train.transforms[-1].p == 0.25
    assert train(img).shape == (3, 28, 28)


def test_reference_padaug_area_distribution():
    aug = ReferencePadAug()   # p 0.6, max area 0.2, min bar 0.03, shift 0.02
    g = torch.Generator().manual_seed(0)
    images = torch.ones(3, 224, 224)
    infos = [aug.sample(images, g)[1][0] for _ in range(3000)]
    applied = [i for i in infos if i.applied]
    assert 0.57 < len(applied) / len(infos) < 0.63
    corners = [i for i in applied if i.mode.startswith("corner")]
    assert 0.46 < len(corners) / len(applied) < 0.54
    areas = np.array([bar_fraction([i], 224, 224) for i in applied])
    side = np.array([bar_fraction([i], 224, 224) for i in applied if not i.mode.startswith("corner")])
    assert areas.max() <= 0.2 + 2 / 224             # an L covers at most 20 % (plus pixel rounding)
    assert side.min() >= 0.03 - 1 / 224 and side.max() <= 0.2 + 1 / 224
    assert 0.11 < areas.mean() < 0.15                # about 13 % black when applied (the kit's PadAug: ~21 %)
    shifts = np.array([abs(i.shift_x) * 224 for i in applied if i.left or i.right])
    assert set(np.round(shifts).astype(int)) <= {1, 2, 3, 4}
    # what is drawn: black bars, content moved away from the bar
    ramp = torch.arange(224.0).repeat(3, 224, 1)
    out, (info,) = aug.sample(ramp, g, force_mode="left")
    assert (out[:, :, :info.left] == 0).all()
    dx = round(info.shift_x * 224)
    assert 1 <= dx <= 4 and torch.equal(out[:, :, info.left:], ramp[:, :, info.left - dx:224 - dx])
    assert build_padaug("authors", p=0.6, max_frac=0.2).max_area_frac == 0.2


def test_train_stage1_with_the_reference_options(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for i in range(24):
        label = 4 if i % 2 else 5
        colour = np.array((220, 40, 40) if label == 4 else (40, 40, 220)) + rng.integers(-20, 20, 3)
        path = tmp_path / "img" / f"{i}.png"
        write_image(path, tuple(int(c) for c in np.clip(colour, 0, 255)))
        items.append((path, label))
    torch.manual_seed(0)
    backbone = build_backbone(**{**TINY, "overrides": dict(depth=2, embed_dim=32, num_heads=2)})
    pos_before = backbone.pos_embed.detach().clone()
    result = train_stage1(backbone=backbone, train_items=items[:16], val_items=items[16:], head_kind="moe", epochs=2,
                          batch_size=8, lr_backbone=1e-3, lr_head=1e-2, padaug=ReferencePadAug(), n_frozen_blocks=1,
                          image_size=28, device="cpu", out_path=tmp_path / "b.safetensors", moe_structure="authors",
                          head_dropout=0.6, layer_decay=0.85, no_decay_bias_norm=True, grad_clip=1.0,
                          lr_schedule="epoch_cosine", lr_min=1e-7, trainable_tokens=True, augment="authors",
                          class_weight_norm="classes")
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) for h in result["history"])
    assert not torch.equal(backbone.pos_embed.detach(), pos_before)   # the tokens trained
