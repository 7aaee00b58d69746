"""Render a text file (terminal output) as a PNG, dark terminal style, monospace.

Usage: .venv/bin/python docs/images/text_png.py LOG.txt OUT.png "title"
"""
import sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

src, dst = sys.argv[1], sys.argv[2]
title = sys.argv[3] if len(sys.argv) > 3 else ""
lines = open(src, encoding="utf-8").read().rstrip("\n").split("\n")
width = min(170, max(len(l) for l in lines))
lines = [l if len(l) <= width else l[: width - 1] + "…" for l in lines]
fig = plt.figure(figsize=(width * 0.075 + 0.4, len(lines) * 0.17 + 0.8))
fig.patch.set_facecolor("#1e1e1e")
colour = lambda l: "#ff6b6b" if "✗" in l or "Error" in l else "#7ee787" if l.startswith(("✓", "[", "summary", "page", "preflight")) else "#d0d0d0"
for i, line in enumerate(lines):
    fig.text(0.01, 1 - (i + 2.2) / (len(lines) + 2.6), line, family="DejaVu Sans Mono", size=9, color=colour(line), va="center")
if title:
    fig.suptitle(title, color="white", size=10, x=0.01, ha="left")
fig.savefig(dst, dpi=110, facecolor=fig.get_facecolor())
print(dst)
