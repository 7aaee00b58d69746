"""The package layout the README's "Architecture" describes: domain packages take typed arguments and
never read the params or the wiring; only ``kitlib.stages`` and ``kitlib.tools`` do; no import cycles;
no module grows past ~600 lines."""
import ast
from pathlib import Path

import pytest

from kitlib import config

KITLIB = config.repo_root() / "kitlib"
DOMAIN = ("data", "faces", "visual", "audio", "fusion", "smoothing", "inference")
WIRING = ("stages", "tools")


def _module_name(path: Path) -> str:
    parts = path.relative_to(KITLIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """kitlib modules a file imports (at any depth: lazy imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kitlib"):
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("kitlib")}
    return out


MODULES = {_module_name(p): p for p in KITLIB.rglob("*.py")}


@pytest.mark.parametrize("package", DOMAIN)
def test_domain_packages_do_not_read_params_or_wiring(package):
    for name, path in MODULES.items():
        if name == f"kitlib.{package}" or name.startswith(f"kitlib.{package}."):
            bad = {m for m in _imports(path) if m.split(".")[:2] in (["kitlib", "config"], ["kitlib", "stages"],
                                                                     ["kitlib", "tools"], ["kitlib", "run"])}
            assert not bad, f"{name} imports {sorted(bad)}: domain code takes typed arguments"


def test_no_import_cycles_between_modules():
    graph = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}

    def package_of(child: str, parent: str) -> bool:     # a package's __init__ re-exporting its own modules
        return child.startswith(parent + ".")

    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if package_of(nxt, node):
                continue
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(nxt):] + [nxt])}")
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_every_notebook_stage_has_its_wiring_module():
    from kitlib import run

    for stage in run.STAGES:
        assert (KITLIB / "stages" / f"s{stage}.py").is_file(), stage


def test_no_module_over_600_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 600}
    assert not long, f"split these modules by concern: {long}"


def _importers(targets: tuple[str, ...], *, within: tuple[str, ...]) -> dict[str, list[str]]:
    """Modules under the packages ``within`` that import one of the top-level modules ``targets``."""
    out = {}
    for name, path in MODULES.items():
        if name.split(".")[1:2] and name.split(".")[1] in within:
            hit = sorted(m for m in _imports(path) if m.split(".")[:2] in [["kitlib", t] for t in targets])
            if hit:
                out[name] = hit
    return out


def test_the_runner_is_the_top_layer():
    """README "Architecture": nothing imports the runner (``run``, ``cli``); domain packages and stages never
    import the run folder or the summary page; tools may use those two, never the runner (no back arrow)."""
    assert not _importers(("run", "cli"), within=(*DOMAIN, *WIRING, "runfolder", "summary", "progress", "hub",
                                                    "overlay", "config", "store", "fingerprints", "runtime")), \
        "the runner is the top layer: move what is shared down (e.g. into runfolder)"
    assert not _importers(("runfolder", "summary"), within=(*DOMAIN, "stages"))
    assert not _importers(("tools",), within=(*DOMAIN, "stages")), "tools build on the stages, not the reverse"

