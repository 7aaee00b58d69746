import json

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from kitlib.backbone import (build_backbone, checkpoint_hash, feature_dim, freeze_backbone_blocks, input_mean_std,
                             load_backbone, save_backbone)

TINY = dict(arch="vit_small_patch14_dinov2", img_size=28, overrides=dict(depth=2, embed_dim=32, num_heads=2))


def tiny(**kw):
    torch.manual_seed(0)
    return build_backbone(**{**TINY, **kw}).eval()


def test_forward_shape_and_finite():
    model = tiny()
    u = model(torch.randn(3, 3, 28, 28))
    assert u.shape == (3, 32) == (3, feature_dim(model))
    assert torch.isfinite(u).all()
    mean, std = input_mean_std(model)
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))


def test_unknown_arch_and_bad_overrides():
    with pytest.raises(ValueError, match="unknown backbone arch"):
        build_backbone(arch="vit_tiny_dinov3")
    with pytest.raises(ValueError, match="img_size"):
        build_backbone(arch=TINY["arch"], overrides=dict(img_size=28))


def test_save_load_roundtrip(tmp_path):
    model = tiny()
    path = tmp_path / "bb" / "backbone.safetensors"
    save_backbone(model, path, record=dict(trained_by="test", best_val_f1=0.5, arch="must-not-win"))
    loaded, record = load_backbone(path)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert record["arch"] == TINY["arch"] and record["img_size"] == 28 and record["best_val_f1"] == 0.5
    side = json.loads((tmp_path / "bb" / "backbone.safetensors.json").read_text())
    assert side["sha256"] == checkpoint_hash(path) and len(side["sha256"]) == 16
    assert not list((tmp_path / "bb").glob("*.partial"))
    # a reloaded model can be saved again and keeps its build record
    save_backbone(loaded, tmp_path / "again.safetensors", record={})
    assert load_backbone(tmp_path / "again.safetensors")[1]["overrides"] == TINY["overrides"]


def test_weights_file_timm_keys_and_folder(tmp_path):
    src = tiny()
    torch.manual_seed(1)
    dst_random = build_backbone(**TINY)
    save_file(src.state_dict(), str(tmp_path / "model.safetensors"))
    for weights in (tmp_path / "model.safetensors", tmp_path):
        dst = build_backbone(**TINY, weights=weights)
        assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    assert not torch.equal(dst_random.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_original_dinov2_keys_resample_pos_embed(tmp_path):
    """An original-DINOv2 .pth (mask_token, chunked blocks, bigger grid, teacher wrapper) loads and resamples."""
    src = tiny(img_size=56)                                  # 4x4 grid, like the 37x37 grid of a 518 checkpoint
    state = {k: v.clone() for k, v in src.state_dict().items()}
    original = {"mask_token": torch.zeros(1, 32)}
    for k, v in state.items():
        original[k.replace("blocks.1.", "blocks.0.1.").replace("blocks.0.norm", "blocks.0.0.norm")
                 .replace("blocks.0.attn", "blocks.0.0.attn").replace("blocks.0.ls", "blocks.0.0.ls")
                 .replace("blocks.0.mlp", "blocks.0.0.mlp")] = v
    assert "blocks.0.1.attn.qkv.weight" in original and "blocks.0.0.mlp.fc1.weight" in original
    torch.save({"teacher": {f"backbone.{k}": v for k, v in original.items()}}, tmp_path / "dinov2.pth")
    dst = build_backbone(**TINY, weights=tmp_path / "dinov2.pth")
    assert dst.pos_embed.shape == (1, 1 + 4, 32)
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=[2, 2], old_size=[4, 4], num_prefix_tokens=1)
    torch.testing.assert_close(dst.pos_embed.data, expected)
    torch.testing.assert_close(dst.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(dst.blocks[0].mlp.fc1.weight, state["blocks.0.mlp.fc1.weight"])
    assert torch.isfinite(dst(torch.randn(1, 3, 28, 28))).all()


def test_missing_and_wrong_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_backbone(**TINY, weights=tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="0 weight files"):
        build_backbone(**TINY, weights=tmp_path)
    save_file({"cls_token": torch.zeros(1, 1, 32)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="lacks"):
        build_backbone(**TINY, weights=tmp_path / "partial.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        build_backbone(**TINY, weights=tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="no 'kit_record'"):
        load_backbone(tmp_path / "partial.safetensors")


def test_freeze_flags():
    model = build_backbone(arch="vit_small_patch14_reg4_dinov2", img_size=28,
                           overrides=dict(depth=3, embed_dim=32, num_heads=2))
    freeze_backbone_blocks(model, 2)
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not model.cls_token.requires_grad and not model.pos_embed.requires_grad and not model.reg_token.requires_grad
    assert not any(p.requires_grad for b in model.blocks[:2] for p in b.parameters())
    assert all(p.requires_grad for p in model.blocks[2].parameters()) and model.norm.weight.requires_grad
    freeze_backbone_blocks(model, 0)                          # re-freezing redefines the trainable set
    assert all(p.requires_grad for p in model.blocks[0].parameters()) and not model.cls_token.requires_grad
    with pytest.raises(ValueError, match="3 blocks"):
        freeze_backbone_blocks(model, 4)
