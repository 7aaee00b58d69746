"""Progress bars and a stage's log file, for the terminal of a headless run and for clean notebooks.

Every loop that can take more than a few seconds uses :class:`tqdm` from here (a ``tqdm.std.tqdm``).
Where it writes depends on who runs the code:

- a terminal, a script or JupyterLab by hand: an ordinary text bar on stderr, updated in place
  (no ipywidgets, so no "IProgress not found" warning);
- a notebook executed by the runner (``kitlib.run`` sets ``KITLIB_STAGE_LOG`` to
  ``<run>/logs/<stage>.log``): the bar writes a line with count, rate and ETA to that file every
  ``LOG_EVERY_S`` seconds, and the notebook gets the bar's final line only (once, on close).
  The runner follows the file and shows it live in the terminal (:func:`follow`).

``attach_stage_log`` (called by ``runtime.setup_logging``) sends the ``kitlib`` log records to the
same file, so the file holds the stage's log lines and its progress, in order, with the time.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from tqdm.std import tqdm as _std_tqdm

STAGE_LOG_ENV = "KITLIB_STAGE_LOG"   # set by the runner for the notebook kernel it starts
LOG_EVERY_S = 10.0                   # a progress line per bar at most this often in the stage log
PROGRESS_TAG = "progress"            # the log lines the runner shows in place (the others scroll)
_FORMAT = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S")
_handler: logging.FileHandler | None = None


def stage_log_path() -> Path | None:
    """The stage log this process writes to, when a runner asked for one."""
    value = os.environ.get(STAGE_LOG_ENV)
    return Path(value) if value else None


def attach_stage_log(logger: logging.Logger) -> Path | None:
    """Add the stage log file (if the runner set one) to ``logger``'s handlers; idempotent."""
    global _handler
    path = stage_log_path()
    if path is None:
        return None
    if _handler is None or Path(_handler.baseFilename) != path.resolve():
        path.parent.mkdir(parents=True, exist_ok=True)
        _handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        _handler.setFormatter(_FORMAT)
    if _handler not in logger.handlers:
        logger.addHandler(_handler)
    return path


def _log_line(text: str) -> None:
    path = stage_log_path()
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%H:%M:%S')} {PROGRESS_TAG} {text}\n")


class tqdm(_std_tqdm):  # noqa: N801 (a drop-in for tqdm.tqdm)
    """``tqdm.tqdm`` that, under the runner, reports to the stage log and leaves one final line."""

    def __init__(self, *args, **kwargs):
        self._to_log = stage_log_path() is not None
        if self._to_log:
            kwargs["file"] = io.StringIO()          # nothing in-place on the notebook's stderr
            kwargs["mininterval"] = max(kwargs.get("mininterval", 0.1), LOG_EVERY_S)
            kwargs.setdefault("ascii", True)
            kwargs["dynamic_ncols"] = False
            kwargs.setdefault("ncols", 100)
        self._closing = False
        self._logged_at = 0.0
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if not self._to_log:
            return super().display(msg, pos)
        now = time.time()
        # the bar's empty first draw says nothing; set_postfix redraws are throttled like updates
        finished = self.total is not None and self.n >= self.total        # close() logs that line, "(done)"
        if not self._closing and msg != "" and 0 < self.n and not finished and now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            _log_line(self.__str__() if msg is None else msg)
        if isinstance(self.fp, io.StringIO):        # keep the swallowed writes from growing
            self.fp.seek(0), self.fp.truncate()
        return True

    def close(self):
        if self._to_log and not self.disable and not self._closing:
            self._closing = True
            final = self.__str__()
            _log_line(final + " (done)")
            if self.leave:
                print(final, file=sys.stderr, flush=True)
        super().close()


def follow(path: Path, show: Callable[[str], None], stop: threading.Event, *, poll_s: float = 0.5) -> None:
    """Call ``show`` with every new complete line of ``path`` until ``stop`` is set (then drain)."""
    offset = path.stat().st_size if path.is_file() else 0
    pending = ""
    while True:
        done = stop.is_set()
        if path.is_file():
            with path.open("r", encoding="utf-8", errors="replace") as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                show(line)
        if done:
            if pending:
                show(pending)
            return
        stop.wait(poll_s)


class TerminalEcho:
    """Prints a stage log's lines: log records scroll, progress lines overwrite each other on a TTY."""

    def __init__(self, stream=None, *, prefix: str = "  "):
        self.stream = stream or sys.stdout
        self.prefix = prefix
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._open_progress = False

    def __call__(self, line: str) -> None:
        is_progress = f" {PROGRESS_TAG} " in line[:20] and not line.endswith("(done)")
        text = self.prefix + line.replace(f" {PROGRESS_TAG} ", " ", 1)
        if self.tty and is_progress:
            self.stream.write("\r\033[K" + text[: _columns() - 1])
            self._open_progress = True
        else:
            if self.tty and self._open_progress:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            self._open_progress = False
        self.stream.flush()

    def end(self) -> None:
        if self._open_progress:
            self.stream.write("\n")
            self.stream.flush()
            self._open_progress = False


def _columns() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


def duration(seconds: float) -> str:
    """``'4 min 34 s'``, ``'2 h 05 min'``, ``'12 s'``: how long a stage took, for people."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@contextmanager
def streaming(log_path: Path, *, echo: Callable[[str], None] | None = None):
    """While the block runs, the notebook kernel started in it writes its log and progress to
    ``log_path`` (through ``STAGE_LOG_ENV``, which kernels inherit) and ``echo`` shows every line live."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ===== {log_path.stem} started =====\n")
    echo = echo or TerminalEcho()
    # the kernel inherits these: the stage log, and no Hugging Face bars (transformers' "Loading weights")
    kernel_env = {STAGE_LOG_ENV: str(log_path.resolve()), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    previous = {k: os.environ.get(k) for k in kernel_env}
    os.environ.update(kernel_env)
    stop = threading.Event()
    thread = threading.Thread(target=follow, args=(log_path, echo, stop), daemon=True)
    thread.start()
    try:
        yield log_path
    finally:
        stop.set()
        thread.join(timeout=5)
        if hasattr(echo, "end"):
            echo.end()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def last_seconds(run_dir: Path, stage: str) -> tuple[float, str] | None:
    """How long ``stage`` took last time: in this run folder, else in the newest other run folder
    beside it (its name is returned with the seconds), from the stage markers the runner writes."""
    import json

    run_dir = Path(run_dir)
    candidates = [run_dir / "stages" / f"{stage}.json"]
    if run_dir.parent.is_dir():
        others = sorted(run_dir.parent.glob(f"*/stages/{stage}.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        candidates += [p for p in others if p.parents[1] != run_dir]
    for marker in candidates:
        try:
            seconds = float(json.loads(marker.read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return seconds, marker.parents[1].name
    return None
