"""Seeding, device choice and logging shared by every stage."""
from __future__ import annotations

import logging
import os
import random
import subprocess

import numpy as np
import torch

log = logging.getLogger("kitlib")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` takes the GPU when there is one; ``cpu`` / ``cuda`` / ``cuda:N`` are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but torch sees no CUDA GPU")
    return device


def setup_logging(level: int = logging.INFO) -> None:
    """One log line per stage event, with the time. Under the runner every line goes to
    ``<run>/logs/<stage>.log`` (``kitlib.progress``; the terminal shows it live) and only warnings and errors
    to stderr, so the executed notebook reads as a report; run by hand, every line goes to stderr."""
    from kitlib.progress import attach_stage_log

    under_runner = attach_stage_log(log) is not None
    handler = next((h for h in log.handlers if type(h) is logging.StreamHandler), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    handler.setLevel(logging.WARNING if under_runner else logging.NOTSET)
    log.setLevel(level)


def gpu_info() -> dict:
    """GPU name and count, NVIDIA driver, the CUDA and cuDNN torch runs with (provenance of a run)."""
    info = {"cuda_build": torch.version.cuda, "count": 0, "name": None, "driver": None, "cudnn": None}
    if torch.cuda.is_available():
        info.update(count=torch.cuda.device_count(), name=torch.cuda.get_device_name(0), driver=gpu_driver(),
                    cudnn=torch.backends.cudnn.version())
    return info


def gpu_driver() -> str | None:
    """The NVIDIA driver version (nvidia-smi), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
