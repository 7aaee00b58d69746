import pytest
import torch
import torch.nn.functional as F

from kitlib import CLASSES
from kitlib.fusion.tcn_prompt import (TCNPromptHead, TemporalBlock, TemporalConvNet, majority_labels,
                                      make_tiny_text_encoder, prompt_contrastive_loss, prompt_embeddings, prompt_texts)

DIMS = dict(visual_dim=12, audio_dim=10, hidden=16, num_classes=8, tcn_levels=3, tcn_kernel=3, n_heads=2)


def criterion(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-1)


def head(**kw):
    torch.manual_seed(0)
    return TCNPromptHead(**{**DIMS, "dropout": 0.0, **kw})


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    return make_tiny_text_encoder(tmp_path_factory.mktemp("text") / "clip-tiny", seed=0)


def test_tcn_is_causal():
    torch.manual_seed(0)
    tcn = TemporalConvNet(6, 16, levels=3, kernel_size=3, dropout=0.0).eval()
    x = torch.randn(2, 20, 6)
    y = x.clone()
    y[:, 12] += 5.0                                            # change one future frame
    out_x, out_y = tcn(x), tcn(y)
    assert out_x.shape == (2, 20, 16)
    torch.testing.assert_close(out_x[:, :12], out_y[:, :12], rtol=0, atol=0)
    assert not torch.allclose(out_x[:, 12:], out_y[:, 12:])


def test_tcn_receptive_field():
    torch.manual_seed(0)
    tcn = TemporalConvNet(4, 32, levels=3, kernel_size=3, dropout=0.0).eval()
    rf = tcn.receptive_field
    assert rf == 1 + 2 * 2 * (1 + 2 + 4) == 29
    x = torch.randn(1, 40, 4, requires_grad=True)
    t = 35
    tcn(x)[0, t].sum().backward()
    reach = x.grad[0].abs().sum(-1)
    assert (reach[t - rf + 1: t + 1] > 0).all()                # every frame in the field is seen ...
    assert (reach[: t - rf + 1] == 0).all() and (reach[t + 1:] == 0).all()   # ... and nothing else


def test_temporal_block_projects_residual_when_width_changes():
    block = TemporalBlock(5, 9, kernel_size=2, dilation=4, dropout=0.0)
    assert isinstance(block.residual, torch.nn.Conv1d) and block.residual.kernel_size == (1,)
    assert block.left_pad == 4 and block(torch.randn(2, 5, 7)).shape == (2, 9, 7)
    assert isinstance(TemporalBlock(5, 5, kernel_size=2, dilation=1, dropout=0.0).residual, torch.nn.Identity)


def test_head_output_shape_and_receptive_field():
    model = head().eval()
    logits = model(torch.randn(3, 16, 12), torch.randn(3, 16, 10), torch.rand(3, 16) > 0.3)
    assert logits.shape == (3, 16, 8) and torch.isfinite(logits).all()
    assert model.receptive_field == 29
    with pytest.raises(ValueError, match="share"):
        model(torch.randn(3, 16, 12), torch.randn(3, 15, 10), torch.ones(3, 16, dtype=torch.bool))


def test_unmasked_vs_fully_masked_window_is_finite():
    model = head(prompt_embeddings=F.normalize(torch.randn(8, 6), dim=-1))
    visual, audio = torch.randn(2, 16, 12), torch.randn(2, 16, 10)
    mask = torch.tensor([[True] * 16, [False] * 16])
    visual[1] = float("nan")                                   # frames without a face may hold anything
    labels = torch.randint(0, 8, (2, 16))
    loss = model.training_loss(visual, audio, mask, labels, criterion)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        out = model(visual, audio, mask)
        other = visual.clone()
        other[1] = torch.randn(16, 12)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(model(other, audio, mask)[1], out[1])   # no face: visual values unused
        a = model.audio_adapter(audio[1:])                     # no valid key: the audio query passes as LN(a)
        torch.testing.assert_close(model.audio_to_visual(a, torch.randn(1, 16, 16), mask[1:]),
                                   model.audio_to_visual.norm(a))


def test_majority_labels():
    labels = torch.tensor([[1, 1, 2, -1], [-1, -1, -1, -1], [3, 2, 2, 3], [7, -1, -1, -1]])
    assert majority_labels(labels, num_classes=8).tolist() == [1, -1, 2, 7]   # tie -> lower index


def test_contrastive_loss_lower_when_aligned_with_class_prompt():
    torch.manual_seed(0)
    prompts = F.normalize(torch.randn(8, 16), dim=-1)
    targets = torch.arange(8).repeat(4)
    aligned = prompts[targets] + 0.05 * torch.randn(32, 16)
    random = torch.randn(32, 16)
    wrong = prompts[(targets + 1) % 8]
    losses = [float(prompt_contrastive_loss(e, prompts, targets, temperature=0.07)) for e in (aligned, random, wrong)]
    assert losses[0] < 0.1 < losses[1] < losses[2]
    # scale-free (cosine) and sharper at a lower temperature
    assert float(prompt_contrastive_loss(10 * aligned, prompts, targets, temperature=0.07)) == pytest.approx(losses[0])
    assert float(prompt_contrastive_loss(aligned, prompts, targets, temperature=0.5)) > losses[0]


def test_training_loss_is_criterion_plus_weighted_contrastive():
    prompts = F.normalize(torch.randn(8, 6), dim=-1)
    torch.manual_seed(1)
    visual, audio = torch.randn(3, 16, 12), torch.randn(3, 16, 10)
    mask = torch.rand(3, 16) > 0.2
    labels = torch.randint(0, 8, (3, 16))
    labels[1] = -1                                             # a window without labels: no contrastive term
    labels[2, :5] = -1
    model = head(prompt_embeddings=prompts, contrastive_weight=0.3).eval()
    with torch.no_grad():
        total = model.training_loss(visual, audio, mask, labels, criterion)
        frame = criterion(model(visual, audio, mask), labels)
        keep = torch.tensor([0, 2])
        pooled = model.pooled_embedding(model.fused(visual, audio, mask)[keep], labels[keep] >= 0)
        contrastive = prompt_contrastive_loss(pooled, prompts, majority_labels(labels, num_classes=8)[keep],
                                              temperature=0.07)
    assert float(contrastive) > 0
    torch.testing.assert_close(total, frame + 0.3 * contrastive)
    # no prompts (or weight 0): the frame criterion alone; no labelled window: likewise
    for off in (head(), head(prompt_embeddings=prompts, contrastive_weight=0.0)):
        with torch.no_grad():
            torch.testing.assert_close(off.eval().training_loss(visual, audio, mask, labels, criterion),
                                       criterion(off(visual, audio, mask), labels))
    with torch.no_grad():
        none = torch.full_like(labels, -1)
        assert float(model.training_loss(visual, audio, mask, none, lambda lg, lb: lg.sum() * 0)) == 0.0


def test_prompt_embedding_shape_is_checked():
    with pytest.raises(ValueError, match="num_classes=8"):
        head(prompt_embeddings=torch.randn(7, 6))
    with pytest.raises(ValueError, match="no prompt embeddings"):
        head().pooled_embedding(torch.randn(1, 4, 16), torch.ones(1, 4, dtype=torch.bool))


def test_prompt_texts():
    texts = prompt_texts(CLASSES)
    assert texts[0] == "A face expressing neutral" and texts[4] == "A face expressing happiness"
    assert texts[7] == "A face expressing another emotion"
    assert prompt_texts(["Fear"], template="a photo of {emotion}") == ["a photo of fear"]


def test_tiny_text_encoder_roundtrip(text_encoder, tmp_path):
    from transformers import AutoTokenizer, CLIPTokenizer

    emb = prompt_embeddings(text_encoder, classes=CLASSES)
    assert emb.shape == (8, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(8))
    cos = emb @ emb.T
    assert (cos - torch.eye(8)).max() < 0.999                   # eight distinct prompts
    tokenizer = AutoTokenizer.from_pretrained(text_encoder, local_files_only=True)
    assert isinstance(tokenizer, CLIPTokenizer)
    ids = tokenizer("A face expressing another emotion")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "a</w>", "face</w>", "expressing</w>", "another</w>", "emotion</w>", "<|endoftext|>"]
    assert len(tokenizer("zebra crossing!")["input_ids"]) > 3  # out-of-vocabulary words still tokenize
    # same seed -> same encoder; another template -> other embeddings
    again = prompt_embeddings(make_tiny_text_encoder(tmp_path / "again", seed=0), classes=CLASSES)
    torch.testing.assert_close(again, emb)
    assert not torch.allclose(prompt_embeddings(text_encoder, classes=CLASSES, template="{emotion}"), emb)


def test_full_clip_folder_loads_like_openai_layout(text_encoder, tmp_path):
    """A full CLIPModel folder (model_type clip, like openai/clip-vit-large-patch14) gives its text tower."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection

    text_config = CLIPTextConfig.from_pretrained(text_encoder)
    config = CLIPConfig(text_config=text_config.to_dict(), projection_dim=16,
                        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=28, patch_size=14))
    clip = CLIPModel(config)
    clip.text_model.load_state_dict(CLIPTextModelWithProjection.from_pretrained(text_encoder).text_model.state_dict())
    clip.text_projection.load_state_dict(
        CLIPTextModelWithProjection.from_pretrained(text_encoder).text_projection.state_dict())
    clip.save_pretrained(tmp_path / "clip-full")
    AutoTokenizer.from_pretrained(text_encoder).save_pretrained(tmp_path / "clip-full")
    torch.testing.assert_close(prompt_embeddings(tmp_path / "clip-full", classes=CLASSES),
                               prompt_embeddings(text_encoder, classes=CLASSES))


def test_missing_text_encoder_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-clip-here.*make_tiny_text_encoder"):
        prompt_embeddings(tmp_path / "no-clip-here", classes=CLASSES)


def toy_windows(n: int, *, seed: int):
    """Windows whose class shows in the visual features (first 8 dims) where a face is, and in the audio."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 8, (n, 1), generator=g).expand(n, 16).clone()
    visual = 0.3 * torch.randn(n, 16, 12, generator=g)
    audio = 0.3 * torch.randn(n, 16, 10, generator=g)
    visual[..., :8] += 2 * F.one_hot(labels, 8)
    audio[..., :8] += F.one_hot(labels, 8)
    mask = torch.rand(n, 16, generator=g) > 0.2
    labels[torch.rand(n, 16, generator=g) < 0.1] = -1
    return visual, audio, mask, labels


def test_a_few_steps_reduce_the_loss(text_encoder):
    model = head(prompt_embeddings=prompt_embeddings(text_encoder, classes=CLASSES), contrastive_weight=0.5)
    model.train()
    batch = toy_windows(32, seed=0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model.training_loss(*batch, criterion)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]
    model.eval()
    visual, audio, mask, labels = toy_windows(16, seed=1)
    with torch.no_grad():
        pred = model(visual, audio, mask).argmax(-1)
    assert (pred[labels >= 0] == labels[labels >= 0]).float().mean() > 0.9


@pytest.mark.gpu
def test_head_on_cuda_matches_cpu():
    model = head(prompt_embeddings=F.normalize(torch.randn(8, 6), dim=-1)).eval()
    visual, audio, mask, labels = toy_windows(4, seed=2)
    mask[0] = False
    with torch.no_grad():
        cpu = model.training_loss(visual, audio, mask, labels, criterion)
        cpu_logits = model(visual, audio, mask)
    model.to("cuda")
    cuda_args = [t.to("cuda") for t in (visual, audio, mask, labels)]
    with torch.no_grad():
        torch.testing.assert_close(model(*cuda_args[:3]).cpu(), cpu_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.training_loss(*cuda_args, criterion).cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_tiny_text_encoder_refuses_to_overwrite(text_encoder):
    with pytest.raises(FileExistsError, match="clip-tiny"):
        make_tiny_text_encoder(text_encoder, seed=1)
    assert not list(text_encoder.parent.glob("*.partial"))


# ----------------------------------------------------------------------------- the poster's options (issue 14)


def test_pooled_head_predicts_one_label_per_window():
    """classify=pooled: every frame of a window gets the window's logits; the loss uses the majority label."""
    from kitlib.fusion.tcn_prompt import masked_mean

    model = head(classify="pooled").eval()
    visual, audio = torch.randn(3, 16, 12), torch.randn(3, 16, 10)
    mask = torch.rand(3, 16) > 0.2
    frames = torch.ones(3, 16, dtype=torch.bool)
    frames[2, 10:] = False                                     # a padded window
    labels = torch.randint(0, 8, (3, 16))
    labels[2, 10:] = -1
    with torch.no_grad():
        logits = model(visual, audio, mask, frame_mask=frames)
        assert logits.shape == (3, 16, 8) and (logits == logits[:, :1]).all()
        window = model.classifier(masked_mean(model.fused(visual, audio, mask, frames), frames))
        torch.testing.assert_close(logits[:, 0], window)
        loss = model.training_loss(visual, audio, mask, labels, criterion, frame_mask=frames)
        torch.testing.assert_close(loss, criterion(window, majority_labels(labels, num_classes=8)))
    with pytest.raises(ValueError, match="classify"):
        head(classify="segment")


def test_symmetric_contrastive_adds_text_to_video_by_hand():
    torch.manual_seed(2)
    prompts = F.normalize(torch.randn(8, 6), dim=-1)
    embedding = torch.randn(5, 6)
    targets = torch.tensor([1, 1, 3, 4, 1])
    one_way = prompt_contrastive_loss(embedding, prompts, targets, temperature=0.1)
    both = prompt_contrastive_loss(embedding, prompts, targets, temperature=0.1, symmetric=True)
    s = F.normalize(embedding, dim=-1) @ prompts.T / 0.1                       # (N, C)
    v2t = -torch.stack([torch.log_softmax(s[n], 0)[targets[n]] for n in range(5)]).mean()
    t2v_terms = []
    for c in (1, 3, 4):
        log_p = torch.log_softmax(s[:, c], 0)
        t2v_terms.append(-log_p[targets == c].mean())
    torch.testing.assert_close(one_way, v2t)
    torch.testing.assert_close(both, 0.5 * (v2t + torch.stack(t2v_terms).mean()))


def test_learnable_temperature_is_a_parameter_that_trains():
    prompts = F.normalize(torch.randn(8, 6), dim=-1)
    fixed = head(prompt_embeddings=prompts, temperature=0.07)
    learnt = head(prompt_embeddings=prompts, temperature=0.07, learnable_temperature=True, contrastive="symmetric")
    assert fixed.temperature == pytest.approx(0.07) == learnt.temperature
    assert "log_logit_scale" not in dict(fixed.named_parameters())
    assert "log_logit_scale" in dict(learnt.named_parameters())
    visual, audio = torch.randn(4, 16, 12), torch.randn(4, 16, 10)
    labels = torch.randint(0, 8, (4, 16))
    learnt.training_loss(visual, audio, torch.ones(4, 16, dtype=torch.bool), labels, criterion).backward()
    assert learnt.log_logit_scale.grad is not None and learnt.log_logit_scale.grad.abs() > 0
