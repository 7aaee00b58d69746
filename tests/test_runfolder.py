"""The run folder under concurrency, change, interruption and bad disks (kitlib.runfolder and the runner).

Runner tests replace the notebook execution (``run.run_stage``) by a stand-in that records the stage and
marks it finished as the real one does, so what is checked is the runner's own decisions; the notebook tier
runs the real notebooks."""
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys

import pandas as pd
import pytest

from kitlib import config, fingerprints, run, runfolder
from minirun import make_run, run_items


@pytest.fixture
def fake_stages(monkeypatch):
    """``run.run_stage`` as a stand-in: records the stage, runs ``actions[stage]`` if given, marks it finished."""
    calls, actions = [], {}

    def run_stage(stage, cfg, run_dir, *, kernel="python3"):
        calls.append(stage)
        if stage in actions:
            actions[stage]()
        runfolder.mark_finished(run_dir, stage, cfg, seconds=0.0)
        return 0.0

    monkeypatch.setattr(run, "run_stage", run_stage)
    return calls, actions


# ---------------------------------------------------------------------------- lock and params
def test_a_live_holder_is_refused_with_its_pid_and_host(tmp_path):
    with runfolder.acquire_lock(tmp_path / "r", command=["first"]):
        with pytest.raises(runfolder.RunFolderError,
                           match=rf"is in use by another run \(pid {os.getpid()} on host {socket.gethostname()}"):
            runfolder.acquire_lock(tmp_path / "r", command=["second"])
    with runfolder.acquire_lock(tmp_path / "r", command=["third"]) as lock:   # released on exit
        assert lock.taken_over is None


def test_the_lock_of_a_dead_holder_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from kitlib import runfolder; "
        f"runfolder.acquire_lock({str(tmp_path / 'r')!r}, command=['killed']); print('locked', flush=True); "
        "time.sleep(120)")], stdout=subprocess.PIPE, text=True, cwd=config.repo_root())
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(runfolder.RunFolderError, match=f"pid {holder.pid}"):
        runfolder.acquire_lock(tmp_path / "r", command=["too early"])
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with runfolder.acquire_lock(tmp_path / "r", command=["after"]) as lock:
        assert lock.taken_over["pid"] == holder.pid and lock.taken_over["command"] == ["killed"]


def _start_together(args):
    barrier, out_root, value = args
    cfg = config.load("params/demo.yaml", overrides=[f"run.outputs_root={out_root}", f"fusion.epochs={value}"])
    barrier.wait()
    try:
        with runfolder.acquire_lock(cfg.run_dir, command=[str(value)]):
            runfolder.prepare_run_dir(cfg, argv=[str(value)])
        return "accepted"
    except SystemExit as exc:
        return str(exc)


def test_two_runs_with_other_params_started_together_never_both_accepted(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for trial in range(10):
        with ctx.Manager() as manager:
            barrier = manager.Barrier(2)
            with ctx.Pool(2) as pool:
                results = pool.map(_start_together, [(barrier, tmp_path / str(trial), v) for v in (1, 2)])
        assert results.count("accepted") == 1, results
        refused = next(r for r in results if r != "accepted")
        assert "in use by another run" in refused or "made with other params (changed: fusion.epochs)" in refused


def test_provenance_keeps_the_history_of_commands(tmp_path):
    cfg = config.load("params/demo.yaml", overrides=[f"run.outputs_root={tmp_path}"])
    runfolder.prepare_run_dir(cfg, argv=["first", "command"])
    runfolder.prepare_run_dir(cfg, argv=["second", "command"])
    prov = json.loads((cfg.run_dir / "provenance.json").read_text())
    assert prov["command"] == ["second", "command"]
    assert [h["command"] for h in prov["history"]] == [["first", "command"], ["second", "command"]]


# ---------------------------------------------------------------------------- stale stages
def test_a_changed_template_makes_stage_07_out_of_date(tmp_path, fake_stages, capsys):
    calls, _ = fake_stages
    cfg = make_run(tmp_path)
    items = run_items(tmp_path)
    assert run.main(["--no-preflight", *items, "--stages", "05-07"]) == 0 and calls == list(run.STAGES[4:])
    assert run.main(["--no-preflight", *items, "--stages", "07"]) == 0 and calls == list(run.STAGES[4:])       # up to date: skipped
    template = cfg.data_path(cfg.data.test_template)
    template.write_text(template.read_text().replace("00040.jpg", "00041.jpg"))
    status = runfolder.stage_status(run.STAGES, cfg, cfg.run_dir)
    assert status["07_submission"].changed == ("template",) and not status["06_smoothing_sweep"].out_of_date
    capsys.readouterr()
    assert run.main(["--no-preflight", *items, "--stages", "07"]) == 0
    assert calls[-1] == "07_submission" and len(calls) == 4
    assert "[07_submission] out of date (its input(s) changed since it ran: template): running it again" \
        in capsys.readouterr().out


def test_changed_annotations_refuse_a_later_stage_alone_and_name_the_command(tmp_path, fake_stages, capsys):
    calls, _ = fake_stages
    cfg = make_run(tmp_path)
    items = run_items(tmp_path)
    assert run.main(["--no-preflight", *items, "--stages", "05-07"]) == 0
    label_file = cfg.data_path(cfg.data.annotations_dir) / "Train_Set" / "trainA.txt"
    label_file.write_text(label_file.read_text() + "3\n")
    capsys.readouterr()
    assert run.main(["--no-preflight", *items, "--stages", "07"]) == 1 and len(calls) == 3
    err = capsys.readouterr().err
    assert "[07_submission] builds on 05_fusion_ablation, which is out of date (its input(s) changed since it " \
           "ran: annotations); run python -m kitlib.run params/tiny.yaml" in err and err.strip().endswith("--stages 05-07")
    assert run.main(["--no-preflight", *items, "--stages", "05-07"]) == 0 and calls[3:] == list(run.STAGES[4:])


# ---------------------------------------------------------------------------- leftovers and interruption
def test_runner_removes_partial_files_of_a_killed_writer(tmp_path, fake_stages, capsys):
    cfg = make_run(tmp_path)
    visual = cfg.run_dir / "features" / "visual"
    (visual / ".trainA.npz.k3j2.partial").write_bytes(b"half")
    (cfg.run_dir / "fusion" / ".head.pt.x1.partial").mkdir()
    assert run.main(["--no-preflight", *run_items(tmp_path), "--stages", "07"]) == 0
    assert not list(cfg.run_dir.rglob("*.partial"))
    assert "removed 2 unfinished file(s) left by a killed run" in capsys.readouterr().out


@pytest.fixture
def python_ctrl_c():
    """SIGINT raises KeyboardInterrupt, as Python sets it up, even where the test run inherited SIG_IGN (started
    in the background of a non-interactive shell)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("how, rc, name", [("sigint", 130, "Ctrl-C"), ("sigterm", 143, "SIGTERM")])
def test_interruption_ends_with_one_line_naming_what_is_kept_and_how_to_resume(tmp_path, fake_stages, capsys,
                                                                               python_ctrl_c, how, rc, name):
    _, actions = fake_stages
    make_run(tmp_path)
    items = run_items(tmp_path)

    def interrupt():
        os.kill(os.getpid(), signal.SIGINT if how == "sigint" else signal.SIGTERM)

    actions["06_smoothing_sweep"] = interrupt
    capsys.readouterr()
    assert run.main(["--no-preflight", *items, "--stages", "05-07"]) == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"stopped by {name} during 06_smoothing_sweep; kept: the finished stages (05) and the feature "
                   f"files of finished tracks; resume with: python -m kitlib.run {' '.join(items)} --stages 06-07"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# ---------------------------------------------------------------------------- unwritable folder, full disk
def _make_read_only(folder):
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):                    # root: permissions do not stop it, the immutable flag does
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return True
    (folder / ".probe").unlink()
    return False


def test_read_only_features_folder_fails_before_the_stage_runs(tmp_path, fake_stages, capsys):
    calls, _ = fake_stages
    cfg = make_run(tmp_path)
    visual = cfg.run_dir / "features" / "visual"
    try:
        if not _make_read_only(visual):
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        assert run.main(["--no-preflight", *run_items(tmp_path), "--stages", "03"]) == 1
    finally:
        subprocess.run(["chattr", "-i", str(visual)], capture_output=True)
        visual.chmod(0o755)
    assert calls == []
    err = capsys.readouterr().err
    assert f"[03_crop_extract] cannot write to {visual}" in err


def test_too_little_free_space_fails_before_the_stage_runs_naming_path_and_size(tmp_path, fake_stages, capsys):
    calls, _ = fake_stages
    cfg = make_run(tmp_path)
    videos = cfg.run_dir / "reports" / "videos.csv"
    table = pd.read_csv(videos)
    table["n_frames"] = 10 ** 10                       # an impossible release: petabytes of features
    table.to_csv(videos, index=False)
    assert run.main(["--no-preflight", *run_items(tmp_path), "--stages", "04"]) == 1 and calls == []
    err = capsys.readouterr().err
    assert f"[04_audio_align] {cfg.run_dir} has" in err and "GiB free, the stage needs about" in err
    assert runfolder.estimated_output_bytes("04_audio_align", cfg, cfg.run_dir) > 10 ** 10 * 4 * 2 * 2


@pytest.mark.slow
def test_ctrl_c_during_a_real_notebook_ends_with_one_line(tmp_path):
    """Ctrl-C as a terminal sends it (to the runner and its kernel) while notebook 01 runs on the tiny demo."""
    import time

    runner = subprocess.Popen([sys.executable, "-m", "kitlib.run", "params/demo.yaml", "params/tiny.yaml",
                               f"run.outputs_root={tmp_path / 'out'}", f"data.root={tmp_path / 'data'}", "--stages",
                               "01-02"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=config.repo_root(), start_new_session=True,
                              # Python installs its Ctrl-C handler only if SIGINT is not ignored at start (a
                              # test run started in the background of a non-interactive shell inherits SIG_IGN)
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in runner.stdout:
        if "[01_padaug_preview] running" in line:
            break
    time.sleep(4)
    os.killpg(runner.pid, signal.SIGINT)
    _, err = runner.communicate(timeout=120)
    assert runner.returncode == 130
    assert "Traceback" not in err
    assert "stopped by Ctrl-C during 01_padaug_preview; kept: the finished stages (none)" in err
    assert err.strip().endswith("--stages 01-02")
    assert not (tmp_path / "out" / "tiny" / "stages" / "01_padaug_preview.json").exists()


# ---------------------------------------------------------------------------- moved, copied, renamed, branched
def _finish(tmp_path, stages, *overrides):
    """The miniature run with ``stages`` finished by the stand-in (markers with real fingerprints)."""
    cfg = make_run(tmp_path)
    assert run.main(["--no-preflight", *run_items(tmp_path, *overrides), "--stages", stages]) == 0
    return cfg


@pytest.mark.parametrize("how", ["copy", "copy with new times", "rename", "move outputs and data"])
def test_a_copied_renamed_or_moved_run_resumes_without_running_its_finished_stages(tmp_path, fake_stages, capsys, how):
    import shutil

    calls, _ = fake_stages
    cfg = _finish(tmp_path, "01-04")
    assert calls == list(run.STAGES[:4])
    outputs, data = tmp_path / "outputs", tmp_path / "data"
    items = run_items(tmp_path, "run.name=B")
    if how == "copy":                                       # cp -a, rsync -a: times kept
        shutil.copytree(cfg.run_dir, outputs / "B")
    elif how == "copy with new times":                      # cp -r: every file read again, same contents
        shutil.copytree(cfg.run_dir, outputs / "B", copy_function=shutil.copyfile)
    elif how == "rename":
        cfg.run_dir.rename(outputs / "B")
    else:                                                   # another disk: the outputs and the data root move
        (tmp_path / "elsewhere" / "outputs").mkdir(parents=True)
        shutil.move(cfg.run_dir, tmp_path / "elsewhere" / "outputs" / "B")
        shutil.move(data, tmp_path / "elsewhere" / "data")
        items = run_items(tmp_path / "elsewhere", "run.name=B")
    capsys.readouterr()
    assert run.main(["--no-preflight", *items, "--stages", "05-07"]) == 0
    assert calls[4:] == list(run.STAGES[4:]), capsys.readouterr().err
    moved = config.load(items[0], overrides=items[1:])
    status = runfolder.stage_status(run.STAGES, moved, moved.run_dir)
    assert all(status[s].finished and not status[s].out_of_date for s in run.STAGES), status
    out = capsys.readouterr().out
    assert "same params, new place (" in out and "run.name: tiny -> B" in out and "params.yaml updated" in out
    recorded = (moved.run_dir / "params.yaml").read_text()
    assert "name: B" in recorded and (how != "move outputs and data" or str(tmp_path / "elsewhere") in recorded)


def test_a_moved_data_root_keeps_the_features_current(tmp_path, fake_stages):
    calls, _ = fake_stages
    cfg = _finish(tmp_path, "01-07")
    (tmp_path / "data").rename(tmp_path / "data2")
    items = run_items(tmp_path, f"data.root={tmp_path / 'data2'}")
    assert run.main(["--no-preflight", *items]) == 0 and calls == list(run.STAGES)      # nothing ran again
    label_file = tmp_path / "data2" / "annotations" / "Train_Set" / "trainA.txt"
    label_file.write_text(label_file.read_text() + "3\n")  # other contents are still seen
    moved = config.load(items[0], overrides=items[1:])
    assert runfolder.stage_status(run.STAGES, moved, cfg.run_dir)["02_stage1_train"].changed == ("annotations",)


@pytest.mark.parametrize("change, expected", [
    ("fusion.epochs=2", run.STAGES[4:]),
    ("submission.filename=other.txt", run.STAGES[6:]),
    ("audio.layers=last2", run.STAGES[3:4] + run.STAGES[4:]),       # not 03: audio does not build on it
    ("faces.max_gap=3", run.STAGES[2:3] + run.STAGES[4:]),         # not 04
])
def test_a_branch_reuses_its_source_and_runs_exactly_the_stages_a_changed_param_reaches(
        tmp_path, fake_stages, capsys, change, expected):
    calls, _ = fake_stages
    cfg = _finish(tmp_path, "01-07")
    source_markers = {s: runfolder.marker_path(cfg.run_dir, s).read_text() for s in run.STAGES}
    del calls[:]
    capsys.readouterr()
    items = run_items(tmp_path, "run.name=B", change)
    assert run.main(["--no-preflight", *items, "--from", "tiny"]) == 0
    assert calls == list(expected)
    out = capsys.readouterr().out
    reused = [s[:2] for s in run.STAGES if s not in expected]
    assert f"branched from {cfg.run_dir}: reused {', '.join(reused)} (" in out
    branch = cfg.run_dir.parent / "B"
    if "03_crop_extract" not in expected:                   # reused features: hard links, not copies
        assert (branch / "features/visual/trainA.npz").stat().st_ino == \
            (cfg.run_dir / "features/visual/trainA.npz").stat().st_ino
    else:
        assert not list((branch / "features" / "visual").glob("*"))    # not copied: 03 computes them anew
    assert (branch / "fusion" / "final_head.pt").exists() == ("05_fusion_ablation" not in expected)
    assert {s: runfolder.marker_path(cfg.run_dir, s).read_text() for s in run.STAGES} == source_markers
    assert run.main(["--no-preflight", *items, "--from", "tiny"]) == 0 and calls == list(expected)   # done: skipped
    assert "branched from" in capsys.readouterr().out
    with pytest.raises(runfolder.RunFolderError, match="a run of its own"):
        runfolder.branch_run(branch, cfg.run_dir, cfg, run.STAGES)


def test_a_stale_extraction_computes_again_rather_than_resuming_old_features(tmp_path, fake_stages, capsys):
    """A finished stage 03 out of date by what it computes (params, its Stage-I backbone) would skip every track
    already in its store (resume): its own outputs are removed first. Out of date only by new data files, it
    resumes (the finished tracks are kept)."""
    _, actions = fake_stages
    cfg = _finish(tmp_path, "01-07")
    seen = []

    def count(run_dir):
        return lambda: seen.append((len(list(run_dir.glob("features/visual/*.npz"))),
                                    len(list(run_dir.glob("features/audio/*.npz")))))

    actions["03_crop_extract"] = count(cfg.run_dir)
    (tmp_path / "data" / "videos" / "extra.mp4").write_bytes(b"more")
    assert run.main(["--no-preflight", *run_items(tmp_path), "--stages", "03-07"]) == 0
    assert seen == [(6, 6)]                                  # resumed
    (cfg.run_dir / "stage1").mkdir(exist_ok=True)
    (cfg.run_dir / "stage1" / "backbone.safetensors").write_bytes(b"another Stage-I backbone")
    capsys.readouterr()
    assert run.main(["--no-preflight", *run_items(tmp_path), "--stages", "03-07"]) == 0
    assert seen[-1] == (0, 6)
    assert "[03_crop_extract] removed its outputs made with other inputs, so that it computes them again: " \
           "features/visual" in capsys.readouterr().out
    actions["03_crop_extract"] = count(cfg.run_dir.parent / "C")
    assert run.main(["--no-preflight", *run_items(tmp_path, "run.name=C", "faces.max_gap=3"), "--from", "tiny"]) == 0
    assert seen[-1] == (0, 6)                                # a branch never copies what runs again


def test_markers_of_an_older_kit_are_fingerprinted_anew_or_reported(tmp_path, fake_stages, capsys):
    import shutil

    calls, _ = fake_stages
    cfg = _finish(tmp_path, "01-05")
    for stage in run.STAGES[:5]:                            # as an older kit wrote them
        marker = json.loads(runfolder.marker_path(cfg.run_dir, stage).read_text())
        marker["inputs"] = fingerprints.legacy_input_digests(stage, cfg, cfg.run_dir)
        del marker["fingerprint"]
        runfolder.marker_path(cfg.run_dir, stage).write_text(json.dumps(marker))
    shutil.copytree(cfg.run_dir, tmp_path / "outputs" / "B")
    copied = config.load("params/tiny.yaml", overrides=run_items(tmp_path, "run.name=B")[1:])
    status = runfolder.stage_status(run.STAGES, copied, copied.run_dir)       # where they lay changed: reported
    assert status["01_padaug_preview"].changed == ("params",) and status["01_padaug_preview"].old_marker
    assert "written by an older kit, recorded where the files lay" in status["03_crop_extract"].why()
    status = runfolder.stage_status(run.STAGES, cfg, cfg.run_dir, upgrade=True)   # in place: current, upgraded
    assert all(status[s].finished and not status[s].out_of_date for s in run.STAGES[:5])
    assert json.loads(runfolder.marker_path(cfg.run_dir, "05_fusion_ablation").read_text())["fingerprint"] == 2
    runfolder.marker_path(cfg.run_dir, "04_audio_align").write_text('{"stage": "04_au')       # cut short
    with pytest.raises(runfolder.RunFolderError, match="04_audio_align.json cannot be read"):
        runfolder.stage_status(run.STAGES, cfg, cfg.run_dir)


def test_the_digest_cache_is_used_and_survives_damage(tmp_path, fake_stages, monkeypatch):
    cfg = _finish(tmp_path, "01-07")
    before = fingerprints.input_digests("07_submission", cfg, cfg.run_dir)
    reads = []
    real_digest = fingerprints.DigestCache.digest

    def digest(self, path, stat=None, bar=None):
        if not (hit := self.entries.get(self.place(path))) or hit[:2] != [path.stat().st_size, path.stat().st_mtime_ns]:
            reads.append(path)
        return real_digest(self, path, stat, bar)

    monkeypatch.setattr(fingerprints.DigestCache, "digest", digest)
    assert fingerprints.input_digests("07_submission", cfg, cfg.run_dir) == before and reads == []
    cache = cfg.run_dir / fingerprints.DIGEST_CACHE
    cache.write_text(cache.read_text()[:100])               # a write cut short
    assert fingerprints.input_digests("07_submission", cfg, cfg.run_dir) == before and reads
    assert json.loads(cache.read_text())["files"]


def test_a_full_disk_ends_with_the_resume_line(tmp_path, fake_stages, capsys):
    import papermill

    _, actions = fake_stages
    make_run(tmp_path)
    items = run_items(tmp_path)
    failure = papermill.PapermillExecutionError(3, 3, "extract_visual(cfg, index)", "DiskFullError",
                                                "[Errno 28] No space left on device while writing x/v1.npz", [])
    stopped = run.stage_failure("03_crop_extract", failure, None, None, None)
    assert isinstance(stopped, run.DiskFull) and str(stopped) == "No space left on device while writing x/v1.npz"

    def full():
        raise stopped

    actions["03_crop_extract"] = full
    capsys.readouterr()
    assert run.main(["--no-preflight", *items]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["stopped by a full disk (No space left on device while writing x/v1.npz) during 03_crop_extract; "
                   "kept: the finished stages (01, 02) and the feature files of finished tracks; resume with: "
                   f"python -m kitlib.run {' '.join(items)} --stages 03-07"]


@pytest.mark.parametrize("stage", run.STAGES)
def test_each_stage_fingerprints_the_params_sections_its_code_and_notebook_read(stage):
    """A params section a stage reads but does not fingerprint would leave it current after a change."""
    import re

    root = config.repo_root()
    notebook = json.loads((root / "notebooks" / f"{stage}.ipynb").read_text())
    text = (root / "kitlib" / "stages" / f"s{stage}.py").read_text() + "".join(
        "".join(cell["source"]) for cell in notebook["cells"])
    sections = {f.name for f in config.dataclasses.fields(config.Config)}
    read = set(re.findall(r"cfg\.([a-z0-9_]+)\.", text)) & sections
    assert read <= set(fingerprints.STAGE_PARAMS[stage]), read - set(fingerprints.STAGE_PARAMS[stage])
