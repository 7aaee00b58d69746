"""Notebooks are committed without outputs (executed copies live in the run folder): check or strip them.

    python -m kitlib.tools.notebooks check notebooks/*.ipynb     # exit 1 naming each notebook with outputs
    python -m kitlib.tools.notebooks strip notebooks/*.ipynb     # remove outputs and execution counts in place

The git pre-commit hook (``.githooks/pre-commit``, enabled by ``make hooks``; or the ``pre-commit``
tool with ``.pre-commit-config.yaml``) runs ``check`` on the staged notebooks.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def dirty_cells(nb: dict) -> int:
    """Code cells that carry outputs or an execution count."""
    return sum(1 for c in nb.get("cells", []) if c.get("cell_type") == "code"
               and (c.get("outputs") or c.get("execution_count") is not None))


def strip(nb: dict) -> dict:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell.get("metadata", {}).pop("execution", None)            # papermill / JupyterLab timing
        cell.get("metadata", {}).pop("papermill", None)
    nb.get("metadata", {}).pop("papermill", None)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kitlib.tools.notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("check", "strip"))
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args(argv)
    bad = []
    for path in args.paths:
        if path.suffix != ".ipynb":
            continue
        nb = json.loads(path.read_text())
        if not dirty_cells(nb):
            continue
        if args.action == "strip":
            path.write_text(json.dumps(strip(nb), indent=1, ensure_ascii=False) + "\n")
            print(f"stripped {path}")
        else:
            bad.append(path)
            print(f"{path}: {dirty_cells(nb)} cells with outputs; run: python -m kitlib.tools.notebooks strip {path}",
                  file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
