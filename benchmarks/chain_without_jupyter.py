"""The notebook chain without Jupyter: each notebook's code cells executed in order in this process.

For machines where papermill / ipykernel are not installed (the GPU box's image, see
``benchmarks/gpu_check.sh``): the notebooks hold no function definitions, only calls into
``kitlib.stages``, so running their code cells with ``params`` set to the resolved params runs the
same stage functions the runner runs. The run folder gets the same params, provenance and stage
markers as ``python -m kitlib.run`` writes (no executed notebooks). Per-stage seconds are printed
and, with ``--json``, written.

    python benchmarks/chain_without_jupyter.py params/demo.yaml params/tiny.yaml run.device=cuda --json t.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kitlib import config  # noqa: E402
from kitlib.run import select_stages  # noqa: E402
from kitlib.runfolder import prepare_run_dir  # noqa: E402
from kitlib.store import write_json_atomic  # noqa: E402


def code_cells(notebook: Path) -> list[str]:
    """The code cells of ``notebook``, with ``params`` injected after the one tagged ``parameters`` (as
    papermill does: its other defaults stay); IPython magics dropped."""
    cells = json.loads(notebook.read_text())["cells"]
    out = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        out.append("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            out.append("params = injected_params")
    return out


def run_notebook(stage: str, cfg: config.Config) -> float:
    """Execute one stage's notebook cells with the resolved params; seconds taken."""
    import matplotlib

    matplotlib.use("Agg")
    notebook = config.repo_root() / "notebooks" / f"{stage}.ipynb"
    namespace = {"injected_params": cfg.to_dict(), "display": lambda *a, **k: None, "__name__": f"chain_{stage}"}
    tic = time.perf_counter()
    for number, source in enumerate(code_cells(notebook), start=1):
        try:
            exec(compile(source, f"{notebook.name}[cell {number}]", "exec"), namespace)
        except Exception as exc:
            raise RuntimeError(f"stage {stage} failed in code cell {number}:\n{source}\n{type(exc).__name__}: {exc}") from exc
    return time.perf_counter() - tic


def write(path: Path | None, run_dir: Path, cfg: config.Config, status: str, seconds: dict[str, float]) -> None:
    if path is not None:
        path.write_text(json.dumps({"runner": "no jupyter", "run_dir": str(run_dir), "device": cfg.run.device,
                                    "status": status, "stage_seconds": seconds}, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("items", nargs="*", help="params files and key=value overrides, as for kitlib.run")
    parser.add_argument("--stages", default=None, help="subset, as for kitlib.run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    files = [x for x in args.items if "=" not in x]
    cfg = config.load(*files, overrides=[x for x in args.items if "=" in x])
    run_dir = prepare_run_dir(cfg, argv=["python", *sys.argv])
    seconds: dict[str, float] = {}
    status = "ok"
    for stage in select_stages(args.stages):
        print(f"[{stage}] running (no Jupyter) ...", flush=True)
        try:
            seconds[stage] = round(run_notebook(stage, cfg), 1)
        except RuntimeError as exc:
            print(exc, file=sys.stderr, flush=True)
            status = f"failed at {stage}: {exc.__cause__!r}"
            break
        write_json_atomic(run_dir / "stages" / f"{stage}.json",
                          {"stage": stage, "seconds": seconds[stage], "params_digest": cfg.digest(),
                           "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runner": "no jupyter"})
        print(f"[{stage}] done in {seconds[stage]:.0f} s", flush=True)
        write(args.json, run_dir, cfg, status, seconds)  # after every stage: a run cut short keeps its figures
    write(args.json, run_dir, cfg, status, seconds)
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
