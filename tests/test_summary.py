"""One page per run (summary.json / .html / .md from what the stages wrote) and runs compared."""
import json

import pandas as pd
import pytest
import yaml

from browser import needs_chromium, screenshots
from kitlib import config, summary
from kitlib.tools import compare


def fake_run(root, name, *, epochs=40, gated=0.70, smoothed=0.72, stages=True):
    """A run folder as the stages leave it: params, reports, markers, a figure and a notebook."""
    run_dir = root / name
    cfg = config.load("params/demo.yaml", overrides=[f"run.name={name}", f"fusion.epochs={epochs}"])
    (run_dir / "reports").mkdir(parents=True)
    config.save(cfg, run_dir / "params.yaml")
    (run_dir / "provenance.json").write_text(json.dumps({"git_commit": "abc", "seed": 0, "params_digest": cfg.digest()}))
    pd.DataFrame({"head": ["a_only", "gated", "safe_xattn"], "official_val_f1": [0.6, gated, 0.74],
                  "cv_mean_f1": [0.45, 0.54, 0.51], "cv_std_f1": [0.03, 0.04, 0.07]}).to_csv(
        run_dir / "reports" / "table3_fusion.csv", index=False)
    pd.DataFrame({"strategy": ["single-frame", "median"], "official_val_f1": [gated, smoothed], "cv_mean_f1": [0.54, 0.57],
                  "cv_std_f1": [0.04, 0.05], "window": [1, 51]}).to_csv(run_dir / "reports" / "table4_smoothing.csv", index=False)
    pd.DataFrame({"txtid": ["t1", "t2"], "template_frames": [500, 600], "from_face": [450, 600], "from_audio": [40, 0],
                  "filled": [10, 0]}).to_csv(run_dir / "reports" / "submission_coverage.csv", index=False)
    if stages:
        (run_dir / "stages").mkdir()
        (run_dir / "stages" / "05_fusion_ablation.json").write_text(json.dumps({"stage": "05_fusion_ablation", "seconds": 84.8}))
    for folder, file in (("figures", "table3_val.png"), ("notebooks", "05_fusion_ablation.ipynb")):
        (run_dir / folder).mkdir()
        (run_dir / folder / file).write_bytes(b"x")
    return run_dir


def test_summary_page_has_headline_scores_figures_and_links(tmp_path):
    run_dir = fake_run(tmp_path, "demo")
    page = summary.write(run_dir)
    data = json.loads((run_dir / "summary.json").read_text())
    h = data["headline"]
    assert (h["final_head"], h["official_val_f1"], h["cv_mean_f1"], h["smoothed_official_val_f1"]) == ("gated", 0.7, 0.54, 0.72)
    assert (h["test_tracks"], h["test_frames"], h["test_frames_filled"]) == (2, 1100, 10)
    assert h["best_head"] == {"head": "safe_xattn", "official_val_f1": 0.74}
    text = page.read_text()
    assert '<img src="figures/table3_val.png"' in text and 'href="notebooks/05_fusion_ablation.ipynb"' in text
    assert "0.540 ± 0.040" in text and "1 min 25 s" in text
    assert "| official validation macro F1 | 0.700 |" in (run_dir / "summary.md").read_text()
    assert "official val F1 0.700" in summary.terminal_lines(run_dir)


def test_summary_of_an_unfinished_run_shows_dashes(tmp_path):
    run_dir = tmp_path / "early"
    run_dir.mkdir()
    config.save(config.load("params/demo.yaml"), run_dir / "params.yaml")
    h = json.loads((summary.write(run_dir).parent / "summary.json").read_text())["headline"]
    assert h["official_val_f1"] is None and h["test_frames"] is None
    assert "—" in (run_dir / "summary.html").read_text()


def test_compare_shows_the_params_that_differ_and_the_scores(tmp_path, capsys):
    fake_run(tmp_path, "demo")
    fake_run(tmp_path, "demo-e5", epochs=5, gated=0.61)
    (tmp_path / "not-a-run").mkdir()
    assert compare.main([str(p) for p in sorted(tmp_path.iterdir())] + ["--out", str(tmp_path / "cmp")]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert list(table["run"]) == ["demo", "demo-e5"] and list(table["fusion.epochs"]) == [40, 5]
    assert "run.name" not in table and "fusion.hidden" not in table            # only what differs
    assert list(table["official val F1"]) == pytest.approx([0.7, 0.61])
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 5000
    assert "fusion.epochs" in capsys.readouterr().out


def test_flatten_keeps_lists_as_leaves():
    assert compare.flatten(yaml.safe_load("a: {b: 1, c: [1, 2]}\nd: x")) == {"a.b": 1, "a.c": "[1, 2]", "d": "x"}


def test_summary_page_links_resolve_plays_the_overlay_and_widens_wide_figures(tmp_path):
    import matplotlib.pyplot as plt

    run_dir = fake_run(tmp_path, "demo")
    for name, size in (("face_coverage", (12, 3)), ("confusion_final", (5, 4))):
        fig = plt.figure(figsize=size)
        fig.savefig(run_dir / "figures" / f"{name}.png", dpi=100)
        plt.close(fig)
    (run_dir / "figures" / "overlay_t1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    for name in ("params.yaml", "logs/05_fusion_ablation.log"):
        (run_dir / name).parent.mkdir(exist_ok=True)
        (run_dir / name).touch()
    page = summary.write(run_dir)
    text = page.read_text()
    assert summary.broken_links(page) == []
    assert '<video src="figures/overlay_t1.mp4" controls' in text and 'href="figures/overlay_t1.mp4"' in text
    assert '<figure class=wide><a href="figures/face_coverage.png">' in text
    assert '<figure><a href="figures/confusion_final.png">' in text
    assert "[overlay_t1.mp4](figures/overlay_t1.mp4)" in (run_dir / "summary.md").read_text()
    (run_dir / "figures" / "face_coverage.png").unlink()
    assert summary.broken_links(page) == ["figures/face_coverage.png", "figures/face_coverage.png"]


def test_the_terminal_total_is_the_page_total(tmp_path):
    from kitlib import run

    run_dir = fake_run(tmp_path, "demo")
    (run_dir / "stages" / "06_smoothing_sweep.json").write_text(json.dumps({"stage": "06_smoothing_sweep", "seconds": 30.4}))
    page = json.loads((summary.write(run_dir).with_suffix(".json")).read_text())
    assert page["total_seconds"] == 115.2
    assert run.total_line(run_dir, ["05_fusion_ablation", "06_smoothing_sweep"]).startswith(
        "all selected stages finished in 1 min 55 s;")
    assert "(1 min 55 s for all 2 stages of the run folder)" in run.total_line(run_dir, ["06_smoothing_sweep"])


@needs_chromium
def test_summary_page_in_headless_chromium(tmp_path):
    """The page as a browser shows it: every image decodes, every link and the video name a readable file."""
    import matplotlib.pyplot as plt

    run_dir = fake_run(tmp_path, "demo")
    fig = plt.figure(figsize=(12, 3))
    fig.savefig(run_dir / "figures" / "table3_val.png", dpi=100)     # a real PNG over the stand-in bytes
    plt.close(fig)
    (run_dir / "figures" / "overlay_t1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    page = summary.write(run_dir)
    report = screenshots.check_page(page)
    assert {i["src"] for i in report["images"]} == {"figures/table3_val.png"}
    assert all(i["ok"] for i in report["images"]) and all(link["ok"] for link in report["links"]), report
    assert {"notebooks/05_fusion_ablation.ipynb", "figures/overlay_t1.mp4"} <= {link["url"] for link in report["links"]}
    shot = screenshots.screenshot(page, tmp_path / "summary.png", height=900)
    assert shot.stat().st_size > 10_000
    (run_dir / "notebooks" / "05_fusion_ablation.ipynb").unlink()         # the browser sees a broken link too
    (run_dir / "figures" / "table3_val.png").write_bytes(b"not a png")
    report = screenshots.check_page(page)
    assert not report["images"][0]["ok"]
    assert [link["url"] for link in report["links"] if not link["ok"]] == ["notebooks/05_fusion_ablation.ipynb"]
