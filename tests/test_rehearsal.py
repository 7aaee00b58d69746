"""The rehearsal (issue 23): params/abaw10.yaml + params/rehearsal.yaml, 01-07 at real model sizes with
random weights on the generated release-shaped set, to a validated submission.

About 1 h 25 min on 2 shared CPU cores (README, Tests), so it runs only when asked: ``make rehearsal``
(``KIT_REHEARSAL=1 pytest -m rehearsal``); ``make test`` skips it.
"""
import json
import os

import pytest
import yaml

from kitlib import config, run
from kitlib.data import submission
from kitlib.data.demo import release
from kitlib.stages import common

pytestmark = [pytest.mark.slow, pytest.mark.rehearsal,
              pytest.mark.skipif(os.environ.get("KIT_REHEARSAL") != "1",
                                 reason="the rehearsal takes ~1.5 h on 2 cores: make rehearsal (KIT_REHEARSAL=1)")]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    items = ["params/abaw10.yaml", "params/rehearsal.yaml", f"run.outputs_root={root / 'outputs'}",
             f"data.root={root / 'data'}"]
    cfg = config.load(*items[:2], overrides=items[2:])
    assert run.main(items) == 0
    return cfg, cfg.run_dir


def test_real_model_sizes_with_random_weights(rehearsal):
    cfg, run_dir = rehearsal
    visual, audio = common.feature_store(cfg, "visual"), common.feature_store(cfg, "audio")
    assert visual.read_manifest()["feature_dim"] == 1024                  # ViT-L/14: Dv = 1024
    key = visual.keys()[0]
    assert audio.load(key)["features"].shape[1] == 1024                    # wav2vec 2.0 large: Da = 1024
    record = json.loads((run_dir / "stage1" / "backbone.safetensors.json").read_text())
    assert record["arch"] == "vit_large_patch14_dinov2" and record["overrides"] in ({}, None)
    assert record["params"]["amp_dtype"] == "torch.bfloat16"               # abaw10's Stage-I dtype, on the CPU


def test_the_run_says_it_is_a_rehearsal(rehearsal):
    cfg, run_dir = rehearsal
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["random_weights"] == cfg.random_weights() and len(prov["random_weights"]) == 2
    assert "RANDOM WEIGHTS" in (run_dir / "summary.md").read_text()
    assert "RANDOM WEIGHTS" in (run_dir / "summary.html").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["random_weights"] == prov["random_weights"]


def test_release_shaped_data_went_through(rehearsal):
    cfg, run_dir = rehearsal
    index = common.data_index(cfg)
    assert {t.txtid for t in index.tracks} == {t for t, _ in release.selection_rows()}
    folds = yaml.safe_load((run_dir / "params.yaml").read_text())["data"]["folds_file"]
    assert folds == "params/abaw10_folds.csv"                             # the published folds, unchanged


def test_submission_validates(rehearsal):
    cfg, run_dir = rehearsal
    template = cfg.data_path(cfg.data.test_template)
    assert template.name == "ABAW_Expr_test_set_sample.txt"
    n = submission.validate_submission(run_dir / "submission" / cfg.submission.filename, template)
    assert n == len(submission.read_template(template)) > 0
