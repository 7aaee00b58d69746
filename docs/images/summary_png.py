"""A picture of a run's summary page: its headline table and stage times (from summary.json) over the
page's figures, laid out as the HTML page lays them out (no browser on this machine).

Usage: .venv/bin/python docs/images/summary_png.py outputs/demo docs/images/summary_page.png
"""
import json, sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.image as mpimg

run_dir, dst = Path(sys.argv[1]), sys.argv[2]
s = json.loads((run_dir / "summary.json").read_text())
h = s["headline"]
f = lambda v: "—" if v is None else f"{v:.3f}"
rows = [("final head", h["final_head"]), ("official validation macro F1", f(h["official_val_f1"])),
        ("5-fold macro F1 (mean ± std)", f"{f(h['cv_mean_f1'])} ± {f(h['cv_std_f1'])}"),
        (f"after smoothing ({h['smoothing']}): official validation", f(h["smoothed_official_val_f1"])),
        (f"after smoothing ({h['smoothing']}): fold mean", f(h["smoothed_cv_mean_f1"])),
        ("test coverage", f"{h['test_tracks']} tracks, {h['test_frames']:,} frames, {h['test_frames_filled']:,} filled"),
        ("best head on official validation", f"{h['best_head']['head']} ({f(h['best_head']['official_val_f1'])})")]
from kitlib.progress import duration
stages = [(x["stage"], duration(x["seconds"])) for x in s["stages"]] + [("total", duration(s["total_seconds"]))]
figs = [p for p in ("figures/fig4_smoothing.png", "figures/table3_val.png", "figures/face_coverage.png",
                    "figures/submission_coverage.png", "figures/confusion_final.png") if p in s["figures"]]
overlay = [p for p in s["figures"] if Path(p).name.startswith("overlay_")]
figs = figs[:4] + overlay[:1]
fig = plt.figure(figsize=(14, 15))
fig.text(0.03, 0.975, f"Run {s['run']}   ({s['run_dir']}/summary.html)", size=16, weight="bold")
fig.text(0.03, 0.955, f"commit {s['provenance'].get('git_commit')}  ·  params digest {s['provenance'].get('params_digest')}  ·  seed {s['provenance'].get('seed')}  ·  params.yaml · provenance.json", size=9, color="#444")
fig.text(0.03, 0.93, "Headline", size=13, weight="bold")
for i, (k, v) in enumerate(rows):
    fig.text(0.04, 0.91 - i * 0.017, k, size=10); fig.text(0.36, 0.91 - i * 0.017, str(v), size=10, family="DejaVu Sans Mono")
fig.text(0.62, 0.93, "Stages", size=13, weight="bold")
for i, (k, v) in enumerate(stages):
    fig.text(0.63, 0.91 - i * 0.017, k, size=10, weight="bold" if k == "total" else None); fig.text(0.83, 0.91 - i * 0.017, v, size=10, family="DejaVu Sans Mono")
fig.text(0.03, 0.765, "Executed notebooks: " + " · ".join(Path(p).name for p in s["notebooks"]), size=8, color="#1a5fb4")
fig.text(0.03, 0.75, "Logs: " + " · ".join(Path(p).name for p in s["logs"]) + "   Submission: " + " · ".join(s["submission"]), size=8, color="#1a5fb4")
fig.text(0.03, 0.725, "Figures", size=13, weight="bold")
boxes = [(0.03, 0.50, 0.45, 0.21), (0.52, 0.50, 0.45, 0.21), (0.03, 0.26, 0.45, 0.22), (0.52, 0.26, 0.45, 0.22), (0.03, 0.01, 0.3, 0.24)]
for p, b in zip(figs, boxes):
    ax = fig.add_axes(b); ax.imshow(mpimg.imread(run_dir / p)); ax.set_axis_off(); ax.set_title(Path(p).stem, size=9)
fig.savefig(dst, dpi=80)
print(dst)
