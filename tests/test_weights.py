"""Weights by Hugging Face id, from a local cache the test lays out itself (no network): ids resolve,
the transformers DINOv2 layout converts on load, and ``weights fetch`` writes params/local.yaml."""
import huggingface_hub
import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model

from kitlib import config, hub
from kitlib.tools import weights
from kitlib.visual.backbones import build_backbone, create_model

TINY = dict(arch="vit_small_patch14_dinov2", img_size=56, overrides=dict(depth=2, embed_dim=32, num_heads=2))


def snapshot(cache, hub_id, revision="0123abcd"):
    """An empty snapshot folder in huggingface_hub's cache layout, with refs/main naming it."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    path = repo / "snapshots" / revision
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_ids_resolve_from_the_local_cache_and_paths_stay_paths(cache):
    assert hub.cached_snapshot("facebook/dinov2-large") is None
    path = snapshot(cache, "facebook/dinov2-large")
    (path.parent / "newer-but-not-main").mkdir()                        # refs/main wins over other snapshots
    assert hub.cached_snapshot("facebook/dinov2-large") == path
    cfg = config.load("params/demo.yaml")
    assert cfg.path("facebook/dinov2-large") == path
    assert cfg.path("models/dinov2_vitl14.safetensors") == config.repo_root() / "models/dinov2_vitl14.safetensors"
    assert not hub.is_hub_id("models/dinov2_vitl14.safetensors") and not hub.is_hub_id("/abs/x")


def test_transformers_dinov2_folder_by_id_converts_to_the_same_model(cache):
    torch.manual_seed(0)
    hf = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                  image_size=56, patch_size=14)).eval()
    hf.save_pretrained(snapshot(cache, "facebook/dinov2-large"))
    cfg = config.load("params/demo.yaml")
    model = build_backbone(weights=cfg.path("facebook/dinov2-large"), **TINY).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(model(x), hf(pixel_values=x).pooler_output, atol=1e-5)


def test_timm_id_and_audio_id_load(cache):
    torch.manual_seed(1)
    timm_model = create_model(TINY["arch"], img_size=56, overrides=TINY["overrides"])
    save_file(timm_model.state_dict(), str(snapshot(cache, "timm/vit_large_patch14_dinov2.lvd142m") / "model.safetensors"))
    cfg = config.load("params/demo.yaml")
    model = build_backbone(weights=cfg.path("timm/vit_large_patch14_dinov2.lvd142m"), **TINY)
    assert torch.equal(model.state_dict()["blocks.1.attn.qkv.weight"], timm_model.state_dict()["blocks.1.attn.qkv.weight"])
    from kitlib.audio import load_audio_encoder, make_tiny_encoder

    make_tiny_encoder(snapshot(cache, "facebook/wav2vec2-large-960h-lv60"))
    encoder = load_audio_encoder(cfg.path("facebook/wav2vec2-large-960h-lv60"))
    assert encoder.hidden_size == 32


def test_fetch_downloads_what_the_profile_needs_and_writes_local_yaml(cache, tmp_path, monkeypatch, capsys):
    fetched = []

    def fake_download(hub_id, cache_dir=None, allow_patterns=None):       # what huggingface_hub would leave
        fetched.append((hub_id, tuple(allow_patterns)))
        path = snapshot(cache, hub_id)
        (path / "config.json").write_text("{}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files",
                        lambda hub_id: ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "README.md"])
    local = tmp_path / "local.yaml"
    local.write_text("data: {root: /data/affwild2}\n")
    assert weights.main(["fetch", "params/abaw10.yaml", "--local", str(local)]) == 0
    assert [f[0] for f in fetched] == ["timm/vit_large_patch14_dinov2.lvd142m", "facebook/wav2vec2-large-960h-lv60"]
    assert fetched[0][1] == ("config.json", "model.safetensors")            # one copy of the weights, no TF/README
    written = yaml.safe_load(local.read_text())
    assert written == {"data": {"root": "/data/affwild2"},
                       "stage1": {"weights": "timm/vit_large_patch14_dinov2.lvd142m"},
                       "audio": {"encoder": "facebook/wav2vec2-large-960h-lv60"}}
    cfg = config.load("params/abaw10.yaml", local)
    assert cfg.path(cfg.stage1.weights) == hub.cached_snapshot("timm/vit_large_patch14_dinov2.lvd142m")
    assert weights.needed(cfg) == {}                                          # nothing left to fetch
    assert "stage1.weights" not in capsys.readouterr().err


def test_list_names_every_model_with_size_and_licence(capsys):
    assert weights.main(["list"]) == 0
    out = capsys.readouterr().out
    for model in hub.KNOWN_MODELS:
        assert model.hub_id in out and model.licence in out
