"""JupyterLab and packaging: notebooks by hand follow the runner's params rule and take a list of params
files; outputs stay out of git; the console script, the install outside the repository, the pins."""
import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest

from kitlib import cli, config
from kitlib.stages import common
from kitlib.tools import notebooks

ROOT = config.repo_root()


def test_notebook_params_accept_a_list_and_refuse_another_runs_folder(tmp_path):
    cfg = config.notebook_config(["params/demo.yaml", "params/tiny.yaml", f"run.outputs_root={tmp_path}"])
    assert cfg.run.name == "tiny" and cfg.stage1.epochs == 1
    common.check_run_params(cfg)                                  # no folder yet: fine
    cfg.run_dir.mkdir(parents=True)
    config.save(cfg, cfg.run_dir / "params.yaml")
    common.check_run_params(cfg)                                  # the folder's own params: fine
    other = config.notebook_config(["params/demo.yaml", "params/tiny.yaml", f"run.outputs_root={tmp_path}",
                                    "fusion.epochs=9"])
    with pytest.raises(config.ConfigError, match=r"other params \(changed: fusion.epochs\)"):
        common.start(other)


def test_notebook_outputs_are_caught_and_stripped(tmp_path, capsys):
    nb = json.loads((ROOT / "notebooks" / "06_smoothing_sweep.ipynb").read_text())
    clean = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"], code["execution_count"] = [{"output_type": "stream", "name": "stdout", "text": ["x\n"]}], 3
    path = tmp_path / "06.ipynb"
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    assert notebooks.main(["check", str(path)]) == 1 and "1 cells with outputs" in capsys.readouterr().err
    assert notebooks.main(["strip", str(path)]) == 0
    assert path.read_text() == clean                              # the committed form, byte for byte
    assert notebooks.main(["check", *map(str, sorted((ROOT / "notebooks").glob("*.ipynb")))]) == 0


def test_pre_commit_hook_refuses_a_staged_notebook_with_outputs(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True)  # noqa: E731
    git("init", "-q")
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": ["1"], "outputs": [], "execution_count": 1}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (repo / "a.ipynb").write_text(json.dumps(nb))
    git("add", "a.ipynb")
    hook = subprocess.run(["sh", str(ROOT / ".githooks" / "pre-commit")], cwd=repo, capture_output=True, text=True,
                          env={"PATH": f"{sys.executable.rsplit('/', 1)[0]}:/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert hook.returncode == 1 and "a.ipynb: 1 cells with outputs" in hook.stderr


def test_console_script_and_data_files_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["abaw-kit"] == "kitlib.cli:main"
    data_files = project["tool"]["setuptools"]["data-files"]
    shipped = set(data_files["share/abaw-expr-kit/params"])
    assert shipped == {f"params/{p.name}" for p in (ROOT / "params").iterdir()
                       if p.suffix in (".yaml", ".csv") and p.name != "local.yaml"}
    assert data_files["share/abaw-expr-kit/notebooks"] == ["notebooks/*.ipynb"]
    assert set(cli.COMMANDS) == {"run", "doctor", "weights", "compare", "export", "predict"}


def test_requires_python_matches_the_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    floor = tuple(int(x) for x in re.search(r">=\s*(\d+)\.(\d+)", project["project"]["requires-python"]).groups())
    for name in ("numpy", "pandas", "scipy"):
        needed = re.search(r">=\s*(\d+)\.(\d+)", metadata.metadata(name)["Requires-Python"]).groups()
        assert floor >= tuple(int(x) for x in needed), name
    assert "Python ≥ 3.11" in (ROOT / "README.md").read_text()


def test_init_copies_the_kit_and_doctor_runs_there(tmp_path, monkeypatch, capsys):
    assert cli.main(["init", str(tmp_path / "kit")]) == 0
    assert (tmp_path / "kit" / "params" / "base.yaml").is_file() and (tmp_path / "kit" / "notebooks").is_dir()
    with pytest.raises(SystemExit, match="exists"):
        cli.init(tmp_path / "kit")
    monkeypatch.setenv("KIT_ROOT", str(tmp_path / "kit"))
    assert cli.main(["doctor", "params/demo.yaml", "--fast"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "kit" / "data" / "demo") in out and "ready to run" in out
    assert cli.main(["nonsense"]) == 2


def test_provenance_records_the_gpu(tmp_path):
    from kitlib import runfolder

    prov = runfolder.provenance(config.load("params/demo.yaml"), ["x"])
    assert {"name", "driver", "cuda_build", "cudnn", "count"} <= set(prov["gpu"])
