"""One page per run: ``<run>/summary.json`` and ``<run>/summary.html`` say how the run went.

Read from what the stages wrote (``reports/*.csv``, ``stages/*.json``, ``params.yaml``,
``provenance.json``), so it works on any run folder, finished or not: the headline scores (the
final head on the official validation split and over the folds, after smoothing, the test coverage
of the submission), the stage times, the figures and links to the executed notebooks. The runner
writes it at the end of every run; ``python -m kitlib.tools.compare`` puts several side by side.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from kitlib.store import write_json_atomic, write_text_atomic


def _csv(run_dir: Path, name: str) -> pd.DataFrame:
    path = run_dir / "reports" / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if out != out else round(out, 4)       # NaN -> None (JSON null)


def headline(run_dir: Path) -> dict[str, Any]:
    """The scores a reader looks for first; a score whose stage has not run is None."""
    run_dir = Path(run_dir)
    params = yaml.safe_load((run_dir / "params.yaml").read_text()) if (run_dir / "params.yaml").is_file() else {}
    fusion, smoothing = params.get("fusion", {}), params.get("smoothing", {})
    final_head = fusion.get("final_head")
    out: dict[str, Any] = {"final_head": final_head, "official_val_f1": None, "cv_mean_f1": None, "cv_std_f1": None,
                           "smoothing": f"{smoothing.get('final_strategy')} {smoothing.get('final_window')}",
                           "smoothed_official_val_f1": None, "smoothed_cv_mean_f1": None, "test_tracks": None,
                           "test_frames": None, "test_frames_filled": None, "best_head": None}
    t3 = _csv(run_dir, "table3_fusion")
    if len(t3):
        row = t3[t3["head"] == final_head]
        if len(row):
            out.update(official_val_f1=_num(row["official_val_f1"].iloc[0]), cv_mean_f1=_num(row.get("cv_mean_f1", pd.Series([None])).iloc[0]),
                       cv_std_f1=_num(row.get("cv_std_f1", pd.Series([None])).iloc[0]))
        best = t3.loc[t3["official_val_f1"].idxmax()]
        out["best_head"] = {"head": best["head"], "official_val_f1": _num(best["official_val_f1"])}
    t4 = _csv(run_dir, "table4_smoothing")
    if len(t4):
        row = t4[t4["strategy"] == smoothing.get("final_strategy")]
        if len(row):
            out.update(smoothed_official_val_f1=_num(row["official_val_f1"].iloc[0]),
                       smoothed_cv_mean_f1=_num(row["cv_mean_f1"].iloc[0]) if "cv_mean_f1" in row else None)
    cov = _csv(run_dir, "submission_coverage")
    if len(cov):
        out.update(test_tracks=int(len(cov)), test_frames=int(cov["template_frames"].sum()),
                   test_frames_filled=int(cov["filled"].sum()))
    return out


def build(run_dir: Path) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data."""
    run_dir = Path(run_dir)
    stages = []
    for marker in sorted((run_dir / "stages").glob("*.json")):
        record = json.loads(marker.read_text())
        stages.append({"stage": record.get("stage", marker.stem), "seconds": record.get("seconds"),
                       "finished": record.get("finished")})
    prov = json.loads((run_dir / "provenance.json").read_text()) if (run_dir / "provenance.json").is_file() else {}
    submission = sorted((run_dir / "submission").glob("*.txt")) if (run_dir / "submission").is_dir() else []
    return {"run": run_dir.name, "run_dir": str(run_dir), "headline": headline(run_dir), "stages": stages,
            "total_seconds": round(sum(s["seconds"] or 0 for s in stages), 1),
            "provenance": {k: prov.get(k) for k in ("git_commit", "git_dirty", "params_digest", "seed", "command",
                                                    "started", "gpu", "python")},
            "random_weights": prov.get("random_weights") or [],
            "figures": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "figures").glob("*.png")),
            "wide_figures": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "figures").glob("*.png")
                                   if _is_wide(p)),
            "videos": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "figures").glob("*.mp4")),
            "notebooks": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "notebooks").glob("*.ipynb")),
            "logs": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "logs").glob("*.log")),
            "reports": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "reports").glob("*.csv")),
            "submission": [str(p.relative_to(run_dir)) for p in submission]}


WIDE_PX = 900   # a figure at least this wide (pixels) gets the page's whole width, so that its text stays readable


def _is_wide(png: Path) -> bool:
    """Whether a PNG is ``WIDE_PX`` or wider (its width, from the IHDR chunk: no image library needed)."""
    with png.open("rb") as f:
        head = f.read(24)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") >= WIDE_PX


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def render_html(summary: dict[str, Any]) -> str:
    """A self-contained page (figures and notebooks linked by relative path, so the folder can move)."""
    h, esc = summary["headline"], html.escape
    cv = "—" if h["cv_mean_f1"] is None else f"{h['cv_mean_f1']:.3f} ± {h['cv_std_f1'] or 0:.3f}"
    rows = [("final head", esc(str(h["final_head"]))), ("official validation macro F1", _score(h["official_val_f1"])),
            ("5-fold macro F1 (mean ± std)", cv),
            (f"after smoothing ({esc(h['smoothing'])}): official validation", _score(h["smoothed_official_val_f1"])),
            (f"after smoothing ({esc(h['smoothing'])}): fold mean", _score(h["smoothed_cv_mean_f1"])),
            ("test coverage", "—" if h["test_frames"] is None else
             f"{h['test_tracks']} tracks, {h['test_frames']:,} frames, {h['test_frames_filled']:,} filled by the fill policy")]
    if h["best_head"]:
        rows.append(("best head on official validation", f"{esc(str(h['best_head']['head']))} "
                     f"({_score(h['best_head']['official_val_f1'])})"))
    stages = "".join(f"<tr><td>{esc(s['stage'])}</td><td>{_duration(s['seconds'])}</td><td>{esc(str(s['finished']))}</td></tr>"
                     for s in summary["stages"])
    links = lambda items: " · ".join(f'<a href="{esc(p)}">{esc(Path(p).name)}</a>' for p in items) or "—"  # noqa: E731
    wide = set(summary.get("wide_figures", ()))
    figures = "".join(f'<figure{" class=wide" if p in wide else ""}><a href="{esc(p)}"><img src="{esc(p)}" '
                      f'alt="{esc(Path(p).stem)}"></a><figcaption>{esc(Path(p).stem)}</figcaption></figure>'
                      for p in summary["figures"])
    posters = {str(Path(p).with_suffix("")) for p in summary["figures"]}     # overlay_<txtid>.png: its first frame
    videos = "".join(f'<figure class=wide><video src="{esc(p)}" controls muted loop preload="metadata" width="640"'
                     + (f' poster="{esc(str(Path(p).with_suffix(".png")))}"' if str(Path(p).with_suffix("")) in posters
                        else "")
                     + f'></video><figcaption><a href="{esc(p)}">{esc(Path(p).name)}</a></figcaption></figure>'
                     for p in summary.get("videos", ()))
    prov = summary["provenance"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>run {esc(summary['run'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:0.5em 0 1.5em}}td,th{{border-bottom:1px solid #ddd;padding:4px 12px;text-align:left}}
td:nth-child(2){{font-variant-numeric:tabular-nums}}figure{{display:inline-block;margin:8px;vertical-align:top}}
img{{max-width:520px;max-height:360px;border:1px solid #eee}}figcaption{{font-size:0.85em;color:#555}}
figure.wide{{display:block}}figure.wide img{{max-width:100%;max-height:none}}video{{max-width:100%}}</style></head>
<body><h1>Run <code>{esc(summary['run'])}</code></h1>
<p>{esc(summary['run_dir'])} · commit <code>{esc(str(prov.get('git_commit')))}</code>{' (dirty tree)' if prov.get('git_dirty') else ''}
 · params digest <code>{esc(str(prov.get('params_digest')))}</code> · seed {esc(str(prov.get('seed')))}
 · <a href="params.yaml">params.yaml</a> · <a href="provenance.json">provenance.json</a></p>
{_random_banner_html(summary)}<h2>Headline</h2><table>{''.join(f'<tr><td>{k}</td><td>{v}</td></tr>' for k, v in rows)}</table>
<h2>Stages</h2><table><tr><th>stage</th><th>took</th><th>finished</th></tr>{stages}
<tr><td><b>total</b></td><td><b>{_duration(summary['total_seconds'])}</b></td><td></td></tr></table>
<p>Executed notebooks: {links(summary['notebooks'])}</p><p>Logs: {links(summary['logs'])}</p>
<p>Submission: {links(summary['submission'])}</p><p>Reports: {links(summary['reports'])}</p>
<p>Videos: {links(summary.get('videos', ()))}</p>
{'<h2>Overlay video</h2>' + videos if videos else ''}
<h2>Figures</h2>{figures or '<p>none yet</p>'}
</body></html>
"""


def random_weights_line(summary: dict[str, Any]) -> str:
    """The warning a rehearsal's page and terminal carry: which models had random weights."""
    return ("REHEARSAL, RANDOM WEIGHTS: " + "; ".join(summary["random_weights"])
            + ". These scores come from untrained models and mean nothing.")


def _random_banner_html(summary: dict[str, Any]) -> str:
    if not summary.get("random_weights"):
        return ""
    return (f'<p style="background:#c62828;color:#fff;padding:10px;font-weight:bold">'
            f'{html.escape(random_weights_line(summary))}</p>')


def render_markdown(summary: dict[str, Any]) -> str:
    h = summary["headline"]
    lines = [f"# Run `{summary['run']}`", ""] + ([f"**{random_weights_line(summary)}**", ""]
                                                 if summary.get("random_weights") else []) + ["| | |", "| --- | --- |",
             f"| final head | {h['final_head']} |", f"| official validation macro F1 | {_score(h['official_val_f1'])} |",
             f"| 5-fold macro F1 | {_score(h['cv_mean_f1'])} ± {_score(h['cv_std_f1'])} |",
             f"| after smoothing ({h['smoothing']}), official validation | {_score(h['smoothed_official_val_f1'])} |",
             f"| after smoothing, fold mean | {_score(h['smoothed_cv_mean_f1'])} |",
             f"| test frames (filled) | {h['test_frames']} ({h['test_frames_filled']}) |", ""]
    lines += [f"- {s['stage']}: {_duration(s['seconds'])}" for s in summary["stages"]]
    lines += [""] + [f"- video: [{Path(p).name}]({p})" for p in summary.get("videos", ())]
    lines += [""] + [f"![{Path(p).stem}]({p})" for p in summary["figures"]]
    return "\n".join(lines) + "\n"


def _duration(seconds: float | None) -> str:
    from kitlib.progress import duration

    return "—" if seconds is None else duration(seconds)


def page_links(page: Path) -> list[str]:
    """Every ``href`` and ``src`` of an HTML page (the summary page's figures, video, notebooks, reports)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Links(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(value for name, value in attrs if name in ("href", "src") and value)

    Links().feed(Path(page).read_text(encoding="utf-8"))
    return found


def broken_links(page: Path) -> list[str]:
    """The page's relative links that name no file beside it (web addresses and anchors are not checked)."""
    from urllib.parse import unquote, urlsplit

    out = []
    for link in page_links(page):
        parts = urlsplit(link)
        if parts.scheme or parts.netloc or not parts.path:
            continue
        if not (Path(page).parent / unquote(parts.path)).exists():
            out.append(link)
    return out


def write(run_dir: Path) -> Path:
    """Write ``summary.json``, ``summary.html`` and ``summary.md`` into the run folder; return the HTML path."""
    run_dir = Path(run_dir)
    summary = build(run_dir)
    write_json_atomic(run_dir / "summary.json", summary)
    write_text_atomic(run_dir / "summary.md", render_markdown(summary))
    write_text_atomic(run_dir / "summary.html", render_html(summary))
    return run_dir / "summary.html"


def terminal_lines(run_dir: Path) -> str:
    """The runner's closing lines: the headline scores and where the page is (writes the page)."""
    page = write(run_dir)
    h = headline(run_dir)
    built = build(run_dir)
    banner = random_weights_line(built) + "\n" if built["random_weights"] else ""
    parts = [f"{h['final_head']}: official val F1 {_score(h['official_val_f1'])}"]
    if h["cv_mean_f1"] is not None:
        parts.append(f"5-fold {_score(h['cv_mean_f1'])} ± {_score(h['cv_std_f1'])}")
    if h["smoothed_official_val_f1"] is not None:
        parts.append(f"after {h['smoothing']} smoothing {_score(h['smoothed_official_val_f1'])}")
    if h["test_frames"] is not None:
        parts.append(f"test: {h['test_frames']:,} frames in {h['test_tracks']} tracks ({h['test_frames_filled']:,} filled)")
    return banner + "summary: " + "; ".join(parts) + f"\npage: {page}"
