"""Notebook tier: the seven notebooks through the runner on the tiny demo params, then checks on
what they recorded (reports, figures, features, the submission) - as a user would look at a run."""
import json

import numpy as np
import pandas as pd
import pytest

from browser import needs_chromium, screenshots
from kitlib import config, data, run, summary
from kitlib.stages import common
from kitlib.data import submission
from kitlib.store import FeatureStore

pytestmark = pytest.mark.slow
CORRUPT = "99-30-256x192"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    items = ["params/demo.yaml", "params/tiny.yaml", f"run.outputs_root={root / 'outputs'}",
             f"data.root={root / 'data'}", f"audio.encoder={root / 'models' / 'wav2vec2-tiny'}",
             f"fusion.text_encoder={root / 'models' / 'text-tiny'}"]          # made by 05: under tmp, not data/
    cfg = config.load(*items[:2], overrides=items[2:])
    # bad input beside the demo: a corrupt video with its annotation; the run must report it and go on
    common.ensure_demo(cfg)
    (root / "data" / "videos" / "batch1" / f"{CORRUPT}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(5000))
    (root / "data" / "annotations" / "Train_Set" / f"{CORRUPT}.txt").write_text(data.HEADER + "\n" + "0\n" * 50)
    assert run.main(items) == 0
    return cfg, cfg.run_dir, items


def test_every_notebook_executed_and_recorded(tiny_run):
    cfg, run_dir, _ = tiny_run
    for stage in run.STAGES:
        nb = json.loads((run_dir / "notebooks" / f"{stage}.ipynb").read_text())
        errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, stage
        assert (run_dir / "stages" / f"{stage}.json").is_file()
    assert config.notebook_config(__import__("yaml").safe_load((run_dir / "params.yaml").read_text())) == cfg
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["packages"]["torch"] == "2.11.0" and prov["seed"] == cfg.run.seed
    for fig in ("fig3_padaug", "stage1_curves", "table1_crops", "table2_alignment", "table3_val", "table3_xattn_grid",
                "confusion_final", "fig4_smoothing", "submission_coverage"):
        assert (run_dir / "figures" / f"{fig}.png").stat().st_size > 5000, fig


def test_data_reports(tiny_run):
    _, run_dir, _ = tiny_run
    videos = pd.read_csv(run_dir / "reports" / "videos.csv", keep_default_na=False)
    corrupt = videos[videos["videoid"] == CORRUPT]
    assert len(corrupt) == 1 and corrupt["error"].iloc[0] and f"{CORRUPT}.mp4" in corrupt["video"].iloc[0]
    left_out = pd.read_csv(run_dir / "reports" / "missing_features_fusion.csv")
    assert list(left_out["txtid"]) == [CORRUPT]
    mismatch = pd.read_csv(run_dir / "reports" / "length_mismatches.csv")
    assert len(mismatch) == 1 and (mismatch["annotation_lines"] - mismatch["decoded_frames"]).iloc[0] == 1
    folds = pd.read_csv(run_dir / "reports" / "folds.csv")
    assert folds.groupby("videoid")["fold"].nunique().max() == 1


def test_features(tiny_run):
    cfg, run_dir, _ = tiny_run
    visual, audio = FeatureStore(run_dir / "features", "visual"), FeatureStore(run_dir / "features", "audio")
    vis_report = pd.read_csv(run_dir / "reports" / "visual_extraction.csv")
    bad = vis_report["txtid"] == CORRUPT
    assert vis_report.loc[bad, "status"].str.startswith("error").all() and bad.sum() == 1
    vis_report = vis_report[~bad]
    assert (vis_report["status"] == "ok").all()
    # a face on most frames; the demo detects every faces.detect_every-th frame and interpolates between
    assert (vis_report["frames"] - vis_report["missing"]).sum() > 0.5 * vis_report["frames"].sum()
    assert vis_report["detected"].sum() > 0.5 * vis_report["frames"].sum() / cfg.faces.detect_every
    for txtid in vis_report["txtid"]:
        v, a = visual.load(txtid), audio.load(txtid)
        assert len(v["frame_index"]) == len(a["frame_index"])
        assert v["features_by_scale"].shape[1] == len(cfg.faces.crop_scales)
        assert np.isfinite(v["features"].astype(np.float32)).all()
    assert visual.read_manifest()["crop_scales"] == cfg.faces.crop_scales


def test_ablation_tables(tiny_run):
    cfg, run_dir, _ = tiny_run
    t1 = pd.read_csv(run_dir / "reports" / "table1_crops.csv")
    assert set(t1["backbone"]) == {"fine-tuned + MoE + PadAug", "pretrained"}     # this run's + table1_states
    crops = ["official crop"] * bool(cfg.data.cropped_aligned_dir) + [f"crop {s}" for s in cfg.faces.crop_scales]
    assert list(t1["crop"][:len(crops) + 1]) == crops + ["multi-scale mean"]
    assert len(t1) == 2 * (len(crops) + 1) and t1["val_f1"].between(0, 1).all()
    assert (run_dir / "features" / "visual" / "boxes.csv").is_file()               # states reuse the detections
    t2 = pd.read_csv(run_dir / "reports" / "table2_alignment.csv")
    assert {"nearest", "linear interpolation", "window mean (0.25 s)"} <= set(t2["alignment"])
    t3 = pd.read_csv(run_dir / "reports" / "table3_fusion.csv")
    assert list(t3["head"]) == cfg.fusion.heads
    assert {"params", "official_val_f1", "cv_mean_f1", "cv_std_f1"} <= set(t3.columns)
    assert (t3["params"] > 0).all()
    grid = pd.read_csv(run_dir / "reports" / "table3_xattn_grid.csv")                # seed 004's Table 3
    assert len(grid) == len(cfg.fusion.xattn_grid) and grid["official_val_f1"].between(0, 1).all()
    t4 = pd.read_csv(run_dir / "reports" / "table4_smoothing.csv")
    assert {"single-frame", *cfg.smoothing.strategies} <= set(t4["strategy"])


def test_submission_validates(tiny_run):
    cfg, run_dir, _ = tiny_run
    path = run_dir / "submission" / cfg.submission.filename
    template = cfg.data_path(cfg.data.test_template)
    n = submission.validate_submission(path, template)
    assert n == len(submission.read_template(template)) > 0


def test_rerun_skips_finished_stages(tiny_run, capsys):
    _, _, items = tiny_run
    assert run.main(items + ["--stages", "06-07"]) == 0
    out = capsys.readouterr().out
    assert "06_smoothing_sweep] finished earlier, skipped" in out


def test_failing_cell_names_notebook_and_error(tiny_run, capsys):
    _, _, items = tiny_run
    # a fusion head that does not exist: stage 05 must fail loudly, naming the cell and the error
    bad = items + ["run.name=tiny-bad", "fusion.heads=[gated, no_such_head]"]
    assert run.main(bad + ["--stages", "05"]) == 1
    err = capsys.readouterr().err
    assert "stage 05_fusion_ablation failed in cell" in err and "no_such_head" in err


def test_stage_logs_summary_page_overlay_and_clean_notebooks(tiny_run):
    """What a user sees of a run: a log per stage, the summary page, the overlay video, and executed
    notebooks without widget warnings, progress-bar redraws or echoed paths."""
    _, run_dir, _ = tiny_run
    for stage in run.STAGES:
        assert "started =====" in (run_dir / "logs" / f"{stage}.log").read_text()
        nb = json.loads((run_dir / "notebooks" / f"{stage}.ipynb").read_text())
        outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
        streams = "".join("".join(o["text"]) for o in outputs if o["output_type"] == "stream")
        assert "IProgress" not in streams and "\r" not in streams, stage
        assert not [o for o in outputs if "PosixPath" in "".join(o.get("data", {}).get("text/plain", ""))], stage
        assert " INFO " not in streams, f"{stage}: the kit's INFO lines belong in the stage log, not the notebook"
        assert "val F1 nan" not in streams + (run_dir / "logs" / f"{stage}.log").read_text(), stage
        note = "".join(nb["cells"][-1]["outputs"][0]["data"]["text/markdown"]) if stage != "01_padaug_preview" else ""
        assert stage == "01_padaug_preview" or ("Data problems so far in this run: 2 (" in note
                                                and "](../reports/data_problems.csv)" in note), (stage, note)
    # each data problem is a warning once per run: in the first notebook that meets it, not again later
    shown = [stage for stage in run.STAGES if "video decodes to" in "".join(
        "".join(o.get("text", "")) for c in json.loads((run_dir / "notebooks" / f"{stage}.ipynb").read_text())["cells"]
        for o in c.get("outputs", []))]
    assert shown == ["01_padaug_preview"], shown
    problems = pd.read_csv(run_dir / "reports" / "data_problems.csv")
    assert sorted(problems["kind"]) == ["length", "video"], problems
    extraction_log = (run_dir / "logs" / "03_crop_extract.log").read_text()
    assert "kitlib.visual.extract INFO" in extraction_log and "videos: 100%" in extraction_log
    page = json.loads((run_dir / "summary.json").read_text())
    assert 0 <= page["headline"]["official_val_f1"] <= 1 and page["headline"]["test_frames"] > 0
    assert len(page["stages"]) == len(run.STAGES) and (run_dir / "summary.html").is_file()
    overlays = list((run_dir / "figures").glob("overlay_*.mp4"))
    assert len(overlays) == 1 and overlays[0].stat().st_size > 10_000 and overlays[0].with_suffix(".png").is_file()


@needs_chromium
def test_summary_page_of_the_tiny_run_in_headless_chromium(tiny_run, tmp_path):
    _, run_dir, _ = tiny_run
    page = run_dir / "summary.html"
    assert summary.broken_links(page) == []
    report = screenshots.check_page(page)
    assert len(report["images"]) >= 9 and all(i["ok"] for i in report["images"]), report["images"]
    assert all(link["ok"] for link in report["links"]), [link for link in report["links"] if not link["ok"]]
    assert any(link["url"].endswith(".mp4") for link in report["links"])
    assert screenshots.screenshot(page, tmp_path / "summary.png").stat().st_size > 50_000
