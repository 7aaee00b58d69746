"""Notebook tier for the two alternative recipes: params/recipe_004_safe_xattn.yaml and
params/recipe_003_tcn_prompt.yaml layered on the tiny demo (demo.yaml + tiny.yaml) with overrides
that keep them tiny, run end to end through the runner, then checks on what they recorded."""
import pandas as pd
import pytest
import torch

from kitlib import config, run
from kitlib.stages import common

pytestmark = pytest.mark.slow

TINY_VIT = "{depth: 2, embed_dim: 32, num_heads: 2}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One demo dataset, tiny audio and text encoders and a tiny OpenAI-style CLIP folder for both recipes."""
    from transformers import CLIPConfig, CLIPModel

    root = tmp_path_factory.mktemp("recipes")
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(projection_dim=8,
                                text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                 num_hidden_layers=1, num_attention_heads=2,
                                                 max_position_embeddings=16),
                                vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                                                   num_attention_heads=2, image_size=28, patch_size=14,
                                                   hidden_act="quick_gelu")))
    clip.save_pretrained(root / "models" / "clip-vit-tiny")
    items = ["params/demo.yaml", "params/tiny.yaml", f"data.root={root / 'data'}",
             f"audio.encoder={root / 'models' / 'wav2vec2-tiny'}", f"fusion.text_encoder={root / 'models' / 'text-tiny'}",
             f"run.outputs_root={root / 'outputs'}"]
    common.ensure_demo(config.load(*items[:2], overrides=items[2:]))
    return root, items


def _run(items, recipe, overrides):
    items = [*items[:2], f"params/{recipe}", *items[2:], *overrides]
    cfg = config.load(*items[:3], overrides=items[3:])
    assert run.main(items) == 0
    return cfg, cfg.run_dir


def test_recipe_004_end_to_end(shared):
    root, items = shared
    cfg, run_dir = _run(items, "recipe_004_safe_xattn.yaml", [
        "stage1.weights=null", "stage1.image_size=32", f"stage1.arch_overrides={TINY_VIT}",
        "stage1.dataset=class_folder", "stage1.images_root=images",
        "stage1.chain=[{dataset: affwild2, images_root: cropped_aligned, epochs: 1}]",
        "fusion.sequence.window=16", "fusion.sequence.epochs=2",
        "fusion.head_options.safe_xattn={d_model: 16, layers: 1, n_heads: 2, modality_dropout: 0.1, "
        "mask_visual_self_attention: false}",
        f"visual.compare_backbones=[{{name: dinov2-tiny, arch: vit_small_patch14_dinov2, image_size: 28, "
        f"arch_overrides: {TINY_VIT}}}]"])
    assert cfg.stage1.arch == "beit_large_patch16_224" and cfg.audio.align == "interpolate"
    chain = pd.read_csv(run_dir / "reports" / "stage1_chain.csv")
    assert list(chain["dataset"]) == ["class_folder", "affwild2"] and (chain["status"] == "trained").all()
    t2 = pd.read_csv(run_dir / "reports" / "table2_alignment.csv")
    assert {"nearest", "linear interpolation", "linear interpolation (used)"} <= set(t2["alignment"])
    assert t2["val_f1"].between(0, 1).all()
    lam = pd.read_csv(run_dir / "reports" / "table2_lambda_fusion.csv")
    assert list(lam["lambda"]) == [0.0, 0.5, 0.7, 1.0] and lam["f1"].between(0, 1).all()
    grid = pd.read_csv(run_dir / "reports" / "table3_xattn_grid.csv")
    assert {"official_val_f1", "smoothed_val_f1", "smoothed_val_acc"} <= set(grid.columns)
    assert (grid["smoothing"] == "median 11").all()
    backbones = pd.read_csv(run_dir / "reports" / "table1_backbones.csv")
    assert list(backbones["backbone"]) == ["this run (beit_large_patch16_224)", "dinov2-tiny"]
    assert backbones["val_f1"].between(0, 1).all() and (backbones["val_frames"] > 0).all()
    assert (run_dir / "submission" / cfg.submission.filename).is_file()


def test_recipe_003_end_to_end(shared):
    root, items = shared
    cfg, run_dir = _run(items, "recipe_003_tcn_prompt.yaml", [
        f"stage1.weights={root / 'models' / 'clip-vit-tiny'}", "stage1.image_size=28",
        f"stage1.arch_overrides={TINY_VIT}"])
    assert cfg.stage1.arch == "vit_large_patch14_clip_quickgelu_224" and not cfg.stage1.train
    assert cfg.fusion.head_options.tcn_prompt.classify == "pooled"
    t3 = pd.read_csv(run_dir / "reports" / "table3_fusion.csv")
    assert list(t3["head"]) == cfg.fusion.heads and t3["official_val_f1"].between(0, 1).all()
    assert (run_dir / "submission" / cfg.submission.filename).is_file()
