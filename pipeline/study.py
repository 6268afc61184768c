"""A study's operations: submit its runs together, drive and follow them in one loop, report them
in one table from one scheduler query, and gather one results table. Each variant stays an
ordinary run: `pipeline status|retry|cancel <study>-<variant>` act on it alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from diffusion import atomic, locks
from diffusion.config import to_dict

from .backends import backend
from .console import console, err_console
from .errors import UserError, write_problem
from .layout import RunLayout, StudyLayout
from .states import RunState
from .study_spec import Study

ENDED = (RunState.DONE, RunState.FAILED, RunState.CANCELLED)  # nothing more happens in a run so left


# --- submit ---
def submit(study: Study, root: Path, executor: str | None, wait: bool, only: list[str] | None = None) -> int:
    """Check every variant before anything is written, write the study's record and each run's
    inputs (variants with equal data sections sharing one prepared folder), then start them.
    `only`: these variants now (a study too big for one machine's time, in parts); the others
    can be submitted the same way later, into the same study."""
    from . import runs
    from .run_index import remember

    unknown = sorted(set(only or ()) - set(study.runs))
    if unknown:
        raise UserError(f"{study.file}: no variant {unknown[0]!r}; its variants are {', '.join(study.runs)}")
    specs = list(study.runs.values())
    chosen = [spec for variant, spec in study.runs.items() if not only or variant in only]
    executor = executor or specs[0].site.executor
    for spec in chosen:
        runs.check(spec, root, executor)
    layout = StudyLayout(root, study.name)
    record = {"study": study.name, "file": study.file, "executor": executor,
              "runs": {variant: spec.name for variant, spec in study.runs.items()},
              "concurrent_train": study.concurrent_train}
    with locks.exclusive(layout.submit_lock, what="pipeline submit", wait=True):
        found = read_record(layout)
        if found and found.get("runs") != record["runs"]:
            raise UserError(f"study {study.name!r} already exists at {layout.dir} with the variants "
                            f"{', '.join(found.get('runs', {}))}; give the new one another name (`study:`) "
                            "or remove the old folder")
        atomic.write_text(layout.record, yaml.safe_dump(record, sort_keys=False))
    sharing = Counter(data_digest(spec) for spec in specs)  # variants a data section has
    for spec in chosen:
        shared = layout.data(data_digest(spec)) if sharing[data_digest(spec)] > 1 else None
        runs.write_inputs(spec, root, executor, data_from=shared)
    problem = remember(study.name, layout.dir)
    if problem:
        err_console.print(f"warning: {problem}; the other commands find this study with --root {layout.root}",
                          highlight=False)
    return start(layout, wait)


def data_digest(spec) -> str:
    """The name of the prepared-data folder of a data section: equal sections, one folder."""
    return hashlib.sha256(json.dumps(to_dict(spec.data), sort_keys=True).encode()).hexdigest()[:12]


def read_record(layout: StudyLayout) -> dict | None:
    try:
        found = yaml.safe_load(layout.record.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return found if isinstance(found, dict) else None


def run_layouts(layout: StudyLayout) -> list[RunLayout]:
    record = read_record(layout)
    if record is None:
        raise UserError(f"{layout.record}: missing or damaged; submit the study file again to rewrite it")
    runs = [RunLayout(layout.root, run_id) for run_id in record["runs"].values()]
    return [run for run in runs if run.spec.is_file()]  # variants not submitted (yet: `submit --only`) left out


def executor_of(layout: StudyLayout) -> str:
    return read_record(layout)["executor"]


def start(layout: StudyLayout, wait: bool) -> int:
    """Submit what is ready (on Slurm, the whole chain), or start the local loop of every run."""
    executor = executor_of(layout)
    if wait:
        return follow(layout)
    if backend(executor).drives_itself:
        started = start_loop(layout)
        console.print(f"{'started' if started else 'already running:'} [bold]{layout.name}[/] (local, "
                      f"{len(run_layouts(layout))} runs) → {layout.dir}\nfollow it with: pipeline status {layout.name}")
        return 0
    reports = advance(layout)
    for run_id, report in reports.items():
        console.print(f"[bold]{run_id}[/] ({executor}) submitted: "
                      f"{', '.join(report['submitted']) or 'nothing new (done, running or queued)'}")
    console.print(backend(executor).after_submit.format(run=layout.name))
    return 0


# --- advance and status ---
def advance(layout: StudyLayout, submit: bool = True) -> dict[str, dict]:
    """One pass over the study's runs: one scheduler query, and what became ready submitted
    together (a stage's tasks of several runs as one array)."""
    from .advance import advance_runs

    record = read_record(layout)
    executor = record["executor"]
    at_once = record.get("concurrent_train", 1) if backend(executor).drives_itself else None
    return advance_runs(run_layouts(layout), executor, submit, train_at_once=at_once,
                        shared=layout.submitit_logs, name=layout.name)


def status(layout: StudyLayout, submit: bool | None = None) -> dict:
    """Every run's status from one pass. `submit`: by default as `pipeline status` does (submits
    what became ready, except on the local executor, whose loop does)."""
    from .status import run_status

    if submit is None:
        submit = not backend(executor_of(layout)).drives_itself
    try:
        reports = advance(layout, submit=submit)
        problem = None
    except OSError as err:  # a study folder that cannot be written: reported all the same
        if not submit or write_problem(err) is None:
            raise
        reports, problem = advance(layout, submit=False), write_problem(err)
    statuses = [run_status(run, reports[run.run_id]) for run in run_layouts(layout)]
    states = [st["state"] for st in statuses]
    for state in (RunState.RUNNING, RunState.QUEUED, RunState.STOPPED, RunState.FAILED, RunState.CANCELLED):
        if state in states:
            break
    else:
        state = RunState.DONE
    return {"study": layout.name, "state": state, "dir": str(layout.dir), "executor": executor_of(layout),
            "runs": statuses, "not_submitted": problem,
            "scheduler_queries": int(any(report["states"] for report in reports.values()))}


def ended(st: dict) -> bool:
    return all(run["state"] in ENDED for run in st["runs"])


# --- the local loop, and following ---
def watch(layout: StudyLayout, interval: float = 30.0, on_pass=None, submit: bool | None = True) -> dict:
    """Advance every run until each has ended; then the study's results table, where there are
    metrics for one. `submit`: as status takes it (None: `pipeline watch`, which leaves the local
    executor's submitting to its loop)."""
    while True:
        st = status(layout, submit=submit)
        if on_pass:
            on_pass(st)
        if ended(st):
            write_results(layout, quiet=True)
            return st
        time.sleep(interval)


def mark_driver(layout: StudyLayout, pid: int, pgid: int) -> None:
    """The loop that drives the study, in the study's folder and each run's (so that a run's own
    status sees its runs driven)."""
    driver = {"pid": pid, "pgid": pgid, "started": time.time(), "study": layout.name}
    atomic.write_json(layout.driver, driver)
    for run in run_layouts(layout):
        atomic.write_json(run.driver, driver)


def loop_alive(layout: StudyLayout) -> bool:
    from .backends.local import process_alive

    try:
        loop = json.loads(layout.driver.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(loop, dict) and process_alive(loop["pid"])


def start_loop(layout: StudyLayout) -> bool:
    """The study's background loop (`python -m pipeline.advance STUDY_DIR --loop 2`); False when
    one already drives it."""
    from .runs import importable_environment

    with locks.exclusive(layout.submit_lock, what="pipeline submit", wait=True):
        if loop_alive(layout):
            return False
        layout.driver_log.parent.mkdir(parents=True, exist_ok=True)
        with open(layout.driver_log, "a") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.advance", str(layout.dir), "--loop", "2"],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=layout.dir, env=importable_environment())
        mark_driver(layout, proc.pid, proc.pid)
    return True


def follow(layout: StudyLayout) -> int:
    """`submit --wait`: this process drives the study (on the local executor) and prints a line
    whenever a run moves on; Ctrl-C hands the study to a background loop."""
    from .runs import print_failures

    drives_itself = backend(executor_of(layout)).drives_itself
    if drives_itself:
        mark_driver(layout, os.getpid(), os.getpgid(0))
    lines = StudyLines()
    try:
        st = watch(layout, interval=2 if drives_itself else 5, on_pass=lines)
    except KeyboardInterrupt:
        if drives_itself:
            layout.driver.unlink(missing_ok=True)
            start_loop(layout)
        err_console.print(f"stopped following {layout.name}; it goes on. Follow it with `pipeline status "
                          f"{layout.name}`, stop it with `pipeline cancel {layout.name}`", highlight=False)
        return 130
    for run in st["runs"]:
        print_failures(run)
    if st["state"] != RunState.DONE:
        return 1
    console.print(f"[green]done[/] {layout.name}: results in {layout.results}")
    return 0


class StudyLines:
    """A line for a run whenever one of its stages finishes a task, and for every run each
    `every_s` seconds (training's progress)."""

    def __init__(self, every_s: float = 30.0):
        self.every_s, self.last, self.last_time = every_s, None, 0.0

    def __call__(self, st: dict) -> None:
        shown = {run["run"]: [(s["stage"], s["done"]) for s in run["stages"]] for run in st["runs"]}
        everyone = time.monotonic() - self.last_time >= self.every_s
        for run in st["runs"]:
            if everyone or self.last is None or shown[run["run"]] != self.last.get(run["run"]):
                print(f"[{time.strftime('%H:%M:%S')}] {run['run']}: {run['state']}  {summary(run)}", flush=True)
        if everyone:
            self.last_time = time.monotonic()
        self.last = shown


def summary(run: dict) -> str:
    """A run's stages in one line: done/total each, training by its steps."""
    from .follow import stage_progress

    parts = []
    for stage in run["stages"]:
        done, total, note = stage_progress(RunLayout(Path(run["dir"]).parent, run["run"]), stage)
        parts.append(f"{stage['stage']} {done}/{total}" + (f" ({note})" if stage["stage"] == "train" and
                                                           stage["state"] != "done" and "loss" in note else ""))
    return " | ".join(parts)


# --- retry, cancel, results ---
def retry(layout: StudyLayout, wait: bool) -> int:
    """Each run's failed tasks forgotten (and what depends on a damaged one), then the study
    started again from where it is."""
    from .runs import forget_failed

    retried = [f"{run.run_id}: {', '.join(names)}" for run in run_layouts(layout) if (names := forget_failed(run))]
    console.print("retrying " + ("; ".join(retried) or "what was stopped or cancelled"))
    return start(layout, wait)


def cancel(layout: StudyLayout) -> int:
    from . import runs

    for run in run_layouts(layout):
        if run.spec.is_file():
            runs.cancel(run)
    return 0


def metric_runs(layout: StudyLayout) -> list[RunLayout]:
    """The study's runs that have metrics so far (a study read while it runs shows what is done)."""
    return [run for run in run_layouts(layout) if run.metrics_files()]


def write_results(layout: StudyLayout, quiet: bool = False) -> dict | None:
    from .results import aggregate

    found = metric_runs(layout)
    if not found:
        if quiet:
            return None
        raise UserError(f"study {layout.name}: no metrics yet (no run has finished evaluating a checkpoint)")
    return aggregate([run.dir for run in found], layout.results)

