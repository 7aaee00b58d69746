"""The reference code's Stage II (params/abaw10.yaml): head structures and their Table 3 parameter counts,
input normalisation and dropout, the cosine schedule, the authors' CV protocol, the fold ensemble, and
nearest-frame imputation with smoothing that skips imputed frames."""
import numpy as np
import pytest
import torch

from kitlib.fusion import HEADS, FrameTable, build_head, count_parameters, train_head
from kitlib.fusion.table import impute_nearest, nearest_source_rows
from kitlib.fusion.train import cross_validate, evaluate_heads, fold_ensemble_logits
from kitlib.smoothing import smooth_logits
from kitlib.smoothing.masked import smooth_logits_skipping

# Table 3 of seed 000 (Dv = Da = 1024, H = 512, 8 classes): the reference code's structures
TABLE3_PARAMS = {"concat_linear": 16_392, "concat_mlp": 1_053_192, "bilinear": 1_317_384,
                 "dynamic_weighting": 2_104_842, "gated": 2_366_472, "cross_attention": 6_313_480}


@pytest.mark.parametrize("name", sorted(TABLE3_PARAMS))
def test_authors_structure_has_table3_parameter_counts(name):
    head = build_head(name, visual_dim=1024, audio_dim=1024, hidden=512, structure="authors",
                      input_norm="l2_zscore")   # the normalisation statistics are buffers, not parameters
    assert count_parameters(head) == TABLE3_PARAMS[name]


def test_kit_structure_keeps_its_counts():
    counts = {n: count_parameters(build_head(n, visual_dim=1024, audio_dim=1024, hidden=512))
              for n in ("gated", "bilinear", "dynamic_weighting", "cross_attention")}
    assert counts == {"gated": 2_103_816, "bilinear": 1_054_728, "dynamic_weighting": 1_056_778,
                      "cross_attention": 6_311_944}


@pytest.mark.parametrize("name", list(HEADS))
def test_authors_heads_train_and_mask(name):
    torch.manual_seed(0)
    head = build_head(name, visual_dim=12, audio_dim=6, hidden=16, structure="authors").eval()
    audio, mask = torch.randn(4, 6), torch.tensor([False, True, False, True])
    out1 = head(torch.randn(4, 12), audio, mask)
    out2 = head(torch.randn(4, 12) * 10, audio, mask)
    assert out1.shape == (4, 8) and torch.isfinite(out1).all()
    torch.testing.assert_close(out1[~mask], out2[~mask])
    head.train()(torch.randn(4, 12), audio, mask).sum().backward()


def test_authors_gated_is_eqs_9_to_12_with_a_two_layer_gate():
    torch.manual_seed(0)
    head = build_head("gated", visual_dim=5, audio_dim=3, hidden=4, structure="authors").eval()
    f_v, f_a = torch.randn(2, 5), torch.randn(2, 3)
    gate = head.gate
    g = torch.sigmoid(gate[3](torch.relu(gate[0](torch.cat([f_v, f_a], 1)))))
    h = g * head.proj_v(f_v) + (1 - g) * head.proj_a(f_a)
    torch.testing.assert_close(head(f_v, f_a, torch.ones(2, dtype=torch.bool)), head.classifier(h))


def _table(n_tracks=4, length=40, dv=6, da=4, seed=0, face_every=1):
    rng = np.random.default_rng(seed)
    n = n_tracks * length
    labels = rng.integers(0, 8, n)
    visual = rng.normal(size=(n, dv)).astype(np.float32) * 3 + 1
    visual[np.arange(n), labels % dv] += 4.0
    audio = rng.normal(size=(n, da)).astype(np.float32) + 2
    audio[np.arange(n), labels % da] += 3.0
    vmask = (np.arange(n) % face_every) == 0
    return FrameTable(txtids=tuple(f"t{i}" for i in range(n_tracks)),
                      offsets=np.arange(0, n + 1, length, dtype=np.int64),
                      frame_index=np.tile(np.arange(1, length + 1), n_tracks).astype(np.int32),
                      visual=visual, visual_mask=vmask, audio=audio, audio_mask=np.ones(n, dtype=bool),
                      labels=labels)


def test_input_norm_statistics_are_fitted_on_train_and_stored_with_the_head():
    train = _table(seed=1)
    trained = train_head("gated", train, None, hidden=8, epochs=1, batch_size=64, structure="authors",
                         input_norm="l2_zscore", input_dropout=(0.2, 0.25))
    norm = trained.module.input_norm
    x = torch.nn.functional.normalize(torch.from_numpy(train.visual), dim=-1)
    torch.testing.assert_close(norm.visual_mean, x.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.visual_std, x.std(0, unbiased=False), atol=1e-5, rtol=1e-5)
    state = trained.module.state_dict()
    assert "input_norm.visual_mean" in state and "input_norm.audio_std" in state
    rebuilt = build_head("gated", visual_dim=6, audio_dim=4, hidden=8, structure="authors", input_norm="l2_zscore")
    rebuilt.load_state_dict(state)
    v, a, m = torch.randn(3, 6), torch.randn(3, 4), torch.ones(3, dtype=torch.bool)
    torch.testing.assert_close(rebuilt.eval()(v, a, m), trained.module.eval()(v, a, m))


def test_input_dropout_only_while_training():
    head = build_head("concat_linear", visual_dim=200, audio_dim=200, input_dropout=(0.5, 0.0))
    seen = {}
    head.linear.register_forward_hook(lambda mod, inp, out: seen.__setitem__("x", inp[0]))
    v, a, m = torch.ones(4, 200), torch.ones(4, 200), torch.ones(4, dtype=torch.bool)
    head.train()(v, a, m)
    zeros = (seen["x"][:, :200] == 0).float().mean()
    assert 0.3 < zeros < 0.7 and (seen["x"][:, 200:] == 1).all()
    head.eval()(v, a, m)
    assert (seen["x"] == 1).all()


def test_cosine_schedule_per_epoch():
    trained = train_head("concat_linear", _table(), None, epochs=4, batch_size=64, lr=1e-4, lr_min=1e-5,
                         lr_schedule="cosine")
    lrs = [h["lr"] for h in trained.history]
    expected = [1e-5 + 0.5 * (1e-4 - 1e-5) * (1 + np.cos(np.pi * e / 4)) for e in range(4)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)


def test_authors_cv_protocol_picks_each_folds_best_epoch_and_population_std():
    pool = _table(n_tracks=4, seed=2)
    folds = {"t0": 0, "t1": 0, "t2": 1, "t3": 1}
    kw = dict(hidden=8, batch_size=64, lr=3e-2, patience=100)
    scores, _ = cross_validate("concat_linear", pool, folds, epochs=5, protocol="authors", **kw)
    for k, held in ((0, ["t0", "t1"]), (1, ["t2", "t3"])):
        train = pool.subset([t for t in pool.txtids if t not in held])
        best = train_head("concat_linear", train, pool.subset(held), epochs=5, **kw)
        assert scores[k] == pytest.approx(best.best_val_f1)
    comparison = evaluate_heads(["concat_linear"], train=pool.subset(["t0", "t2"]), val=pool.subset(["t1", "t3"]),
                                folds=folds, table_all=pool, cv_protocol="authors", epochs=5, **kw)
    row = comparison.table.iloc[0]
    assert row["cv_protocol"] == "authors"
    assert row["cv_std_f1"] == pytest.approx(np.std([row["fold_0"], row["fold_1"]]))   # ddof=0


def test_fold_ensemble_is_the_mean_of_fold_models_with_their_own_statistics():
    pool, test = _table(n_tracks=4, seed=3), _table(n_tracks=1, seed=4)
    folds = {"t0": 0, "t1": 1, "t2": 2, "t3": 2}
    kw = dict(hidden=8, batch_size=64, structure="authors", input_norm="l2_zscore", seed=5)
    ensemble = fold_ensemble_logits("gated", pool, folds, test, epochs=2, **kw)
    models = [train_head("gated", pool.subset([t for t in pool.txtids if folds[t] != k]), None, epochs=2, **kw)
              for k in (0, 1, 2)]
    means = [m.module.input_norm.visual_mean for m in models]
    assert not torch.allclose(means[0], means[1])
    np.testing.assert_allclose(ensemble, np.mean([m.predict(test) for m in models], axis=0), rtol=1e-5, atol=1e-6)


def test_nearest_source_rows_ties_go_to_the_later_frame_and_stay_in_the_track():
    have = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    track = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(nearest_source_rows(track, have), [0, 0, 3, 3, 3, 7, 7, 7, -1, -1])
    np.testing.assert_array_equal(nearest_source_rows(track, have, ties="earlier"), [0, 0, 3, 3, 3, 3, 7, 7, -1, -1])


def test_impute_nearest_copies_features_and_marks_frames():
    table = _table(n_tracks=2, length=10, face_every=3)   # faces at rows 0, 3, 6, 9, 12, ...
    out = impute_nearest(table)
    assert out.visual_mask.all()
    np.testing.assert_array_equal(out.imputed, ~table.visual_mask)
    np.testing.assert_array_equal(out.visual[1], table.visual[0])
    np.testing.assert_array_equal(out.visual[2], table.visual[3])
    np.testing.assert_array_equal(out.visual[10], table.visual[12])   # track 2 starts at row 10: no face at 10
    np.testing.assert_array_equal(out.audio, table.audio)
    assert out.subset(["t1"]).imputed.sum() == (~table.visual_mask[10:]).sum()


@pytest.mark.parametrize("strategy", ["median", "mean", "gaussian", "vote"])
@pytest.mark.parametrize("edge", ["truncate", "replicate"])
def test_smoothing_skips_imputed_frames(strategy, edge):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 8)).astype(np.float32)
    skip = rng.random(60) < 0.3
    out = smooth_logits_skipping(logits, 9, strategy, skip=skip, edge=edge, sigma_divisor=4.0)
    assert out.shape == logits.shape
    padded = np.pad(logits, [(4, 4), (0, 0)], mode="edge") if edge == "replicate" else None
    pskip = np.pad(skip, 4, mode="edge") if edge == "replicate" else None
    w = np.exp(-np.arange(-4, 5) ** 2 / (2 * (9 / 4.0) ** 2))
    for t in (0, 2, 30, 59):
        if edge == "replicate":
            x, keep, d = padded[t:t + 9], ~pskip[t:t + 9], np.arange(-4, 5)
        else:
            lo, hi = max(t - 4, 0), min(t + 5, 60)
            x, keep, d = logits[lo:hi], ~skip[lo:hi], np.arange(lo, hi) - t
        x, d = x[keep], d[keep]
        if strategy == "median":
            expected = np.median(x, axis=0)
        elif strategy == "mean":
            expected = x.mean(0)
        elif strategy == "vote":
            expected = np.bincount(x.argmax(1), minlength=8)
        else:
            ww = w[d + 4]
            expected = (x * ww[:, None]).sum(0) / ww.sum()
        np.testing.assert_allclose(out[t], expected, rtol=1e-5, atol=1e-6)
    # nothing skipped: exactly the ordinary smoothing
    np.testing.assert_allclose(smooth_logits_skipping(logits, 9, strategy, skip=None, edge=edge),
                               smooth_logits(logits, 9, strategy, edge=edge), rtol=1e-6)


def test_window_without_usable_frames_takes_the_nearest_result():
    logits = np.zeros((20, 8), dtype=np.float32)
    logits[:, 2] = np.arange(20)
    skip = np.zeros(20, dtype=bool)
    skip[5:16] = True
    out = smooth_logits_skipping(logits, 3, "median", skip=skip)[:, 2]
    # windows of frames 6..14 hold only skipped frames: they take the raw logits of the nearest usable
    # frame, 4 or 16 (frame 10 is as near to 4 as to 16: the earlier, as the reference code's argmin)
    assert out[4] == pytest.approx(3.5) and out[5] == pytest.approx(4.0) and out[15] == pytest.approx(16.0)
    np.testing.assert_allclose(out[6:11], 4.0)
    np.testing.assert_allclose(out[11:15], 16.0)


@pytest.mark.parametrize("strategy", ["median", "mean", "gaussian", "vote"])
def test_sweep_with_replicated_edges_and_quarter_sigma_matches_direct_smoothing(strategy):
    from kitlib.metrics import macro_f1
    from kitlib.smoothing import sweep

    rng = np.random.default_rng(1)
    logits = {f"v{i}": rng.normal(size=(n, 8)).astype(np.float32) for i, n in enumerate((30, 7, 50))}
    labels = {t: rng.integers(-1, 8, len(x)) for t, x in logits.items()}
    table = sweep(logits, labels, windows=[5, 21], strategies=[strategy], edge="replicate", sigma_divisor=4.0,
                  progress=False)
    y = np.concatenate(list(labels.values()))
    for window in (5, 21):
        pred = np.concatenate([smooth_logits(x, window, strategy, edge="replicate", sigma_divisor=4.0).argmax(1)
                               for x in logits.values()])
        got = table[(table.strategy == strategy) & (table.window == window)]["f1"].item()
        assert got == pytest.approx(macro_f1(y, pred))
    with pytest.raises(ValueError, match="replicate"):
        smooth_logits(logits["v0"], 5, "mean", edge="wrap")


def test_torch_linear_probe_option():
    from kitlib.metrics import linear_probe_f1, torch_linear_probe_f1

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 600)
    X = rng.normal(size=(600, 10)).astype(np.float32) + np.eye(10)[y] * 3
    torch_f1 = linear_probe_f1(X[:400], y[:400], X[400:], y[400:], kind="torch", l2=True, class_weighted=False)
    assert torch_f1 == pytest.approx(torch_linear_probe_f1(X[:400], y[:400], X[400:], y[400:], l2=True,
                                                           class_weighted=False))
    trained = torch_linear_probe_f1(X[:400], y[:400], X[400:], y[400:], batch_size=32, lr=1e-2)
    assert trained > 0.4   # four separable classes of eight: macro F1 over 8 classes is at most 0.5
    short = torch_linear_probe_f1(X[:400], y[:400], X[400:], y[400:], batch_size=32, epochs=1, lr=1e-6)
    assert short < trained
    with pytest.raises(ValueError, match="probe kind"):
        linear_probe_f1(X, y, X, y, kind="svm")
