"""Runs side by side: the params that differ between them and their headline scores, as one table and one plot.

    python -m kitlib.tools.compare outputs/*                  # table on the terminal, compare.csv + compare.png in outputs/
    python -m kitlib.tools.compare outputs/demo outputs/demo-e5 --out /tmp/cmp
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import yaml

from kitlib import summary
from kitlib.config import flatten

SCORES = {"official_val_f1": "official val F1", "cv_mean_f1": "5-fold mean F1",
          "smoothed_official_val_f1": "smoothed official val F1", "smoothed_cv_mean_f1": "smoothed 5-fold mean F1"}
IGNORED = ("run.name",)       # differs by construction


def compare(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per run folder (those with a ``params.yaml``): the differing params, then the scores."""
    rows, params = [], {}
    for run_dir in run_dirs:
        if not (run_dir / "params.yaml").is_file():
            continue
        params[run_dir.name] = flatten(yaml.safe_load((run_dir / "params.yaml").read_text()))
        head = summary.headline(run_dir)
        rows.append({"run": run_dir.name, **{label: head[key] for key, label in SCORES.items()},
                     "final head": head["final_head"]})
    if not rows:
        raise SystemExit("no run folders (with params.yaml) among: " + ", ".join(map(str, run_dirs)))
    keys = sorted({k for p in params.values() for k in p} - set(IGNORED))
    differ = [k for k in keys if len({repr(p.get(k)) for p in params.values()}) > 1]
    table = pd.DataFrame(rows)
    for key in differ:
        table.insert(len(table.columns) - len(SCORES) - 1, key, [params[r].get(key) for r in table["run"]])
    return table


def plot(table: pd.DataFrame):
    """Grouped bars: each headline score per run, legend outside the bars."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    long = table.melt(id_vars="run", value_vars=list(SCORES.values()), var_name="score", value_name="macro F1").dropna()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(table) + 3), 3.6))
    sns.barplot(long, x="run", y="macro F1", hue="score", ax=ax)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1), title=None)
    ax.set_xlabel("run"), ax.set_ylabel("macro F1"), ax.set_ylim(0, 1)
    ax.set_title("Runs compared: headline scores")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kitlib.tools.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (outputs/<run.name>)")
    parser.add_argument("--out", type=Path, help="where compare.csv and compare.png go (default: the runs' parent)")
    args = parser.parse_args(argv)
    table = compare([p for p in args.runs if p.is_dir()])
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    out = args.out or args.runs[0].resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "compare.csv", index=False)
    fig = plot(table)
    fig.savefig(out / "compare.png", dpi=120, bbox_inches="tight")
    print(f"\n{out / 'compare.csv'}\n{out / 'compare.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
