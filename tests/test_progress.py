"""Live progress: under the runner a bar reports to <run>/logs/<stage>.log with rate and ETA and leaves
one final line in the notebook; the runner shows the log live; executed notebooks echo no paths."""
import ast
import json
import subprocess
import sys
import textwrap

import pytest

from kitlib import config, progress


def test_bar_under_the_runner_logs_progress_and_leaves_one_line(tmp_path, monkeypatch, capsys):
    log = tmp_path / "logs" / "03_crop_extract.log"
    monkeypatch.setenv(progress.STAGE_LOG_ENV, str(log))
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    for _ in progress.tqdm(range(50), desc="videos", unit="video", mininterval=0):
        pass
    for _ in progress.tqdm(range(5), desc="inner", leave=False):
        pass
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "videos: 100%" in err and "50/50" in err and "\r" not in err
    lines = log.read_text().splitlines()
    assert any("progress videos:" in line and "video/s" in line for line in lines)   # count and rate, in the log
    assert lines[-1].endswith("(done)") and "inner" in lines[-1]
    assert "<" in next(line for line in lines if "videos:" in line and "100%" not in line)  # elapsed<ETA


def test_bar_outside_the_runner_is_a_plain_bar(monkeypatch, capsys):
    monkeypatch.delenv(progress.STAGE_LOG_ENV, raising=False)
    for _ in progress.tqdm(range(3), desc="plain"):
        pass
    assert "plain: 100%" in capsys.readouterr().err


def test_streaming_shows_a_child_process_log_live(tmp_path):
    """A kernel started inside ``streaming`` inherits the log path; its log records and bars are echoed."""
    shown = []
    child = textwrap.dedent("""
        import logging
        from kitlib import runtime, progress
        runtime.setup_logging()
        logging.getLogger("kitlib.stages.s03").info("12 videos to extract")
        for _ in progress.tqdm(range(4), desc="videos"):
            pass
    """)
    with progress.streaming(tmp_path / "logs" / "03.log", echo=shown.append) as path:
        subprocess.run([sys.executable, "-c", child], check=True, cwd=config.repo_root(), capture_output=True)
    assert any("12 videos to extract" in line for line in shown)
    assert any("videos: 100%" in line and "(done)" in line for line in shown)
    assert "===== 03 started" in path.read_text()


def test_terminal_echo_overwrites_progress_only_on_a_tty(tmp_path):
    class Tty(__import__("io").StringIO):
        def isatty(self):
            return True

    out = Tty()
    echo = progress.TerminalEcho(out)
    echo("10:00:00 progress videos:  10%")
    echo("10:00:10 progress videos:  20%")
    echo("10:00:11 kitlib INFO done")
    echo.end()
    text = out.getvalue()
    assert text.count("\r\033[K") == 3 and text.endswith("kitlib INFO done\n")


def test_last_seconds_reads_this_run_then_the_newest_other_run(tmp_path):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    (run_a / "stages").mkdir(parents=True)
    (run_a / "stages" / "03_crop_extract.json").write_text(json.dumps({"seconds": 274.4}))
    assert progress.last_seconds(run_b, "03_crop_extract") == (274.4, "a")
    assert progress.last_seconds(run_b, "05_fusion_ablation") is None
    assert progress.duration(274.4) == "4 min 34 s" and progress.duration(7500) == "2 h 05 min"


NOTEBOOKS = sorted((config.repo_root() / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figure_cells_echo_no_path(path):
    """``plots.save`` returns the PNG's path; a cell ending in it must end with ``;`` (no PosixPath echo)."""
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or not source.strip():
            continue
        last = ast.parse(source).body[-1]
        if isinstance(last, ast.Expr) and ast.get_source_segment(source, last).startswith("plots.save("):
            assert source.rstrip().endswith(";"), f"{path.name}: {source!r} echoes a PosixPath"


def test_postfix_redraws_are_throttled_too(tmp_path, monkeypatch):
    log = tmp_path / "s.log"
    monkeypatch.setenv(progress.STAGE_LOG_ENV, str(log))
    bar = progress.tqdm(total=100, desc="epoch 1")
    for i in range(100):
        bar.update(1)
        bar.set_postfix(loss=1.0 / (i + 1))
    bar.close()
    lines = log.read_text().splitlines()
    assert len(lines) <= 2 and lines[-1].endswith("(done)")          # not one line per batch
