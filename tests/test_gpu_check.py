"""benchmarks/gpu_check.sh: its CPU dry run records every step in one JSON file, and a failing step hides nothing."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_the_script_parses_and_names_its_steps():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    for name in ("environment", "gpu_tests", "visual_pipelined", "audio", "stage1", "fusion", "tiny_chain"):
        assert f"step {name} " in text
    assert "--no-index" in text  # installs only the wheels it brings


def run_dry(tmp_path: Path, steps: str, python: str) -> dict:
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_STEPS": steps, "PYTHON": python,
           "GPU_CHECK_RUNS": str(tmp_path / "runs")}     # the tiny chain's run folders and data: not in the checkout
    subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], check=True, cwd=ROOT, env=env, timeout=900)
    return json.loads((tmp_path / "out" / "gpu_check.json").read_text())


def test_dry_run_fails_soft_and_writes_one_json(tmp_path):
    # a python that fails the environment step only: the fusion step after it still runs and reports
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/bash\ncase "$*" in *"import torch, sys"*) echo boom >&2; exit 3;; esac\n'
                       f'exec {sys.executable} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    summary = run_dry(tmp_path, "environment,fusion", str(wrapper))
    steps = {s["step"]: s for s in summary["steps"]}
    assert summary["dry_run"] and summary["device"] == "cpu"
    assert set(steps) == {"environment", "fusion"} and summary["failed_steps"] == ["environment"]
    assert steps["environment"]["rc"] == 3 and "boom" in steps["environment"]["output"]
    fusion = steps["fusion"]
    assert fusion["rc"] == 0 and fusion["figures"]["frames"] == 3000
    assert set(fusion["figures"]["runs"]) == {"host batches", "resident"}
    assert fusion["figures"]["runs"]["resident"]["epoch_s"] > 0


@pytest.mark.slow
def test_full_dry_run(tmp_path):
    summary = run_dry(tmp_path, "environment,gpu_tests,visual_pipelined,fusion,tiny_chain", sys.executable)
    assert summary["failed_steps"] == [], summary["failed_steps"]
    visual = next(s for s in summary["steps"] if s["step"] == "visual_pipelined")["figures"]
    assert visual["end_to_end"]["pipelined"]["failed"] == 0 and visual["max_feature_difference"] < 1e-2
    assert visual["pipelined_over_serial"] > 0
    chain = next(s for s in summary["steps"] if s["step"] == "tiny_chain")["figures"]
    assert chain["status"] == "ok" and "01_padaug_preview" in chain["stage_seconds"]
    assert (tmp_path / "runs" / "gpu-check-dry" / "stages").is_dir() and (tmp_path / "runs" / "data").is_dir()
    assert "gpu-check-dry" in summary["tiny_chain_stage_seconds"]
