import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CACHES = ("__pycache__", ".pytest_cache")      # Python's own, not written by a test


def checkout_state() -> set[str] | None:
    """git's view of the checkout: changed, untracked and ignored paths (``outputs/``, ``data/`` included);
    None outside a git checkout."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    lines = {line for line in out.stdout.splitlines() if not any(cache in line for cache in CACHES)}
    # an untracked or ignored folder is one line (``!! data/``): its entries count too (``data/tiny``)
    return lines | {f"{line[:3]}{line[3:]}{child.name}" for line in lines if line.endswith("/")
                    for child in (ROOT / line[3:]).iterdir() if child.name not in CACHES}


def pytest_sessionstart(session):
    session.config.checkout_before = checkout_state()


def pytest_sessionfinish(session, exitstatus):
    """Tests write only under pytest's tmp folders: the suite fails if the checkout changed while it ran
    (compared with its state before, so a developer's uncommitted work does not count)."""
    before = getattr(session.config, "checkout_before", None)
    after = checkout_state() if before is not None else None
    if after is None or after == before:
        return
    changed = sorted(after ^ before)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = (f"the tests changed the checkout ({len(changed)} path(s); tests must write under tmp_path): "
               + "; ".join(changed[:10]))
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def demo_video(tmp_path_factory):
    """One short generated demo video with sound (128x96, 30 fps), shared by a test module."""
    from kitlib.data import demo

    root = tmp_path_factory.mktemp("demo")
    demo.generate_demo(root, seed=0, n_train=1, n_val=1, n_test=1, seconds=(2.0, 3.0), fps=30.0, size=(128, 96),
                       sample_rate=16000, images_per_class=1)
    return sorted((root / "videos").rglob("*.mp4"))[0]
