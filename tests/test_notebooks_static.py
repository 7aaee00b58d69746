"""Notebooks are pages of a report: committed without outputs, no function or class definitions,
one `parameters` cell that takes the params, and every kitlib call they make exists."""
import ast
import json
from pathlib import Path

import pytest

import importlib

from kitlib import config, plots, run

NOTEBOOKS = sorted((config.repo_root() / "notebooks").glob("*.ipynb"))


def test_the_seven_stages_have_notebooks():
    assert [p.stem for p in NOTEBOOKS] == list(run.STAGES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "committed with outputs"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "params =" in "".join(tagged[0]["source"])
    for cell in code:
        tree = ast.parse("".join(cell["source"]))
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defs, f"{path.name}: notebooks call kitlib, they define nothing"
        loops = [n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While))]
        assert not loops, f"{path.name}: loops belong in kitlib"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("stage", "plots"):
                module = {"stage": _stage_module(path), "plots": plots}[node.value.id]
                assert hasattr(module, node.attr), f"{path.name} calls {node.value.id}.{node.attr}, which does not exist"


def _stage_module(path: Path):
    """The wiring module of a notebook: ``kitlib.stages.sNN_<name>`` for ``NN_<name>.ipynb``."""
    return importlib.import_module(f"kitlib.stages.s{path.stem}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_imports_its_own_stage_module_and_plots_only(path):
    nb = json.loads(path.read_text())
    imported = set()
    for cell in (c for c in nb["cells"] if c["cell_type"] == "code"):
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            if isinstance(node, ast.ImportFrom):
                imported |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
    assert imported == {"kitlib.plots", f"kitlib.stages.s{path.stem}"}, imported
