"""The README's pictures of a run, taken by a real browser: headless Chromium (Debian's ``chromium``)
opens the run's ``summary.html`` and an executed notebook (converted to HTML by nbconvert, as JupyterLab's
"export as HTML" does) and saves what it shows. Before the summary page's picture, Chromium checks the
page: every image loaded (decoded, non-zero size) and every link names a file.

    .venv/bin/python docs/images/screenshots.py outputs/demo                 # -> docs/images/summary_page.png,
                                                                             #    docs/images/notebook_page.png
    .venv/bin/python docs/images/screenshots.py outputs/demo --out /tmp/pics --notebook 06_smoothing_sweep

Needs ``chromium`` on the PATH (``apt-get install chromium``; ``CHROMIUM=/path`` for another binary).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECKER = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="page" src="{page}" style="width:1200px;height:900px"></iframe>
<script>
const frame = document.getElementById("page");
frame.addEventListener("load", async () => {{
  const doc = frame.contentDocument;
  const images = [...doc.images].map(img => ({{src: img.getAttribute("src"), ok: img.complete && img.naturalWidth > 0}}));
  const targets = [...doc.querySelectorAll("a[href], video[src]")].map(el => el.getAttribute("href") || el.getAttribute("src"))
      .filter(url => !/^[a-z]+:/i.test(url) && !url.startsWith("#"));
  const links = [];
  for (const url of targets) {{
    const ok = await new Promise(done => {{
      const req = new XMLHttpRequest();
      req.onload = () => done(true); req.onerror = () => done(false);
      try {{ req.open("GET", new URL(url, doc.baseURI).href); req.send(); }} catch (e) {{ done(false); }}
    }});
    links.push({{url, ok}});
  }}
  document.getElementById("result").textContent = JSON.stringify({{images, links}});
}});
</script></body></html>
"""


def chromium() -> str | None:
    """The Chromium binary: ``$CHROMIUM``, else ``chromium`` / ``chromium-browser`` / ``google-chrome`` on the PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)


def _headless(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("no chromium on the PATH: apt-get install chromium (or set CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:   # never the user's profile
        command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
                   "--no-first-run", f"--user-data-dir={profile}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 2000) -> Path:
    """A ``width`` x ``height`` picture of ``page`` (an HTML file) as Chromium draws it."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    done = _headless(f"--window-size={width},{height}", f"--screenshot={png}", "--virtual-time-budget=10000",
                     Path(page).resolve().as_uri())
    if not png.is_file():
        raise RuntimeError(f"chromium made no screenshot of {page}: {done.stderr[-2000:]}")
    return png


def check_page(page: Path) -> dict:
    """Open ``page`` in Chromium: ``{"images": [{src, ok}], "links": [{url, ok}]}``; ``ok`` is whether the
    image loaded (decoded, non-zero size) or the link's file could be read."""
    with tempfile.TemporaryDirectory(prefix="page-check-") as tmp:
        checker = Path(tmp) / "check.html"
        checker.write_text(CHECKER.format(page=Path(page).resolve().as_uri()))
        done = _headless("--allow-file-access-from-files", "--virtual-time-budget=15000", "--dump-dom",
                         checker.as_uri())
    start = done.stdout.find('<pre id="result">')
    text = done.stdout[start + len('<pre id="result">'):done.stdout.find("</pre>", start)] if start >= 0 else ""
    if not text.startswith("{"):
        raise RuntimeError(f"chromium did not report on {page} (got {text[:200]!r}): {done.stderr[-2000:]}")
    return json.loads(text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"'))


def notebook_html(notebook: Path, html: Path) -> Path:
    """An executed notebook as a static HTML page (nbconvert's lab template, outputs as they were recorded)."""
    from nbconvert import HTMLExporter
    import nbformat

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(notebook, as_version=4))
    html.write_text(body, encoding="utf-8")
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run folder (with summary.html and notebooks/)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="where the PNGs go")
    parser.add_argument("--notebook", default="05_fusion_ablation", help="the executed notebook to picture")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--summary-height", type=int, default=2300)
    parser.add_argument("--notebook-height", type=int, default=2300)
    args = parser.parse_args(argv)
    page = args.run_dir / "summary.html"
    report = check_page(page)
    bad = [i["src"] for i in report["images"] if not i["ok"]] + [l["url"] for l in report["links"] if not l["ok"]]
    print(f"{page}: {len(report['images'])} images, {len(report['links'])} links checked in Chromium; "
          f"{'broken: ' + ', '.join(bad) if bad else 'all load'}")
    print(screenshot(page, args.out / "summary_page.png", width=args.width, height=args.summary_height))
    with tempfile.TemporaryDirectory(prefix="notebook-html-") as tmp:
        html = notebook_html(args.run_dir / "notebooks" / f"{args.notebook}.ipynb", Path(tmp) / "notebook.html")
        print(screenshot(html, args.out / "notebook_page.png", width=args.width, height=args.notebook_height))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
