"""``abaw-kit``: the kit's console script (installed by ``pip install``), one word per tool.

    abaw-kit init my-kit                    # copy params/ and notebooks/ into my-kit/ (an install outside the repo)
    abaw-kit doctor params/abaw10.yaml params/local.yaml
    abaw-kit weights fetch params/abaw10.yaml
    abaw-kit run params/abaw10.yaml params/local.yaml --stages 05-07
    abaw-kit compare outputs/*
    abaw-kit export outputs/demo --out bundles/demo      # a finished run as a model bundle
    abaw-kit predict bundles/demo clips/ --out predictions/ [--overlay]   # per-frame labels of any video

Each word runs its module (``COMMANDS``: ``python -m kitlib.run``, ``python -m kitlib.tools.export`` ... work the same). Outside a
checkout the kit works in the folder that holds ``params/`` (``init`` makes one; or set ``KIT_ROOT``).
"""
from __future__ import annotations

import shutil
import signal
import sys
from importlib import import_module
from pathlib import Path

COMMANDS = {"run": "kitlib.run", "doctor": "kitlib.tools.doctor", "weights": "kitlib.tools.weights",
            "compare": "kitlib.tools.compare", "export": "kitlib.tools.export", "predict": "kitlib.tools.predict"}
KIT_FILES = ("params", "notebooks")       # what a run needs beside the package


def kit_files_source() -> Path | None:
    """Where ``params/`` and ``notebooks/`` are: the checkout above ``kitlib/``, else the copy pip
    installed under ``<prefix>/share/abaw-expr-kit`` (pyproject ``data-files``)."""
    here = Path(__file__).resolve()          # <prefix>/lib/pythonX.Y/site-packages/kitlib/cli.py when installed
    installed_prefix = here.parents[4] if len(here.parents) > 4 else None   # a checkout may sit near / (e.g. /work/kit)
    for base in (here.parents[1], *([installed_prefix / "share" / "abaw-expr-kit"] if installed_prefix else []),
                 Path(sys.prefix) / "share" / "abaw-expr-kit"):
        if all((base / name).is_dir() for name in KIT_FILES):
            return base
    return None


def init(target: Path) -> Path:
    """Copy the params and notebooks into ``target`` so runs can start there (relative paths resolve to it)."""
    source = kit_files_source()
    if source is None:
        raise SystemExit("cannot find the kit's params/ and notebooks/ (reinstall abaw-expr-kit)")
    target.mkdir(parents=True, exist_ok=True)
    for name in KIT_FILES:
        if (target / name).exists():
            raise SystemExit(f"{target / name} exists; choose an empty folder")
        shutil.copytree(source / name, target / name)
    return target


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*COMMANDS, "init"):
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "init":
        if len(argv) != 2:
            print("usage: abaw-kit init FOLDER", file=sys.stderr)
            return 2
        target = init(Path(argv[1]))
        print(f"kit files copied to {target}; run from there: cd {target} && abaw-kit doctor params/demo.yaml")
        return 0
    code = import_module(COMMANDS[argv[0]]).main(argv[1:]) or 0
    if argv[0] == "run" and code in (130, 143):  # the console script's process ends here: see run.exit_quietly
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(main())
