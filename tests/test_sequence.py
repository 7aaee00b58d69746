"""Window-level fusion (seed 004): windows, focal loss, effective-number weights, safe attention,
modality dropout, the safe cross-attention transformer, soft voting, and training through ``fusion``."""
import numpy as np
import pytest
import torch

from kitlib import config
from kitlib.stages import s05_fusion_ablation, s07_submission
from kitlib.fusion import (FrameTable, build_head, class_weights_for, evaluate_heads, is_sequence_head, known_heads,
                           predict_logits, train_head)
from kitlib.metrics import macro_f1
from kitlib.fusion.sequence import (ModalityDropout, SafeCrossAttention, SafeXAttnTransformer, SequenceHead,
                                    focal_loss, frame_criterion, sliding_windows, soft_vote, training_windows)

DV, DA = 12, 6


# ----------------------------------------------------------------------------- windows


def test_sliding_windows_by_hand():
    offsets = np.array([0, 23, 23, 33, 49])        # lengths 23, 0 (empty), 10 (short), 16 (exactly W)
    rows = sliding_windows(offsets, window=16, stride=4)
    assert rows.shape == (5, 16) and rows.dtype == np.int64
    np.testing.assert_array_equal(rows[:3, 0], [0, 4, 7])          # last window aligned to the end (23 - 16)
    np.testing.assert_array_equal(rows[2], np.arange(7, 23))
    np.testing.assert_array_equal(rows[3], np.r_[np.arange(23, 33), [-1] * 6])   # short track, padded
    np.testing.assert_array_equal(rows[4], np.arange(33, 49))


@pytest.mark.parametrize("window,stride", [(64, 8), (16, 5), (7, 7), (5, 1)])
def test_sliding_windows_cover_every_frame_inside_its_track(window, stride, rng):
    lengths = rng.integers(0, 150, size=12)
    offsets = np.r_[0, np.cumsum(lengths)]
    rows = sliding_windows(offsets, window=window, stride=stride)
    assert set(rows[rows >= 0].tolist()) == set(range(offsets[-1]))
    track_of = np.repeat(np.arange(len(lengths)), lengths)
    for r in rows:
        real = r[r >= 0]
        assert len(set(track_of[real].tolist())) == 1                   # never crosses a track boundary
        np.testing.assert_array_equal(np.diff(real), 1)                 # consecutive frames
        assert (r[len(real):] == -1).all()                              # padding only at the end
    starts = rows[:, 0]
    within = np.diff(starts)[np.diff(track_of[starts]) == 0]
    assert (within <= stride).all() and (within > 0).all()


def test_training_windows_drop_mostly_invalid():
    labels = np.zeros(40, dtype=np.int64)
    labels[8:20] = -1                                  # window [0,16) 50% invalid, [4,20) 75%, [16,32) 25%
    rows = training_windows(labels, np.array([0, 40]), window=16, stride=4, max_invalid=0.25)
    np.testing.assert_array_equal(rows[:, 0], [16, 20, 24])
    short = training_windows(np.zeros(10, np.int64), np.array([0, 10]), window=16, stride=4, max_invalid=0.25)
    np.testing.assert_array_equal(short, [list(range(10)) + [-1] * 6])   # a short track trains, padded
    mostly_unlabelled = np.array([0, 0, -1, -1, 0, 0, 0, 0, 0, 0])       # 2 of its 10 frames -1: 20% kept
    assert len(training_windows(mostly_unlabelled, np.array([0, 10]), window=16, stride=4, max_invalid=0.25)) == 1
    assert len(training_windows(np.r_[-np.ones(3, np.int64), np.zeros(7, np.int64)], np.array([0, 10]), window=16,
                                stride=4, max_invalid=0.25)) == 0     # 3 of 10 frames -1: 30% dropped


# ----------------------------------------------------------------------------- losses and weights


def test_focal_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, 3.0, 0.0], [9.0, 9.0, 9.0]])
    labels = torch.tensor([0, 2, 1, -1])
    p = torch.softmax(logits, 1)
    pt = torch.stack([p[0, 0], p[1, 2], p[2, 1]])
    expected = (-(1 - pt) ** 2 * torch.log(pt)).sum() / 3               # eq. 5: / number of valid frames
    torch.testing.assert_close(focal_loss(logits, labels, gamma=2.0), expected)
    w = torch.tensor([2.0, 0.5, 1.0])
    weighted = (-(1 - pt) ** 2 * torch.log(pt) * torch.tensor([2.0, 1.0, 0.5])).sum() / 3
    torch.testing.assert_close(focal_loss(logits, labels, gamma=2.0, weight=w), weighted)
    ce = torch.nn.functional.cross_entropy(logits[:3], labels[:3])
    torch.testing.assert_close(focal_loss(logits, labels, gamma=0.0), ce)  # gamma 0 is cross-entropy
    # windows (B, W, C) with -1 labels: the same as the flat frames
    torch.testing.assert_close(focal_loss(logits.view(2, 2, 3), labels.view(2, 2)), expected)
    assert focal_loss(logits, torch.full((4,), -1)) == 0


def test_criterion_ignores_invalid_frames():
    logits = torch.randn(2, 5, 8)
    labels = torch.randint(0, 8, (2, 5))
    changed = logits.clone()
    labels[0, 1] = labels[1, 4] = -1
    changed[0, 1] += 50
    changed[1, 4] -= 50
    for loss in ("ce", "focal"):
        criterion = frame_criterion(loss, weight=torch.rand(8) + 0.5)
        torch.testing.assert_close(criterion(logits, labels), criterion(changed, labels))
    with pytest.raises(ValueError, match="focal"):
        frame_criterion("hinge")


def test_effective_number_weights():
    y = np.array([0] * 1000 + [1] * 10 + [-1] * 7)
    beta = 0.99
    raw = np.array([(1 - beta) / (1 - beta**1000), (1 - beta) / (1 - beta**10)])
    w = class_weights_for(y, "effective_number", beta=beta)
    np.testing.assert_allclose(w[:2], raw / raw.mean(), rtol=1e-6)
    assert w[2:].sum() == 0 and w[:2].mean() == pytest.approx(1.0)
    assert w[1] / w[0] < 100                            # gentler than inverse frequency on the head class
    with pytest.raises(ValueError, match="beta"):
        class_weights_for(y, "effective_number", beta=1.0)


# ----------------------------------------------------------------------------- safe attention, dropout, head


def test_safe_cross_attention_with_an_empty_window():
    torch.manual_seed(0)
    block = SafeCrossAttention(16, 4, dropout=0.1).eval()
    query = torch.randn(3, 5, 16, requires_grad=True)
    keys = torch.randn(3, 7, 16, requires_grad=True)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1] = False                                     # window 1: no valid key at all
    mask[2, 3:] = False
    out = block(query, keys, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], block.norm(query[1]))       # LN(Q + Drop(0)) = LN(Q)
    out.sum().backward()
    assert torch.isfinite(query.grad).all() and torch.isfinite(keys.grad).all()
    assert keys.grad[1].abs().sum() == 0                           # the unmasked placeholder key has no effect
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


def test_modality_dropout_only_in_training():
    torch.manual_seed(0)
    drop = ModalityDropout(0.5)
    visual, mask = torch.randn(200, 4, 3) + 5, torch.ones(200, 4, dtype=torch.bool)
    v, m = drop(visual, mask)
    dropped = ~m.any(1)
    assert 60 < int(dropped.sum()) < 140                           # about half of the windows
    assert (m.all(1) | dropped).all()                              # a whole window or nothing
    assert (v[dropped] == 0).all() and torch.equal(v[~dropped], visual[~dropped])
    v, m = drop.eval()(visual, mask)
    assert v is visual and m is mask
    with pytest.raises(ValueError, match="modality_dropout"):
        ModalityDropout(1.0)


def _xattn(**options):
    defaults = dict(d_model=16, layers=2, n_heads=2, modality_dropout=0.0)
    return build_head("safe_xattn", visual_dim=DV, audio_dim=DA, hidden=24, dropout=0.1,
                      options={**defaults, **options})


def test_safe_xattn_shapes_masks_and_gradients():
    torch.manual_seed(0)
    head = _xattn(modality_dropout=0.3)
    assert isinstance(head, SafeXAttnTransformer) and is_sequence_head(head) and is_sequence_head("safe_xattn")
    visual, audio = torch.randn(4, 10, DV, requires_grad=True), torch.randn(4, 10, DA, requires_grad=True)
    mask = torch.rand(4, 10) > 0.3
    mask[0] = False                                                # a window with no face at all
    logits = head(visual, audio, mask)                             # training mode: modality dropout active
    assert logits.shape == (4, 10, 8) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert torch.isfinite(audio.grad).all() and torch.isfinite(visual.grad).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in head.parameters())
    head.eval()
    out1 = head(visual.detach(), audio, mask)
    noisy = visual.detach() + 10 * torch.randn_like(visual) * (~mask).unsqueeze(-1)
    torch.testing.assert_close(head(noisy, audio, mask), out1)    # frames without a face: visual ignored
    assert not torch.allclose(head(visual.detach(), audio * 2, mask)[0], out1[0])  # the faceless window hears


def test_build_head_options_are_checked():
    with pytest.raises(ValueError, match=r"d_modle.*valid: d_model"):
        build_head("safe_xattn", visual_dim=DV, audio_dim=DA, options={"d_modle": 8})
    with pytest.raises(ValueError, match="takes none"):
        build_head("gated", visual_dim=DV, audio_dim=DA, options={"layers": 2})
    assert {"safe_xattn", "tcn_prompt", "gated"} <= set(known_heads())


def test_tcn_prompt_is_registered():
    pytest.importorskip("kitlib.fusion.tcn_prompt")
    head = build_head("tcn_prompt", visual_dim=DV, audio_dim=DA, hidden=16, dropout=0.1,
                      options={"tcn_levels": 2, "n_heads": 2, "prompt_embeddings": torch.randn(8, 10)})
    assert is_sequence_head(head)
    assert head(torch.randn(2, 9, DV), torch.randn(2, 9, DA), torch.ones(2, 9, dtype=torch.bool)).shape == (2, 9, 8)


# ----------------------------------------------------------------------------- soft voting and training


class _PositionHead(SequenceHead):
    """Logits that depend on the frame's position in the window, so windows disagree about a frame."""

    def forward(self, visual, audio, visual_mask, frame_mask=None):
        position = torch.arange(1, visual.shape[1] + 1, dtype=visual.dtype)[None, :, None]
        return visual[..., :8] * position + visual_mask[..., None].to(visual.dtype)


def _table(lengths, rng, *, vdim=DV, adim=DA, separable=True) -> FrameTable:
    """A frame table whose visual features carry the label (class centres + noise), segments of 10 frames."""
    n = int(sum(lengths))
    y = np.repeat(rng.integers(0, 8, size=n // 10 + 1), 10)[:n]
    y[rng.random(n) < 0.05] = -1
    centers = np.random.default_rng(7).normal(size=(8, vdim)) * 3
    visual = (centers[np.maximum(y, 0)] if separable else 0) + rng.normal(size=(n, vdim))
    return FrameTable(txtids=tuple(f"t{i}" for i in range(len(lengths))), offsets=np.r_[0, np.cumsum(lengths)],
                      frame_index=np.concatenate([np.arange(1, k + 1) for k in lengths]).astype(np.int32),
                      visual=visual.astype(np.float16), visual_mask=rng.random(n) > 0.1,
                      audio=rng.normal(size=(n, adim)).astype(np.float16), audio_mask=np.ones(n, bool), labels=y)


def test_soft_voting_equals_a_hand_average(rng):
    table = _table([21, 5, 12], rng)
    got = predict_logits(_PositionHead(), table, batch_size=3, window=8, stride=3)
    windows = sliding_windows(table.offsets, window=8, stride=3)
    votes = [[] for _ in range(len(table))]
    for rows in windows:
        for j, r in enumerate(rows):
            if r >= 0:
                votes[r].append(table.visual[r, :8].astype(np.float32) * (j + 1) + float(table.visual_mask[r]))
    expected = np.stack([np.mean(v, axis=0) for v in votes])
    assert got.shape == (len(table), 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    direct = soft_vote(torch.from_numpy(windows), torch.ones(len(windows), 8, 8), len(table) + 2)
    assert (direct[:-2] == 1).all() and (direct[-2:] == 0).all()   # rows no window covers stay 0


def test_train_safe_xattn_learns_a_separable_problem():
    rng = np.random.default_rng(1)
    table = _table([120] * 5, rng)
    train, val = table.subset(["t0", "t1", "t2"]), table.subset(["t3", "t4"])
    trained = train_head("safe_xattn", train, val, hidden=32, dropout=0.1, epochs=6, batch_size=16, lr=1e-2,
                         patience=2, window=16, stride=8, loss="focal", class_weights="effective_number",
                         options=dict(d_model=16, layers=1, n_heads=2, modality_dropout=0.1))
    assert trained.best_val_f1 > 0.85               # chance is ~0.12
    assert trained.config["options"]["d_model"] == 16 and trained.config["window"] == 16
    logits = trained.predict(val)
    assert logits.shape == (len(val), 8)
    assert macro_f1(val.labels, logits.argmax(1)) == pytest.approx(trained.best_val_f1)


def test_evaluate_heads_with_a_sequence_head_and_folds():
    rng = np.random.default_rng(2)
    table = _table([60] * 6, rng)
    train, val = table.subset(["t0", "t1", "t2", "t3"]), table.subset(["t4", "t5"])
    folds = {t: i % 3 + 1 for i, t in enumerate(table.txtids)}
    seq = dict(batch_size=8, window=16, stride=8, loss="focal", lr=3e-3,
               options=dict(d_model=16, layers=1, n_heads=2, modality_dropout=0.0))
    result = evaluate_heads(["concat_linear", "safe_xattn"], train=train, val=val, folds=folds, table_all=table,
                            head_kwargs={"safe_xattn": seq}, hidden=16, epochs=2, batch_size=128, device="cpu")
    assert list(result.table["head"]) == ["concat_linear", "safe_xattn"]
    assert {"cv_mean_f1", "fold_1", "fold_2", "fold_3"} <= set(result.table.columns)
    assert result.val_logits["safe_xattn"].shape == (len(val), 8)
    assert result.fold_logits["safe_xattn"].shape == (len(table), 8)
    assert np.isfinite(result.fold_logits["safe_xattn"]).all() and result.fold_logits["safe_xattn"].any(1).all()
    assert result.trained["safe_xattn"].config["batch_size"] == 8          # per-head override
    assert result.trained["concat_linear"].config["batch_size"] == 128


# ----------------------------------------------------------------------------- params and stages


def test_sequence_params_and_grid_checks(tmp_path):
    cfg = config.load("params/tiny.yaml", overrides=[f"run.outputs_root={tmp_path}"])
    kwargs = s05_fusion_ablation.head_kwargs(cfg, ["gated", "safe_xattn"])
    assert list(kwargs) == ["safe_xattn"]
    s = cfg.fusion.sequence
    assert kwargs["safe_xattn"]["window"] == s.window and kwargs["safe_xattn"]["loss"] == s.loss
    assert kwargs["safe_xattn"]["options"]["d_model"] == cfg.fusion.head_options.safe_xattn.d_model
    bad = config.load("params/tiny.yaml", overrides=[f"run.outputs_root={tmp_path}",
                                                     "fusion.xattn_grid=[{d_model: 8, layres: 2}]"])
    with pytest.raises(config.ConfigError, match=r"xattn_grid\[0\].*layres.*valid: d_model"):
        s05_fusion_ablation.xattn_grid(bad, None, {}, {})
    with pytest.raises(config.ConfigError, match="did you mean 'fusion.head_options.safe_xattn.layers'"):
        config.load("params/tiny.yaml", overrides=["fusion.head_options.safe_xattn.layer=2"])


def test_head_options_params_match_the_heads():
    import dataclasses
    import typing

    from kitlib.fusion import SEQUENCE_HEAD_OPTIONS, SEQUENCE_HEADS

    sections = typing.get_type_hints(config.HeadOptions)
    assert set(sections) == set(SEQUENCE_HEADS)          # every window head has its params section
    for name, section in sections.items():
        params = {f.name for f in dataclasses.fields(section)}
        assert params == set(SEQUENCE_HEAD_OPTIONS[name]) - {"prompt_embeddings"}, name


def test_final_sequence_head_is_rebuilt_with_its_options(tmp_path):
    cfg = config.load("params/tiny.yaml", overrides=[f"run.outputs_root={tmp_path}", "run.device=cpu",
                                                     "submission.ensemble_folds=false"])
    rng = np.random.default_rng(3)
    table = _table([50, 40], rng)
    trained = train_head("safe_xattn", table, None, hidden=8, epochs=1, batch_size=4, window=16, stride=4,
                         options=dict(d_model=8, layers=1, n_heads=2, modality_dropout=0.0))
    path = cfg.run_dir / "fusion" / "final_head.pt"
    path.parent.mkdir(parents=True)
    torch.save({"name": "safe_xattn", "config": trained.config, "state_dict": trained.module.state_dict(),
                "best_epoch": 1, "best_val_f1": 0.5, "visual_dim": DV, "audio_dim": DA}, path)
    head, saved = s07_submission._load_final_head(cfg)
    assert isinstance(head, SafeXAttnTransformer) and head.d_model == 8
    got = s07_submission.predict_test_logits(cfg, None, table)
    np.testing.assert_allclose(got, trained.predict(table), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_safe_xattn_trains_on_cuda():
    table = _table([80] * 3, np.random.default_rng(4))
    trained = train_head("safe_xattn", table, table, hidden=16, epochs=2, batch_size=8, window=16, stride=8,
                         device="cuda", options=dict(d_model=16, layers=1, n_heads=2, modality_dropout=0.1))
    assert next(trained.module.parameters()).device.type == "cuda"
    assert trained.predict(table, device="cuda").shape == (len(table), 8)


def test_effective_beta_auto_keeps_the_weights_at_the_release_size():
    """beta 0.999 flattens the weights once every class has >> 1000 frames; "auto" (1 - 1/n_max) does not."""
    from kitlib.fusion.train import effective_beta_for, weight_ratio

    small = np.repeat(np.arange(8), [900, 80, 60, 70, 400, 350, 150, 950])
    large = np.repeat(np.arange(8), [262610, 23280, 16300, 17583, 129285, 106265, 42977, 278146])  # the release's shape
    assert weight_ratio(class_weights_for(small, "effective_number", beta=0.999)) > 5
    assert weight_ratio(class_weights_for(large, "effective_number", beta=0.999)) == pytest.approx(1.0, abs=1e-3)
    assert effective_beta_for(np.bincount(large)) == pytest.approx(1 - 1 / 278146)
    auto = class_weights_for(large, "effective_number", beta="auto")
    n = np.bincount(large).astype(float)
    expected = (1 / 278146) / (1 - (1 - 1 / 278146) ** n)
    np.testing.assert_allclose(auto, expected / expected.mean(), rtol=1e-5)
    inverse = weight_ratio(class_weights_for(large, "inverse"))
    assert 1.5 < weight_ratio(auto) < inverse                           # between flat and inverse frequency
    with pytest.raises(ValueError, match="auto"):
        class_weights_for(large, "effective_number", beta="largest")


def test_effective_beta_auto_at_the_real_histogram():
    """The max/min weight ratio at the release's Train+Validation histogram (skips outside the main checkout)."""
    import json

    from kitlib import config
    from kitlib.fusion.train import weight_ratio

    summary = config.repo_root().parent / "shared" / "abaw10-metadata" / "expr_cv5_summary.json"
    if not summary.is_file():
        pytest.skip(f"{summary} is not here")
    labels = np.repeat(np.arange(8), json.loads(summary.read_text())["global_class_hist"])
    assert weight_ratio(class_weights_for(labels, "effective_number", beta=0.999)) < 1.001
    assert weight_ratio(class_weights_for(labels, "effective_number", beta="auto")) > 5


# ----------------------------------------------------------------------------- padding and mask scope (issue 14)


@pytest.mark.parametrize("name", ["safe_xattn", "tcn_prompt"])
def test_padded_positions_are_no_keys_for_either_stream(name):
    """A short track's window: its frames' outputs do not depend on the padding (audio keys masked too)."""
    from kitlib.fusion.sequence import frame_mask_of

    torch.manual_seed(0)
    options = dict(d_model=16, layers=2, n_heads=2, modality_dropout=0.0) if name == "safe_xattn" else \
        dict(tcn_levels=2, n_heads=2)
    head = build_head(name, visual_dim=DV, audio_dim=DA, hidden=24, dropout=0.0, options=options).eval()
    visual, audio = torch.randn(1, 10, DV), torch.randn(1, 10, DA)
    mask = torch.rand(1, 10) > 0.2
    rows = np.array([list(range(10)) + [-1] * 6])                     # 10 frames, 6 padded positions
    frames = frame_mask_of(rows)
    padded = [torch.cat([x, 7 * torch.randn(1, 6, x.shape[-1])], 1) for x in (visual, audio)]   # junk padding
    with torch.no_grad():
        alone = head(visual, audio, mask)
        with_padding = head(*padded, torch.cat([mask, torch.ones(1, 6, dtype=torch.bool)], 1), frame_mask=frames)
        unmasked = head(*padded, torch.cat([mask, torch.zeros(1, 6, dtype=torch.bool)], 1))
    torch.testing.assert_close(with_padding[:, :10], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked[:, :10], alone, atol=1e-4)     # without the frame mask the audio sees it


def test_safe_xattn_visual_mask_scope_option():
    """mask_visual_self_attention false: no-face frames are keys of the visual self-attention (seed 004 masks
    them only in the audio -> visual cross-attention); true: they are not."""
    torch.manual_seed(0)
    visual, audio = torch.randn(2, 10, DV), torch.randn(2, 10, DA)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[:, 3:6] = False
    moved = visual.clone()
    moved[:, 3:6] += 5.0                                              # change only the no-face frames' input
    for scope in (True, False):
        head = _xattn(mask_visual_self_attention=scope).eval()
        with torch.no_grad():                                         # zeroed first: their input never matters
            torch.testing.assert_close(head(visual, audio, mask), head(moved, audio, mask), rtol=1e-5, atol=1e-5)
    # what the scope changes: whether a faceless frame's positional encoding reaches the others as a key
    heads = {scope: _xattn(mask_visual_self_attention=scope).eval() for scope in (True, False)}
    heads[False].load_state_dict(heads[True].state_dict())
    with torch.no_grad():
        a, b = heads[True](visual, audio, mask), heads[False](visual, audio, mask)
    assert not torch.allclose(a, b, atol=1e-5)
    empty = torch.zeros(2, 10, dtype=torch.bool)                      # no face at all: finite either way
    assert all(torch.isfinite(h(visual, audio, empty)).all() for h in heads.values())


def test_short_tracks_train_and_predict():
    """Tracks shorter than the window give (padded, masked) training windows and every frame a prediction."""
    rng = np.random.default_rng(4)
    table = _table([10, 12, 9, 40, 11], rng)
    trained = train_head("safe_xattn", table.subset(["t0", "t1", "t2"]), table.subset(["t3", "t4"]), hidden=16,
                         dropout=0.0, epochs=1, batch_size=4, window=16, stride=8,
                         options=dict(d_model=16, layers=1, n_heads=2, modality_dropout=0.0))
    assert len(trained.history) == 1 and np.isfinite(trained.history[0]["train_loss"])
    logits = trained.predict(table.subset(["t4"]))
    assert logits.shape == (11, 8) and np.isfinite(logits).all() and np.abs(logits).sum(1).min() > 0
