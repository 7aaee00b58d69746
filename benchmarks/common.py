"""What every benchmark prints beside its figures: the machine, peak host memory, peak GPU memory.

``PeakMemory`` samples ``/proc/self/status`` in a background thread, so the peak of the anonymous
memory (``RssAnon``: arrays the process holds) is kept apart from file pages mapped into it
(``RssFile``: a memory-mapped cache, reclaimable by the kernel); ``VmHWM`` is the kernel's own
high-water mark of the sum.
"""
from __future__ import annotations

import os
import platform
import re
import threading
import time
from pathlib import Path

import torch


def metadata_dir() -> Path:
    """Where the release's metadata (``abaw10-metadata``) lies: ``$ABAW10_METADATA``, else ``shared/`` inside the
    checkout (how it travels to a GPU machine), else the ``../shared`` beside it (a developer's checkout)."""
    if os.environ.get("ABAW10_METADATA"):
        return Path(os.environ["ABAW10_METADATA"])
    root = Path(__file__).resolve().parents[1]
    inside = root / "shared" / "abaw10-metadata"
    return inside if inside.is_dir() else root.parent / "shared" / "abaw10-metadata"


def machine_line(device: torch.device | str | None = None) -> str:
    """CPU model, cores, memory, GPU (if ``device`` is CUDA), torch version: printed with every figure."""
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        match = re.search(r"model name\s*:\s*(.+)", info.read_text())
        cpu = match.group(1).strip() if match else cpu
    mem = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo.read_text()).group(1))
        mem = f", {kib / 2**20:.0f} GiB RAM"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = ""
    if device is not None and torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        gpu = f"; GPU {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"machine: {cpu}, {cores} cores{mem}{gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"load average {load}")


def _status_kib(fields: tuple[str, ...]) -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {f: int(m.group(1)) if (m := re.search(rf"^{f}:\s+(\d+) kB", text, re.M)) else 0 for f in fields}


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.summary()``: peak RssAnon, RssFile, VmHWM (GiB)
    and, on CUDA, ``torch.cuda.max_memory_allocated``."""

    FIELDS = ("RssAnon", "RssFile", "VmHWM")

    def __init__(self, *, interval_s: float = 0.05, device: torch.device | str | None = None):
        self.interval_s = interval_s
        self.device = torch.device(device) if device is not None else None
        self.peak = dict.fromkeys(self.FIELDS, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for key, value in _status_kib(self.FIELDS).items():
            self.peak[key] = max(self.peak[key], value)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakMemory:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def gib(self, key: str) -> float:
        return self.peak[key] / 2**20

    def summary(self) -> str:
        text = (f"peak host RSS: anonymous {self.gib('RssAnon'):.2f} GiB, mapped files {self.gib('RssFile'):.2f} GiB, "
                f"high-water mark {self.gib('VmHWM'):.2f} GiB")
        if self.device is not None and self.device.type == "cuda":
            text += f"; peak GPU {torch.cuda.max_memory_allocated(self.device) / 2**30:.2f} GiB"
        return text


class GpuBusy:
    """GPU busy time of a module: CUDA events around each forward, summed (``seconds()``).

    ``busy / wall`` says how much of an end-to-end run the GPU spent computing that module; the
    rest is decode, detection, host-device copies or waiting on Python. CUDA only; a no-op on CPU.
    """

    def __init__(self, module: torch.nn.Module, device: torch.device | str):
        self.enabled = torch.device(device).type == "cuda"
        self.pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._handles = []
        if self.enabled:
            self._handles = [module.register_forward_pre_hook(self._start), module.register_forward_hook(self._end)]

    def _start(self, module, args) -> None:
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        self.pairs.append((start, None))

    def _end(self, module, args, output) -> None:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.pairs[-1] = (self.pairs[-1][0], end)

    def seconds(self) -> float:
        if not self.enabled:
            return float("nan")
        torch.cuda.synchronize()
        return sum(s.elapsed_time(e) for s, e in self.pairs if e is not None) / 1000.0

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
