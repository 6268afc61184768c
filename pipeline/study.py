"""A study's operations: submit its runs together, drive and follow them in one loop, report them
in one table from one scheduler query, and gather one results table. Each variant stays an
ordinary run: `pipeline status|retry|cancel <study>-<variant>` act on it alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

import yaml

from diffusion import atomic
from diffusion.config import to_dict

from .backends import backend
from .console import console, err_console
from .errors import UserError, write_problem
from .jobs import run_lock
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
    with run_lock(layout):
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


def record_of(layout: StudyLayout) -> dict:
    """The study's record, which a study needs: an error saying how to mend it where it is not."""
    record = read_record(layout)
    if record is None:
        raise UserError(f"{layout.record}: missing or damaged; submit the study file again to rewrite it")
    return record


def run_layouts(layout: StudyLayout, record: dict | None = None) -> list[RunLayout]:
    runs = [RunLayout(layout.root, run_id) for run_id in (record or record_of(layout))["runs"].values()]
    return [run for run in runs if run.spec.is_file()]  # variants not submitted (yet: `submit --only`) left out


def start(layout: StudyLayout, wait: bool) -> int:
    """Submit what is ready (on Slurm, the whole chain), or start the local loop of every run."""
    from .runs import start_local_loop

    executor = record_of(layout)["executor"]
    if wait:
        return follow(layout)
    if backend(executor).drives_itself:
        started = start_local_loop(layout, driven=run_layouts(layout))
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
def advance(layout: StudyLayout, submit: bool = True, record: dict | None = None) -> dict[str, dict]:
    """One pass over the study's runs: one scheduler query, and what became ready submitted
    together (a stage's tasks of several runs as one array)."""
    from .advance import advance_runs

    record = record or record_of(layout)
    executor = record["executor"]
    at_once = record.get("concurrent_train", 1) if backend(executor).drives_itself else None
    return advance_runs(run_layouts(layout, record), executor, submit, train_at_once=at_once,
                        shared=layout.submitit_logs, name=layout.name)


def status(layout: StudyLayout, submit: bool | None = None) -> dict:
    """Every run's status from one pass. `submit`: by default as `pipeline status` does (submits
    what became ready, except on the local executor, whose loop does)."""
    from .status import run_status

    record = record_of(layout)  # read once a pass: a login node's shared filesystem
    executor = record["executor"]
    if submit is None:
        submit = not backend(executor).drives_itself
    try:
        reports = advance(layout, submit, record)
        problem = None
    except OSError as err:  # a study folder that cannot be written: reported all the same
        if not submit or write_problem(err) is None:
            raise
        reports, problem = advance(layout, False, record), write_problem(err)
    statuses = [run_status(run, reports[run.run_id]) for run in run_layouts(layout, record)]
    states = [st["state"] for st in statuses]
    for state in (RunState.RUNNING, RunState.QUEUED, RunState.STOPPED, RunState.FAILED, RunState.CANCELLED):
        if state in states:
            break
    else:
        state = RunState.DONE
    return {"study": layout.name, "state": state, "dir": str(layout.dir), "executor": executor,
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
            write_results(layout)
            return st
        time.sleep(interval)


def follow(layout: StudyLayout) -> int:
    """`submit --wait`: this process drives the study (on the local executor) and prints a line
    whenever a run moves on; Ctrl-C hands the study to a background loop."""
    from .runs import mark_driver, print_failures, start_local_loop

    drives_itself = backend(record_of(layout)["executor"]).drives_itself
    if drives_itself:  # this process is the study's loop while it follows it
        mark_driver([layout, *run_layouts(layout)], os.getpid(), os.getpgid(0))
    lines = StudyLines()
    try:
        st = watch(layout, interval=2 if drives_itself else 5, on_pass=lines)
    except KeyboardInterrupt:
        if drives_itself:
            layout.driver.unlink(missing_ok=True)
            start_local_loop(layout, driven=run_layouts(layout))
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
    """The study's runs that have metrics so far (a study read while it runs shows what is done);
    an error where none has any yet."""
    found = [run for run in run_layouts(layout) if run.metrics_files()]
    if not found:
        raise UserError(f"study {layout.name}: no metrics yet (no run has finished evaluating a checkpoint)")
    return found


def write_results(layout: StudyLayout) -> None:
    """The study's own table, of every run with metrics (none where no run scored a checkpoint)."""
    from .results import aggregate

    try:
        found = metric_runs(layout)
    except UserError:
        return
    aggregate([run.dir for run in found], layout.results)
