"""Stage 07 under bad input, on a miniature finished run (tests/minirun.py): features that do not match the
store's manifest or the final head, a test track with no face and no audio, a test video that is missing, a
test track without ground truth in the demo scorer."""
import logging

import numpy as np
import pytest

from kitlib.data import submission
from kitlib.stages import common, s07_submission
from kitlib.store import FeatureMismatch, FeatureStore
from minirun import DIM_A, DIM_V, FRAMES, TEST, make_run


def _replace(cfg, kind, name, dim, *, manifest=False):
    store = FeatureStore(cfg.run_dir / "features", kind)
    store.save(name, frame_index=np.arange(1, FRAMES + 1), features=np.ones((FRAMES, dim)), mask=np.ones(FRAMES, bool))
    if manifest:
        store.write_manifest({"feature_dim": dim})
    return store.path(name)


@pytest.mark.parametrize("ensemble", ["true", "false"])
def test_replaced_feature_file_is_named_not_used(tmp_path, ensemble):
    cfg = make_run(tmp_path, f"submission.ensemble_folds={ensemble}")
    bad = _replace(cfg, "visual", TEST[1], 512)                 # not the first file read
    with pytest.raises(FeatureMismatch) as err:
        s07_submission.make_submission(cfg, common.data_index(cfg))
    message = str(err.value)
    assert str(bad) in message and f"{FRAMES} frames x 512" in message and f"{FRAMES} frames x {DIM_V}" in message
    assert not (cfg.run_dir / "submission" / cfg.submission.filename).exists()


def test_replaced_training_features_stop_the_fold_ensemble(tmp_path):
    cfg = make_run(tmp_path, "submission.ensemble_folds=true")
    bad = _replace(cfg, "audio", "trainB", 512)
    with pytest.raises(FeatureMismatch, match=str(bad)):
        s07_submission.make_submission(cfg, common.data_index(cfg))


def test_features_of_another_dimension_than_the_head_are_refused(tmp_path):
    cfg = make_run(tmp_path, "submission.ensemble_folds=true")
    for name in ("trainA", "trainB", "trainC", "valA", *TEST):  # re-extracted consistently, stage 05 not re-run
        _replace(cfg, "visual", name, 512)
    FeatureStore(cfg.run_dir / "features", "visual").write_manifest({"feature_dim": 512})
    with pytest.raises(ValueError, match=rf"final_head.pt was trained on visual features of dim {DIM_V}.*512"):
        s07_submission.make_submission(cfg, common.data_index(cfg))


def test_track_without_face_or_audio_gets_the_prior(tmp_path, caplog):
    cfg = make_run(tmp_path)
    for kind, dim in (("visual", DIM_V), ("audio", DIM_A)):
        FeatureStore(cfg.run_dir / "features", kind).save(TEST[0], frame_index=np.arange(1, FRAMES + 1),
                                                          features=np.zeros((FRAMES, dim)), mask=np.zeros(FRAMES, bool))
    for kind, dim in (("visual", DIM_V), ("audio", DIM_A)):
        FeatureStore(cfg.run_dir / "features", kind).write_manifest({"feature_dim": dim})
    index = common.data_index(cfg)
    labels = common.frame_labels(cfg, index)
    prior = int(np.bincount(np.concatenate(list(labels.values())), minlength=8).argmax())
    with caplog.at_level(logging.WARNING):
        out = s07_submission.make_submission(cfg, index)
    coverage = out["coverage"].set_index("txtid")
    assert coverage.loc[TEST[0], "from_prior"] == FRAMES and coverage.loc[TEST[1], "from_prior"] == 0
    lines = out["path"].read_text().splitlines()[1:]
    assert {line.split(",")[1] for line in lines if line.startswith(TEST[0])} == {str(prior)}
    assert any(TEST[0] in r.message and "no face and no audio" in r.message for r in caplog.records)
    assert submission.validate_submission(out["path"], cfg.data_path(cfg.data.test_template)) == 2 * FRAMES


def test_test_name_with_missing_video_is_named_as_such(tmp_path):
    cfg = make_run(tmp_path)
    cfg.data_path(f"videos/{TEST[1]}.mp4").unlink()
    with pytest.raises(submission.SubmissionError) as err:
        s07_submission.make_submission(cfg, common.data_index(cfg))
    assert f"{TEST[1]}: in the test list" in str(err.value) and "no video" in str(err.value)
    assert "not in the test list" not in str(err.value)


def test_demo_scorer_skips_a_test_track_without_truth(tmp_path, caplog):
    cfg = make_run(tmp_path)
    out = s07_submission.make_submission(cfg, common.data_index(cfg))
    truth = cfg.data_path("truth")
    truth.mkdir()
    np.savez(truth / f"{TEST[0]}.npz", labels=np.zeros(FRAMES, np.int64))
    with caplog.at_level(logging.WARNING):
        table = s07_submission.score_demo_test(cfg, common.data_index(cfg), out["path"])
    assert table["frames"].tolist() == [FRAMES] and table["tracks_without_truth"].tolist() == [1]
    assert any(TEST[1] in r.message and "no ground truth" in r.message for r in caplog.records)
