"""Seeding, device choice and logging shared by every stage."""
from __future__ import annotations

import logging
import os
import random

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
    """One log line per stage event, with the time, on stderr (shown in notebooks too) and, under the
    runner, in ``<run>/logs/<stage>.log`` (``kitlib.progress``)."""
    from kitlib.progress import attach_stage_log

    attach_stage_log(log)
    if not any(type(h) is logging.StreamHandler for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)
