import json
import re

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from kitlib.visual.backbones import (backbone_family, build_backbone, checkpoint_hash, feature_dim,
                                     freeze_backbone_blocks, input_mean_std, load_backbone, save_backbone)

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


# ------------------------------------------------------------------ BEiT (seed 004) and CLIP ViT-L/14 (seed 003)
SMALL = dict(depth=2, embed_dim=32, num_heads=2)
FAMILY_TINY = {
    "dinov2": TINY,
    "beit": dict(arch="beit_large_patch16_224", img_size=32, overrides=SMALL),
    "clip": dict(arch="vit_large_patch14_clip_224", img_size=28, overrides=SMALL),
}
FAMILY_MEAN_STD = {
    "dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "beit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


def perturbed(model):
    """Random weights everywhere (HF zero-inits biases and bias tables, which would hide swapped keys)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("family", ["dinov2", "beit", "clip"])
def test_family_build_forward_save_load(family, tmp_path):
    spec = FAMILY_TINY[family]
    assert backbone_family(spec["arch"]) == family
    model = tiny(**spec)
    size = spec["img_size"]
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        u = model(x)
    assert u.shape == (3, 32) == (3, feature_dim(model)) and torch.isfinite(u).all()
    mean, std = input_mean_std(model)
    assert mean == pytest.approx(FAMILY_MEAN_STD[family][0]) and std == pytest.approx(FAMILY_MEAN_STD[family][1])
    path = save_backbone(model, tmp_path / "backbone.safetensors", record=dict(trained_by="test"))
    loaded, record = load_backbone(path)
    assert record["arch"] == spec["arch"] and record["overrides"] == SMALL
    with torch.no_grad():
        assert torch.equal(loaded(x), u)
    assert input_mean_std(loaded) == input_mean_std(model)       # CLIP keeps CLIP's statistics after a reload
    save_file(model.state_dict(), str(tmp_path / "timm.safetensors"))   # timm's own released format
    again = build_backbone(**spec, weights=tmp_path / "timm.safetensors").eval()
    with torch.no_grad():
        assert torch.equal(again(x), u)


def test_unknown_family_names_the_supported_ones():
    with pytest.raises(ValueError, match="beit_large_patch16_224.*vit_large_patch14_clip_224"):
        build_backbone(arch="resnet50")
    with pytest.raises(ValueError, match="pretrained_cfg_overlay"):
        build_backbone(arch="vit_large_patch14_clip_224", overrides=dict(pretrained_cfg_overlay={}))


def test_beit_original_checkpoint_and_rel_pos_resampling(tmp_path):
    """An original (unilm) BEiT .pth: ``model`` wrapper, relative_position_index buffers, a head."""
    spec = FAMILY_TINY["beit"]
    src = perturbed(tiny(**spec))
    state = {k: v.clone() for k, v in src.state_dict().items()}
    window = src.blocks[0].attn.window_size
    original = {**state, "head.weight": torch.zeros(1000, 32), "head.bias": torch.zeros(1000),
                **{f"blocks.{i}.attn.relative_position_index": torch.zeros((window[0] * window[1] + 1,) * 2,
                                                                          dtype=torch.long) for i in range(2)}}
    torch.save({"model": original}, tmp_path / "beit_large_patch16_224_pt22k_ft22kto1k.pth")
    dst = build_backbone(**spec, weights=tmp_path / "beit_large_patch16_224_pt22k_ft22kto1k.pth").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))
    bigger = build_backbone(**{**spec, "img_size": 64}, weights=tmp_path / "beit_large_patch16_224_pt22k_ft22kto1k.pth")
    table = bigger.blocks[0].attn.relative_position_bias_table
    assert table.shape == ((2 * 4 - 1) ** 2 + 3, 2) != state["blocks.0.attn.relative_position_bias_table"].shape
    assert torch.isfinite(bigger(torch.randn(1, 3, 64, 64))).all()


def _hf_clip(tmp_path, *, hidden_act="quick_gelu"):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(projection_dim=8,
                        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=16),
                        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=28, patch_size=14, hidden_act=hidden_act))
    model = perturbed(CLIPModel(config))
    model.save_pretrained(tmp_path / "clip-vit-hf")
    return model, tmp_path / "clip-vit-hf"


def test_hf_clip_folder_matches_transformers(tmp_path):
    """The openai/clip-vit-large-patch14 folder layout (full CLIPModel, QuickGELU) gives HF's pooled output."""
    hf, folder = _hf_clip(tmp_path)
    spec = dict(FAMILY_TINY["clip"], arch="vit_large_patch14_clip_quickgelu_224")
    model = build_backbone(**spec, weights=folder).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf.vision_model(pixel_values=x).pooler_output, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="vit_large_patch14_clip_quickgelu_224"):
        build_backbone(**FAMILY_TINY["clip"], weights=folder)   # GELU arch + QuickGELU weights: refused


def test_openai_clip_original_layout(tmp_path):
    """The original OpenAI / open_clip state dict (``visual.*``, ``proj``) loads through timm's converter."""
    src = perturbed(tiny(**FAMILY_TINY["clip"]))
    original = _openai_layout(src)
    original["logit_scale"] = torch.tensor(4.6)
    torch.save({"state_dict": original}, tmp_path / "ViT-L-14.pt")
    dst = build_backbone(**FAMILY_TINY["clip"], weights=tmp_path / "ViT-L-14.pt").eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def _openai_layout(model):
    """A timm CLIP tower's weights under OpenAI's names (``visual.*``), as OpenAI's ``clip`` package holds them."""
    swaps = [("patch_embed.proj", "conv1"), ("pos_embed", "positional_embedding"),
             ("blocks.", "transformer.resblocks."),
             ("norm_pre", "ln_pre"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"),
             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"), ("norm1", "ln_1"), ("norm2", "ln_2")]
    original = {}
    for k, v in model.state_dict().items():
        if k == "cls_token":
            k, v = "class_embedding", v.flatten()
        elif k == "pos_embed":
            v = v[0]
        elif k.startswith("norm."):
            k = k.replace("norm.", "ln_post.")
        for a, b in swaps:
            k = k.replace(a, b)
        original[f"visual.{k}"] = v.clone()
    original["visual.proj"] = torch.randn(32, 8)
    return original


def _torchscript_archive(state, path):
    """A TorchScript file holding ``state`` under its dotted names: the format of OpenAI's released ``.pt``."""
    root = torch.nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, torch.nn.Module())
            module = getattr(module, name)
        module.register_buffer(leaf, value)
    torch.jit.script(root).save(str(path))
    return path


def test_openai_torchscript_pt_needs_the_quickgelu_arch(tmp_path):
    """OpenAI's ``ViT-L-14.pt`` (a TorchScript archive, QuickGELU): read, and refused by a GELU arch with the fix named."""
    spec = dict(FAMILY_TINY["clip"], arch="vit_large_patch14_clip_quickgelu_224")
    src = perturbed(tiny(**spec))
    state = {**_openai_layout(src), "input_resolution": torch.tensor(28), "context_length": torch.tensor(77),
             "vocab_size": torch.tensor(64), "logit_scale": torch.tensor(4.6)}
    path = _torchscript_archive(state, tmp_path / "ViT-L-14.pt")
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(build_backbone(**spec, weights=path).eval()(x), src(x))
    with pytest.raises(ValueError, match="OpenAI CLIP.*set the arch to vit_large_patch14_clip_quickgelu_224"):
        build_backbone(**FAMILY_TINY["clip"], weights=path)
    torch.save(state, tmp_path / "openai_state_dict.pt")        # the same weights as a plain state dict
    with pytest.raises(ValueError, match="OpenAI CLIP"):
        build_backbone(**FAMILY_TINY["clip"], weights=tmp_path / "openai_state_dict.pt")


def test_open_clip_folder_says_its_activation(tmp_path):
    """An open_clip folder's open_clip_config.json (quick_gelu true / absent) decides the arch."""
    src = perturbed(tiny(**FAMILY_TINY["clip"]))                       # GELU (LAION / DFN weights)
    folder = tmp_path / "open_clip"
    folder.mkdir()
    torch.save(_openai_layout(src), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 8}}))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(build_backbone(**FAMILY_TINY["clip"], weights=folder).eval()(x), src(x))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 8, "quick_gelu": True}}))
    with pytest.raises(ValueError, match="quick_gelu=True.*vit_large_patch14_clip_quickgelu_224"):
        build_backbone(**FAMILY_TINY["clip"], weights=folder)


def test_recipe_003_builds_its_backbone_from_a_transformers_clip(tmp_path):
    """params/recipe_003 names the QuickGELU arch that OpenAI's CLIP folder (saved by transformers) needs."""
    from kitlib import config
    from kitlib.stages.s02_stage1_train import pretrained_backbone

    hf, folder = _hf_clip(tmp_path)                   # hidden_act quick_gelu, as openai/clip-vit-large-patch14
    cfg = config.load("params/demo.yaml", "params/tiny.yaml", "params/recipe_003_tcn_prompt.yaml",
                      overrides=[f"stage1.weights={folder}", "stage1.image_size=28",
                                 "stage1.arch_overrides={depth: 2, embed_dim: 32, num_heads: 2}"])
    assert cfg.stage1.arch == "vit_large_patch14_clip_quickgelu_224"
    model = pretrained_backbone(cfg).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf.vision_model(pixel_values=x).pooler_output, rtol=1e-4, atol=1e-4)


def _hf_beit():
    from transformers import BeitConfig, BeitModel

    config = BeitConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                        image_size=32, patch_size=16, use_relative_position_bias=True, use_mean_pooling=True,
                        use_absolute_position_embeddings=False, layer_scale_init_value=0.1, layer_norm_eps=1e-6)
    return perturbed(BeitModel(config))


def _released_beit_keys(state):
    """transformers-5 BEiT names -> the names of the released HF checkpoints (microsoft/beit-large-patch16-224)."""
    full = dict(q="query", k="key", v="value")
    renames = [(r"^layers\.", "encoder.layer."),
               (r"\.attention\.(q|k|v)_proj\.", lambda m: f".attention.attention.{full[m.group(1)]}."),
               (r"\.attention\.o_proj\.", ".attention.output.dense."), (r"\.mlp\.fc1\.", ".intermediate.dense."),
               (r"\.mlp\.fc2\.", ".output.dense."),
               (r"\.relative_position_bias\.", ".attention.attention.relative_position_bias.")]
    out = {}
    for k, v in state.items():
        for pattern, repl in renames:
            k = re.sub(pattern, repl, k)
        out[f"beit.{k}"] = v
    return out


def test_hf_beit_layouts_match_transformers(tmp_path):
    """HF BEiT as transformers 5 saves it, and with the released checkpoints' names, gives HF's pooled output."""
    from transformers import BeitModel

    hf = _hf_beit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf(pixel_values=x).pooler_output
    hf.save_pretrained(tmp_path / "beit-v5")
    released = _released_beit_keys(hf.state_dict())
    assert "beit.encoder.layer.1.attention.attention.query.weight" in released
    (tmp_path / "beit-released").mkdir()
    save_file({**released, "classifier.weight": torch.zeros(8, 32)},
              str(tmp_path / "beit-released" / "model.safetensors"))
    hf.config.save_pretrained(tmp_path / "beit-released")
    # the renamed file is what transformers itself reads as a released BEiT checkpoint
    with torch.no_grad():
        torch.testing.assert_close(BeitModel.from_pretrained(tmp_path / "beit-released")(pixel_values=x).pooler_output,
                                   expected)
    for folder in ("beit-v5", "beit-released"):
        model = build_backbone(**FAMILY_TINY["beit"], weights=tmp_path / folder).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def test_freeze_clip_stem():
    model = tiny(**FAMILY_TINY["clip"])
    freeze_backbone_blocks(model, 1)
    assert not any(p.requires_grad for p in model.norm_pre.parameters()) and not model.pos_embed.requires_grad
    assert all(p.requires_grad for p in model.blocks[1].parameters())
    beit = tiny(**FAMILY_TINY["beit"])
    freeze_backbone_blocks(beit, 2)
    assert not beit.cls_token.requires_grad and not beit.blocks[1].attn.relative_position_bias_table.requires_grad
    assert beit.fc_norm.weight.requires_grad


@pytest.mark.parametrize("family", ["beit", "clip"])
def test_stage1_and_visual_calls_accept_the_family(family, tmp_path):
    """What Stage I (train_stage1) and the feature extraction call on a backbone works for BEiT and CLIP."""
    import numpy as np
    from PIL import Image

    from kitlib.visual.padaug import PadAug
    from kitlib.visual.stage1 import train_stage1
    from kitlib.visual.extract import feature_dim as probe_feature_dim

    spec = FAMILY_TINY[family]
    items = []
    for i in range(8):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), (200, 30, 30) if i % 2 else (30, 30, 200), np.uint8)).save(path)
        items.append((path, 4 if i % 2 else 5))
    out = tmp_path / "stage1" / "backbone.safetensors"
    result = train_stage1(backbone=tiny(**spec), train_items=items, val_items=items, epochs=1, batch_size=4,
                          padaug=PadAug(p=0.5), n_frozen_blocks=1, image_size=spec["img_size"], device="cpu",
                          out_path=out)
    assert np.isfinite(result["history"][0]["train_loss"])
    backbone, record = load_backbone(out)
    assert record["arch"] == spec["arch"]
    assert probe_feature_dim(backbone, image_size=spec["img_size"], device=torch.device("cpu")) == 32
    mean, std = input_mean_std(backbone)
    assert mean == pytest.approx(FAMILY_MEAN_STD[family][0]) and std == pytest.approx(FAMILY_MEAN_STD[family][1])
