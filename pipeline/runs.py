"""Run operations behind the commands: submit, start (a local loop, or the scheduler), follow in
the foreground, hand over on Ctrl-C, advance with status, retry, cancel. The CLI parses arguments
and prints tables; these act on the run folder and the scheduler.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from diffusion import atomic

from .backends import backend
from .console import console, err_console
from .errors import UserError
from .layout import RunLayout
from .spec import freeze, load_frozen
from .states import JobState, RunState, TaskState


def submit(spec, root: Path, executor: str | None, wait: bool) -> int:
    """Check the spec's data and offline needs, write the run's inputs, start it."""
    executor = executor or spec.site.executor
    check(spec, root, executor)
    layout = write_inputs(spec, root, executor)
    return start(layout, executor, wait)


def check(spec, root: Path, executor: str) -> None:
    """What can be known before anything is written or queued: resources no job of this executor
    could ever get, the data the jobs will read, what offline jobs need fetched (fetched here)."""
    from .preflight import check_data
    from .prefetch import prefetch

    backend(executor).check_resources(spec)
    check_data(spec)
    fetched = prefetch(spec, Path(root).resolve())  # a spec that cannot run offline is refused whole
    if fetched:
        console.print("cached for offline jobs: " + ", ".join(fetched))


def write_inputs(spec, root: Path, executor: str, data_from: Path | None = None) -> RunLayout:
    """The run's folder and inputs (its frozen spec and config), or the same found there;
    `data_from`: a prepared-data folder the run shares (a study's variants with equal data)."""
    from .jobs import Registry, run_lock
    from .stages import write_run_inputs

    layout = RunLayout(root, spec.name)
    frozen = freeze(spec)
    layout.dir.mkdir(parents=True, exist_ok=True)
    added = []
    # two submits of one run at once: the second sees the first's inputs and jobs
    with run_lock(layout), contextlib.ExitStack() as held:
        if layout.spec.is_file():
            if layout.spec.read_text() != frozen:
                added = added_decodings(layout, spec)
                if not added:
                    raise UserError(f"run {spec.name!r} already exists at {layout.dir} with a different spec; "
                                    "give the new one another name (--set name=...) or remove the old folder "
                                    "(a spec that only adds decodings is taken)")
                held.enter_context(aggregate_held(layout))
                console.print(f"run [bold]{spec.name}[/] exists and gains the decodings {', '.join(added)}: "
                              "finished tasks are skipped, its results gathered again")
            else:
                console.print(f"run [bold]{spec.name}[/] exists with the same spec: finished tasks are skipped, "
                              "queued ones are not submitted again")
        registry = Registry(layout)
        if registry.executor and registry.executor != executor:
            raise UserError(f"run {spec.name!r} was submitted with the {registry.executor} executor; "
                            f"continue it with --executor {registry.executor}")
        if data_from is not None and not os.path.lexists(layout.data):
            data_from.mkdir(parents=True, exist_ok=True)
            layout.data.symlink_to(os.path.relpath(data_from, layout.dir), target_is_directory=True)
        write_run_inputs(layout, spec, frozen)
        if added:
            gather_again(layout)
        layout.cancel_flag.unlink(missing_ok=True)
    from .run_index import remember

    problem = remember(layout.run_id, layout.dir)  # so that `pipeline status RUN` finds it from anywhere
    if problem:
        err_console.print(f"warning: {problem}; the other commands find this run with --root {layout.root}", highlight=False)
    return layout


def added_decodings(layout: RunLayout, spec) -> list[str]:
    """The decodings `spec` adds to the run's frozen spec, where it differs from it in nothing
    else (each decoding it had kept as it was): decoding a trained run another way needs no new
    run. Empty where anything else differs."""
    from dataclasses import replace

    old = load_frozen(layout.spec)
    have = [d.name for d in old.decodings]
    new = [d.name for d in spec.decodings]
    if not set(have) <= set(new) or freeze(replace(spec, decodings=tuple(map(spec.decoding, have)))) != freeze(old):
        return []
    return [name for name in new if name not in have]


@contextlib.contextmanager
def aggregate_held(layout: RunLayout):
    """The run's aggregate task lock, while its spec gains decodings: no aggregate starts meanwhile
    (one that does leaves the task alone), and one running now, which will want the run's lock to
    mark itself done, is not waited for under that lock but refused."""
    from diffusion import locks

    from .layout import task_name

    name = task_name("aggregate")
    try:
        with locks.exclusive(layout.task_lock(name), what=f"{name}: its run gains decodings"):
            yield
    except locks.LockHeld:
        raise UserError(f"run {layout.run_id!r} is gathering its results right now; submit again in a moment") from None


def gather_again(layout: RunLayout) -> None:
    """Forget the run's aggregate, done or queued (its table lacks the added decodings): a queued
    aggregate job, no longer its task's, leaves it to the one submitted after the new evaluations."""
    from .jobs import Registry
    from .plan import Task

    registry = Registry(layout)
    forget_task(layout, registry, Task("aggregate"))
    registry.save()


def forget_task(layout: RunLayout, registry, task) -> None:
    """Forget that a task ran (its done and failed markers, its attempts, its current job in
    `registry`, saved by the caller): the next pass submits it afresh."""
    from .jobs import clear_attempts

    layout.marker(**task.key, kind="failed").unlink(missing_ok=True)
    layout.undo(**task.key)
    clear_attempts(layout, task.name)
    registry.forget(task.name)


def start(layout: RunLayout, executor: str, wait: bool) -> int:
    """Submit what is ready (the whole chain on Slurm); the local executor gets its own loop."""
    from .advance import advance

    if wait:
        return run_in_foreground(layout, executor)
    if backend(executor).drives_itself:
        if run_is_done(layout):
            console.print(f"[bold]{layout.run_id}[/] is already done: results in {layout.results}")
        elif not start_local_loop(layout):
            console.print(f"[bold]{layout.run_id}[/] is already running (local) → {layout.dir}\n"
                          f"follow it with: pipeline status {layout.run_id}")
        else:
            console.print(f"started [bold]{layout.run_id}[/] (local) → {layout.dir}\n"
                          f"follow it with: pipeline status {layout.run_id}")
        return 0
    report = advance(layout, executor)
    if not report["submitted"] and run_is_done(layout):
        console.print(f"[bold]{layout.run_id}[/] is already done: results in {layout.results}")
        return 0
    queued = ", ".join(report["submitted"]) or "nothing new (already running or queued)"
    console.print(f"[bold]{layout.run_id}[/] ({executor}) → {layout.dir}\nsubmitted: {queued}")
    console.print(backend(executor).after_submit.format(run=layout.run_id))
    return 0


def run_is_done(layout: RunLayout) -> bool:
    from .plan import tasks

    return all(layout.is_done(**task.key) for task in tasks(load_frozen(layout.spec)))


def start_local_loop(layout, driven: Sequence[RunLayout] = ()) -> bool:
    """Start the background loop of a run (or a study's folder: `python -m pipeline.advance` takes
    either); False if one already carries it. The loop's pid is written in the folder, and in
    each of `driven` (a study's runs: so that a run's own status sees it driven)."""
    from .jobs import run_lock
    from .status import local_loop_alive

    with run_lock(layout):
        if local_loop_alive(layout):
            return False  # submitted twice: one loop carries the run
        log = layout.driver_log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.advance", str(layout.dir), "--loop", "2"],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=layout.dir, env=importable_environment())
        mark_driver([layout, *driven], proc.pid, proc.pid)
    return True


def mark_driver(folders, pid: int, pgid: int) -> None:
    """Record the local executor's loop (this process, or one just started) in each folder it drives."""
    for folder in folders:
        atomic.write_json(folder.driver, {"pid": pid, "pgid": pgid, "started": time.time()})


def importable_environment() -> dict:
    """This environment, with the folder this package was imported from first on PYTHONPATH: a
    process started elsewhere imports the same pipeline (installed, or a checkout run in place)."""
    here = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])}


def run_in_foreground(layout: RunLayout, executor: str) -> int:
    from .advance import watch

    drives_itself = backend(executor).drives_itself
    if drives_itself:  # this process is the run's loop while it follows it
        mark_driver([layout], os.getpid(), os.getpgid(0))
    from .follow import ProgressBars, ProgressLines

    # bars on a terminal; piped or redirected (a log file, `make demo > log`), a plain line
    follow = ProgressBars(layout) if console.is_terminal else ProgressLines(layout)
    with follow:
        try:
            st = watch(layout, executor, interval=2 if drives_itself else 5, on_pass=follow)
        except KeyboardInterrupt:
            return hand_over(layout, executor)
    if st["state"] != RunState.DONE:
        print_failures(st)
        return 1
    console.print(f"[green]done[/] {layout.run_id}: results in {layout.results}")
    return 0


def hand_over(layout: RunLayout, executor: str) -> int:
    """Ctrl-C during --wait stops the following, not the study: the jobs ignore it, and on the
    local executor a background loop takes over from this process."""
    scheduler = backend(executor)
    if scheduler.drives_itself:
        layout.driver.unlink(missing_ok=True)  # ours: this process is ending
        start_local_loop(layout)
        where = "in the background on this machine"
    else:
        where = f"on {executor}" + (" (its next stages are submitted by `pipeline status` or `pipeline watch`)"
                                    if not scheduler.jobs_can_wait else "")
    err_console.print(f"stopped following {layout.run_id}; it goes on {where}. Follow it with "
                      f"`pipeline status {layout.run_id}`, stop it with `pipeline cancel {layout.run_id}`", highlight=False)
    return 130


def print_failures(st: dict) -> None:
    for failure in st["failures"]:
        err_console.print(f"[red]failed[/] {failure['task']}: {failure['error']}\n  log: {failure['log']}", highlight=False)
    if st["state"] == RunState.CANCELLED:
        err_console.print(f"{st['run']} was cancelled")


def advance_and_status(layout: RunLayout) -> dict:
    """One scheduler query; submits what became ready (not for the local executor, whose own loop
    does). A run folder that cannot be written (read-only, full) is reported all the same, with
    nothing submitted."""
    from .advance import advance
    from .errors import write_problem
    from .jobs import Registry
    from .status import run_status

    executor = Registry(layout).executor or load_frozen(layout.spec).site.executor
    submit = not backend(executor).drives_itself
    try:
        report = advance(layout, executor, submit=submit)
    except OSError as err:
        if not submit or write_problem(err) is None:
            raise
        report = {**advance(layout, executor, submit=False), "not_submitted": write_problem(err)}
    st = run_status(layout, report)
    if report.get("not_submitted"):
        st["next"] = f"nothing was submitted ({report['not_submitted']}). " + st["next"]
    return st


def retry(layout: RunLayout, wait: bool) -> int:
    """Forget the failed tasks' failures and jobs, and start the run again from where it is; a
    task whose outputs were damaged is done again with every task that reads them."""
    st = advance_and_status(layout)
    retried = forget_failed(layout, st)
    if not retried and st["state"] not in (RunState.CANCELLED, RunState.STOPPED):
        console.print(f"{layout.run_id}: no failed task to retry ({st['state']})")
        return 0
    console.print(f"retrying {', '.join(retried) or 'the stopped run'}")
    return start(layout, st["executor"] or load_frozen(layout.spec).site.executor, wait)


def forget_failed(layout: RunLayout, st: dict | None = None) -> list[str]:
    """Forget the run's failed tasks (and, for damaged outputs, every task that reads them) and its
    cancel flag, so that the next pass submits them again; the tasks' names."""
    from .jobs import Registry, run_lock
    from .plan import Task, dependents
    from .status import run_status

    if st is None:
        from .advance import advance

        st = run_status(layout, advance(layout, submit=False))
    spec = load_frozen(layout.spec)
    retried = []
    with run_lock(layout):
        registry = Registry(layout)
        for stage in st["stages"]:
            for task in stage["tasks"]:
                if task["state"] != TaskState.FAILED:
                    continue
                again = [Task(task["stage"], task["step"], task["decoding"])]
                if (layout.failure(**again[0].key) or {}).get("damaged"):
                    again += dependents(again[0], spec)
                for redo in again:
                    forget_task(layout, registry, redo)
                    retried.append(redo.name)
        registry.save()
        layout.cancel_flag.unlink(missing_ok=True)
    return list(dict.fromkeys(retried))


def cancel(layout: RunLayout) -> int:
    """Flag the run cancelled (nothing submits it, no task is marked done after), then stop its
    live jobs and, on this machine, every process of the run: its local loop, and any process
    holding one of its task or trainer locks whatever the registry says."""
    from .backends import is_live
    from .backends.local import stop_processes
    from .jobs import Registry, run_lock
    from .plan import holder, tasks
    from .status import local_loop_alive

    spec = load_frozen(layout.spec)
    with run_lock(layout):  # no advance submits, and no task marks itself done, from here on
        atomic.write_json(layout.cancel_flag, {"time": time.time()})
        try:
            registry = Registry(layout)
            ids, executor = registry.all_job_ids(), registry.executor
        except UserError:  # a damaged registry: the processes are found by their locks below
            ids, executor = [], None
    # the signals go out after the lock is let go: a task about to finish takes it, finds the
    # flag and stops unmarked
    scheduler = backend(executor or spec.site.executor)
    states = scheduler.query(ids) if ids else {}
    live = [jid for jid in ids if is_live(states.get(jid, JobState.FINISHED))]
    here = socket.gethostname()
    holders = [found["pid"] for task in tasks(spec)
               if (found := holder(layout, task)) and found.get("host") == here and found.get("pid")]
    loop = layout.read_json(layout.driver) if local_loop_alive(layout) else None
    stopped = (scheduler.cancel(live) or 0) if live else 0
    stopped += stop_processes(holders + ([loop["pid"]] if loop else []))  # what is left of them here
    console.print(f"cancelled {layout.run_id}: {len(live)} job(s) cancelled, {stopped} process(es) stopped on this "
                  f"machine; `pipeline retry {layout.run_id}` continues it")
    return 0


def repair(layout: RunLayout) -> int:
    """Rebuild a damaged job registry from the jobs' start markers, then go on as `retry` would."""
    from . import jobs

    data = jobs.repair(layout, load_frozen(layout.spec).site.executor)
    console.print(f"{layout.registry} rebuilt: {len(data['tasks'])} task(s) with a job that started them")
    return start(layout, data["executor"], wait=False)
