"""Run operations behind the commands: submit, start (a local loop, or the scheduler), follow in
the foreground, hand over on Ctrl-C, advance with status, retry, cancel. The CLI parses arguments
and prints tables; these act on the run folder and the scheduler.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from diffusion import atomic

from .backends import backend
from .console import console, err_console
from .errors import UserError
from .layout import RunLayout
from .spec import REPO, freeze, load_frozen


def submit(spec, root: Path, executor: str | None, wait: bool) -> int:
    """Check the spec's data and offline needs, write the run's inputs, start it."""
    from .jobs import Registry, run_lock
    from .preflight import check_data
    from .prefetch import prefetch
    from .stages import write_run_inputs

    check_data(spec)  # the data the jobs will read, before anything is written or queued
    executor = executor or spec.site.executor
    layout = RunLayout(root, spec.name)
    frozen = freeze(spec)
    fetched = prefetch(spec, layout.root)  # before anything is written: a spec that cannot run offline is refused whole
    if fetched:
        console.print("cached for offline jobs: " + ", ".join(fetched))
    layout.dir.mkdir(parents=True, exist_ok=True)
    with run_lock(layout):  # two submits of one run at once: the second sees the first's inputs and jobs
        if layout.spec.is_file():
            if layout.spec.read_text() != frozen:
                raise UserError(f"run {spec.name!r} already exists at {layout.dir} with a different spec; "
                                "give the new one another name (--set name=...) or remove the old folder")
            console.print(f"run [bold]{spec.name}[/] exists with the same spec: finished tasks are skipped, "
                          "queued ones are not submitted again")
        registry = Registry(layout)
        if registry.executor and registry.executor != executor:
            raise UserError(f"run {spec.name!r} was submitted with the {registry.executor} executor; "
                            f"continue it with --executor {registry.executor}")
        write_run_inputs(layout, spec, frozen)
        (layout.state / "cancelled").unlink(missing_ok=True)
    return start(layout, executor, wait)


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

    return all(layout.is_done(task.stage, task.step) for task in tasks(load_frozen(layout.spec)))


def start_local_loop(layout: RunLayout) -> bool:
    """Start the run's background loop; False if one already carries it."""
    from .jobs import run_lock
    from .status import local_loop_alive

    with run_lock(layout):
        if local_loop_alive(layout):
            return False  # submitted twice: one loop carries the run
        log = layout.dir / "logs" / "driver.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.advance", str(layout.dir), "--loop", "2"],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=REPO)
        atomic.write_json(layout.state / "driver.json", {"pid": proc.pid, "pgid": proc.pid, "started": time.time()})
    return True


def run_in_foreground(layout: RunLayout, executor: str) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .advance import watch
    from .status import training_progress

    drives_itself = backend(executor).drives_itself
    if drives_itself:  # this process is the run's loop while it follows it
        atomic.write_json(layout.state / "driver.json", {"pid": os.getpid(), "pgid": os.getpgid(0), "started": time.time()})
    bars_by_stage = {}
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=console, transient=False) as bars:
        def on_pass(st):
            for stage in st["stages"]:
                done, total, note = stage["done"], stage["total"], stage["state"]
                if stage["stage"] == "train" and stage["state"] != "done" and (beat := training_progress(layout)):
                    done, total, note = beat["step"], beat["total_steps"], f"loss {beat['loss']:.4f}"
                if stage["stage"] not in bars_by_stage:
                    bars_by_stage[stage["stage"]] = bars.add_task(stage["stage"], total=total, note=note)
                bars.update(bars_by_stage[stage["stage"]], completed=done, total=total, note=note)

        try:
            st = watch(layout, executor, interval=2 if drives_itself else 5, on_pass=on_pass)
        except KeyboardInterrupt:
            return hand_over(layout, executor)
    if st["state"] != "done":
        print_failures(st)
        return 1
    console.print(f"[green]done[/] {layout.run_id}: results in {layout.results}")
    return 0


def hand_over(layout: RunLayout, executor: str) -> int:
    """Ctrl-C during --wait stops the following, not the study: the jobs ignore it, and on the
    local executor a background loop takes over from this process."""
    scheduler = backend(executor)
    if scheduler.drives_itself:
        (layout.state / "driver.json").unlink(missing_ok=True)  # ours: this process is ending
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
    if st["state"] == "cancelled":
        err_console.print(f"{st['run']} was cancelled")


def advance_and_status(layout: RunLayout) -> dict:
    """One scheduler query; submits what became ready (not for the local executor, whose own loop does)."""
    from .advance import advance
    from .jobs import Registry
    from .status import run_status

    executor = Registry(layout).executor or load_frozen(layout.spec).site.executor
    return run_status(layout, advance(layout, executor, submit=not backend(executor).drives_itself))


def retry(layout: RunLayout, wait: bool) -> int:
    """Forget the failed tasks' failures and jobs, and start the run again from where it is."""
    from .jobs import Registry, clear_attempts, run_lock

    st = advance_and_status(layout)
    retried = []
    with run_lock(layout):
        registry = Registry(layout)
        for stage in st["stages"]:
            for task in stage["tasks"]:
                if task["state"] == "failed":
                    layout.marker(task["stage"], task["step"], "failed").unlink(missing_ok=True)
                    clear_attempts(layout, task["task"])
                    registry.forget(task["task"])
                    retried.append(task["task"])
        registry.save()
        (layout.state / "cancelled").unlink(missing_ok=True)
    if not retried and st["state"] not in ("cancelled", "stopped"):
        console.print(f"{layout.run_id}: no failed task to retry ({st['state']})")
        return 0
    console.print(f"retrying {', '.join(retried) or 'the stopped run'}")
    return start(layout, st["executor"] or load_frozen(layout.spec).site.executor, wait)


def cancel(layout: RunLayout) -> int:
    """Flag the run cancelled (nothing submits it any more), stop its loop and its live jobs."""
    from .backends import is_live
    from .jobs import Registry, run_lock
    from .status import local_loop_alive

    with run_lock(layout):  # no advance can submit between the flag and the cancellation
        atomic.write_json(layout.state / "cancelled", {"time": time.time()})
        registry = Registry(layout)
        loop = layout.read_json(layout.state / "driver.json")
        scheduler = backend(registry.executor) if registry.executor else None
        if scheduler is None or scheduler.drives_itself:
            if local_loop_alive(layout):
                try:
                    os.killpg(loop["pgid"], signal.SIGTERM)  # the loop and the jobs it started
                except ProcessLookupError:
                    pass
        ids = registry.all_job_ids()
        states = scheduler.query(ids) if scheduler and ids else {}
        live = [jid for jid in ids if is_live(states.get(jid, "FINISHED"))]
        if scheduler and live:
            scheduler.cancel(live)
    console.print(f"cancelled {layout.run_id}: {len(live)} job(s) stopped; `pipeline retry {layout.run_id}` continues it")
    return 0
