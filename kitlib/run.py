"""Run the numbered notebooks in order, headless, into one run folder.

    python -m kitlib.run params/demo.yaml                    # the whole chain on the demo
    python -m kitlib.run params/abaw10.yaml params/local.yaml stage1.epochs=6
    python -m kitlib.run params/demo.yaml --stages 05-07      # a subset (by number or name)
    python -m kitlib.run params/demo.yaml --stages 06 --rerun # run a finished stage again
    python -m kitlib.run params/demo.yaml fusion.epochs=5 run.name=demo-e5 --from demo   # branch a finished run

Each notebook gets the resolved params as its ``params`` parameter (papermill) and is written,
executed, to ``<run>/notebooks/``. A stage counts as finished when ``<run>/stages/<stage>.json``
exists; finished stages are skipped unless ``--rerun``. A run folder is tied to its params: running
it again with different params is refused (use another ``run.name``), so results always trace back
to the params recorded beside them. A failing cell stops the run and names the notebook, the cell
and the error.

The folder's safety machinery is in ``kitlib.runfolder``: one runner per folder (a lock naming its
holder), stage markers that record the digests of what each stage read (a stage whose inputs changed,
and every finished stage after it, is out of date: re-run when selected, else refused with the command),
stale partial files removed, writable folders and free space checked before each stage. Ctrl-C,
SIGTERM or a full disk ends with one line saying what is kept and the command that resumes.

Markers fingerprint what a stage's result depends on, not where it lies (the params the stage reads,
files by content, names relative to the run folder or the data root), so a run folder renamed, moved
or copied, or a moved data root, stays finished; ``--from A`` starts a new run folder from the finished
run ``A``, reusing the stages that the new params leave current.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from kitlib import config, progress, runfolder, summary
from kitlib.store import DISK_FULL as DISK_FULL_CODES

STAGES = ("01_padaug_preview", "02_stage1_train", "03_crop_extract", "04_audio_align",
          "05_fusion_ablation", "06_smoothing_sweep", "07_submission")


class StageFailed(RuntimeError):
    pass


class DiskFull(StageFailed):
    """A stage stopped because the disk refused a write (full, over quota, read-only)."""


def stage_failure(stage: str, exc, source: Path, target: Path, log_path: Path) -> StageFailed:
    """The runner's error for a notebook that raised ``exc`` (a ``PapermillExecutionError``): ``DiskFull``
    (message: the error line) when the disk refused a write, else ``StageFailed`` naming the cell."""
    refused = re.match(r"\[Errno (\d+)\] (.*)", str(exc.evalue), re.S)
    if exc.ename == "DiskFullError" or (refused and int(refused.group(1)) in DISK_FULL_CODES):
        return DiskFull(refused.group(2) if refused else str(exc.evalue))
    return StageFailed(f"stage {stage} failed in cell {exc.exec_count} of {source.name}:\n"
                       f"{exc.source}\n\n{exc.ename}: {exc.evalue}\n(executed notebook with the traceback: {target};"
                       f" log: {log_path})")


def select_stages(spec: str | None) -> list[str]:
    """``None`` = all; ``"03"``, ``"03,05"``, ``"03-05"`` or stage names."""
    if not spec:
        return list(STAGES)
    numbers = {s[:2]: s for s in STAGES}

    def one(token: str) -> str:
        token = token.strip()
        hit = numbers.get(token.zfill(2)[:2]) if token[:2].isdigit() else None
        hit = hit or next((s for s in STAGES if s == token or s[3:] == token), None)
        if hit is None:
            raise SystemExit(f"unknown stage {token!r}; stages: {', '.join(STAGES)}")
        return hit

    chosen: list[str] = []
    for part in spec.split(","):
        if "-" in part and part.split("-")[0].strip()[:2].isdigit():
            lo, hi = (STAGES.index(one(x)) for x in part.split("-", 1))
            chosen += STAGES[lo:hi + 1]
        else:
            chosen.append(one(part))
    return [s for s in STAGES if s in chosen]


def run_stage(stage: str, cfg: config.Config, run_dir: Path, *, kernel: str = "python3") -> float:
    """Execute one notebook with papermill; raise ``StageFailed`` naming the cell on error."""
    import papermill as pm

    root = config.repo_root()
    source = root / "notebooks" / f"{stage}.ipynb"
    target = run_dir / "notebooks" / f"{stage}.ipynb"
    start = time.time()
    log_path = run_dir / "logs" / f"{stage}.log"
    try:
        with progress.streaming(log_path):      # log lines + progress, live in the terminal and in logs/
            pm.execute_notebook(str(source), str(target), parameters={"params": cfg.to_dict()}, cwd=str(root),
                                kernel_name=kernel, progress_bar=False, log_output=False, report_mode=False,
                                extra_arguments=["--IPKernelApp.log_level=CRITICAL"])   # no kernel chatter (an interrupted cell is reported by the runner)
    except pm.PapermillExecutionError as exc:
        failure = stage_failure(stage, exc, source, target, log_path)
        with log_path.open("a", encoding="utf-8") as f:
            f.write(str(failure) + "\n")
        raise failure from None
    return runfolder.mark_finished(run_dir, stage, cfg, started=start)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so both end the same way."""


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted()


def plan_stages(selected: list[str], status: dict[str, runfolder.StageStatus], *, rerun: bool,
                resume: list[str]) -> list[tuple[str, str, str]]:
    """``(stage, what, why)`` per selected stage; ``what``: ``run``, ``rerun``, ``stale`` (run: out of date) or ``skip``.

    Raises ``RunFolderError`` with the command to run when a stage that would run builds on an earlier
    stage that is out of date and not selected (running it alone would build on stale outputs).
    """
    plan = []
    for stage in selected:
        st = status[stage]
        what = "stale" if st.out_of_date else "run" if not st.finished else "rerun" if rerun else "skip"
        behind = [s for s in runfolder.ancestors(stage) if s not in selected and s in status and status[s].out_of_date]
        if what != "skip" and behind:
            raise runfolder.RunFolderError(
                f"[{stage}] builds on {behind[0]}, which is out of date ({status[behind[0]].why()}); run "
                f"{shlex.join(resume)} --stages {behind[0][:2]}-{selected[-1][:2]}")
        plan.append((stage, what, st.why() if what == "stale" else ""))
    return plan


def total_line(run_dir: Path, ran: list[str]) -> str:
    """The closing line's time: the stages this command ran, as their markers record them (the summary page
    adds up the same markers, so both say the same), and the folder's total when earlier stages count too."""
    seconds = runfolder.stage_seconds(run_dir)
    here = sum(seconds.get(stage, 0.0) for stage in ran)
    line = f"all selected stages finished in {progress.duration(here)}"
    if set(seconds) - set(ran):
        line += f" ({progress.duration(sum(seconds.values()))} for all {len(seconds)} stages of the run folder)"
    return f"{line}; outputs in {run_dir}"


def _stage_spec(stages: list[str]) -> str:
    """``--stages`` for these stages: ``03`` / ``03-07`` when consecutive, else ``03,05``."""
    first, last = STAGES.index(stages[0]), STAGES.index(stages[-1])
    if list(STAGES[first:last + 1]) == list(stages):
        return stages[0][:2] + (f"-{stages[-1][:2]}" if len(stages) > 1 else "")
    return ",".join(s[:2] for s in stages)
def preflight_passes(cfg: config.Config, items: list[str]) -> bool:
    """The fast preflight (``kitlib.tools.doctor --fast``): one line when it passes, the table when it does not."""
    from kitlib.tools import doctor

    checks = doctor.preflight(cfg, fast=True)
    failed = [c for c in checks if c.status == doctor.FAIL]
    if failed:
        print(f"{doctor.table(checks)}\nfull check: python -m kitlib.tools.doctor {' '.join(items)}; "
              f"run anyway: --no-preflight", file=sys.stderr)
        return False
    warned = [f"{c.area} {c.what}: {c.detail}" for c in checks if c.status == doctor.WARN]
    print(f"preflight: {len(checks)} checks passed" + (f"; note: {'; '.join(warned)}" if warned else ""), flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m kitlib.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="*", help="params files (layered on params/base.yaml) and key=value overrides")
    parser.add_argument("--stages", help="subset: 03 | 03,05 | 03-05 | 05_fusion_ablation (default: all)")
    parser.add_argument("--rerun", action="store_true", help="run the selected stages even if finished")
    parser.add_argument("--no-preflight", action="store_true", help="skip the fast preflight (kitlib.tools.doctor --fast)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel for the notebooks")
    parser.add_argument("--from", dest="from_run", metavar="RUN",
                        help="start this new run folder from the finished run RUN (a run.name beside it, or a "
                             "folder): the stages the new params leave current are reused, the others run")
    args = parser.parse_args(argv)
    cfg = config.load_command_line(args.items)
    if cfg is None:
        return 2
    if not args.no_preflight and not preflight_passes(cfg, args.items):
        return 2
    command = ["python", "-m", "kitlib.run", *argv]
    stages = select_stages(args.stages)
    resume = ["python", "-m", "kitlib.run", *args.items]
    main_thread = threading.current_thread() is threading.main_thread()   # signal handlers: main thread only
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if main_thread else None
    previous_int = signal.getsignal(signal.SIGINT) if main_thread else None
    current = None
    try:
        with runfolder.acquire_lock(cfg.run_dir, command=command):
            if args.from_run:
                print(runfolder.branch_run(runfolder.source_run_dir(args.from_run, cfg), cfg.run_dir, cfg, STAGES),
                      flush=True)
            run_dir = runfolder.prepare_run_dir(cfg, argv=command)
            removed = runfolder.remove_partial_files(run_dir)
            if removed:
                print(f"removed {len(removed)} unfinished file(s) left by a killed run (e.g. {removed[0]})", flush=True)
            print(f"run folder: {run_dir}\nstages: {', '.join(stages)}", flush=True)
            status = runfolder.stage_status(STAGES, cfg, run_dir, upgrade=True)
            plan = plan_stages(stages, status, rerun=args.rerun, resume=resume)
            for stage, what, why in plan:
                if what == "skip":
                    print(f"[{stage}] finished earlier, skipped (--rerun to run it again)", flush=True)
                    continue
                if what == "stale":
                    print(f"[{stage}] out of date ({why}): running it again", flush=True)
                    if status[stage].recompute and (cleared := runfolder.clear_outputs(run_dir, stage)):
                        print(f"[{stage}] removed its outputs made with other inputs, so that it computes them "
                              f"again: {', '.join(str(p.relative_to(run_dir)) for p in cleared)}", flush=True)
                runfolder.check_can_write(stage, cfg, run_dir)
                current = stage
                runfolder.mark_started(run_dir, stage)
                last = progress.last_seconds(run_dir, stage)
                took = (f" (took {progress.duration(last[0])} last time"
                        f"{'' if last[1] == run_dir.name else ' in ' + last[1]})") if last else ""
                print(f"[{stage}] running{took} ... log: {run_dir / 'logs' / (stage + '.log')}", flush=True)
                try:
                    seconds = run_stage(stage, cfg, run_dir, kernel=args.kernel)
                except StageFailed:
                    summary.write(run_dir)
                    raise
                current = None
                print(f"[{stage}] done in {progress.duration(seconds)} -> {run_dir / 'notebooks' / (stage + '.ipynb')}",
                      flush=True)
            print(total_line(run_dir, [stage for stage, what, _ in plan if what != "skip"]), flush=True)
            print(summary.terminal_lines(run_dir), flush=True)
            return 0
    except runfolder.RunFolderError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except DiskFull as exc:
        print(_stop_line(f"a full disk ({exc})", current, stages, resume, cfg.run_dir, rerun=args.rerun),
              file=sys.stderr, flush=True)
        return 1
    except StageFailed as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        if main_thread:  # a second Ctrl-C while this line is written is ignored (restored below)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        name = "SIGTERM" if isinstance(exc, Interrupted) else "Ctrl-C"
        # the stopped notebook's kernel-client tasks are dropped mid-flight; when Ctrl-C also killed the kernel
        # first, asyncio would print their DeadKernelError as "Task exception was never retrieved" at exit
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        print(_stop_line(name, current, stages, resume, cfg.run_dir, rerun=args.rerun), file=sys.stderr, flush=True)
        return 130 if name == "Ctrl-C" else 143
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)


def _stop_line(cause: str, current: str | None, stages: list[str], resume: list[str], run_dir: Path, *,
               rerun: bool) -> str:
    """The one line a stopped run ends with: what stopped it, what is kept, the command that resumes."""
    rest = stages[stages.index(current):] if current else []
    again = resume + (["--stages", _stage_spec(rest)] if rest else []) + (["--rerun"] if rerun else [])
    kept = [s[:2] for s in STAGES if runfolder.marker_path(run_dir, s).is_file()]
    return (f"\nstopped by {cause}{f' during {current}' if current else ''}; kept: the finished stages "
            f"({', '.join(kept) or 'none'}) and the feature files of finished tracks; resume with: {shlex.join(again)}")


def exit_quietly(code: int) -> None:
    """Leave the process with ``code``: after a stop, a late second Ctrl-C (a terminal sends it to the
    kernel's process group too) must not turn exit 130 into death by SIGINT during shutdown."""
    if code in (130, 143):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # the stop line was the last word: the interrupted kernel client's shutdown noise (a dead kernel's
        # tasks collected at exit) goes nowhere
        sys.stderr.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    sys.exit(code)


if __name__ == "__main__":
    exit_quietly(main())
