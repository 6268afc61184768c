"""Advancing a run: one scheduler query, then submit whatever has become ready. Idempotent and
safe to run from several processes at once (`pipeline submit`, `status`, `watch`, the local loop).

For each task not done, in the study's order:
- its current job is live and still the right one → leave it;
- its current job waits for a job it no longer needs (its checkpoint is complete while training
  goes on; its prerequisite ran elsewhere) or for a job that no longer carries a prerequisite →
  submit a fresh job; the old one finds it was superseded and exits at once;
- it has no live job: failed by its own error → left for `pipeline retry`; killed (signal, time
  limit, node failure, cancelled) → resubmitted, at most MAX_ATTEMPTS starts in all;
- a new job waits (Slurm: afterok) for the live jobs of unfinished prerequisites; where jobs
  cannot wait (local, PJM) a task is submitted only when its inputs are ready.
Tasks of one stage submitted in one pass with the same dependencies go out as one array.

    python -m pipeline.advance RUN_DIR [--loop SECONDS]      (the local executor's background loop)
"""

from __future__ import annotations

import argparse
import sys
import time

from .backends import backend, is_live
from .errors import UserError, write_problem
from .jobs import Registry, attempts, run_lock
from .layout import RunLayout
from .plan import Task, holder, inputs_ready, prerequisites, tasks
from .spec import JobSpec, load_frozen
from .states import JobState, RunState

MAX_ATTEMPTS = 3  # starts of one task before the pipeline stops resubmitting it by itself


def advance(layout: RunLayout, executor: str | None = None, submit: bool = True) -> dict:
    """One pass: {"executor", "states": {job id: state}, "submitted": [tasks], "given_up": {task: starts}}.
    Without `submit` it only reads (no lock: every file is replaced whole), so that it also
    answers on a read-only filesystem."""
    if not submit:
        return _pass(layout, executor, submit=False)
    with run_lock(layout):
        return _pass(layout, executor, submit=True)


def _pass(layout: RunLayout, executor: str | None, submit: bool) -> dict:
    spec = load_frozen(layout.spec)
    registry = Registry(layout)
    executor = registry.executor or executor or spec.site.executor
    scheduler = backend(executor)
    undone = [t for t in tasks(spec) if not layout.is_done(t.stage, t.step)]
    ids = [registry.job_id(t.name) for t in undone if registry.job_id(t.name)]
    states = scheduler.query(ids) if ids else {}  # the one scheduler query of this pass
    report = {"executor": executor, "states": states, "submitted": [], "given_up": {}, "superseded": []}
    if not submit or layout.cancel_flag.is_file():
        return report
    plan: list[tuple[Task, list[str]]] = []  # (task, names of the prerequisites it waits for)
    live_job: dict[str, str] = {}  # task name -> the job that will produce it, after this pass
    for task in undone:
        entry = registry.current(task.name)
        live = entry is not None and is_live(states.get(entry["job_id"], JobState.UNKNOWN))
        if not live and holder(layout, task) is not None:
            continue  # a process runs it that its registry entry does not name: never a second one
        waits_for = unfinished_prerequisites(task, spec, layout, live_job)
        if live and not _stale(entry, waits_for, live_job, states):
            live_job[task.name] = entry["job_id"]
            continue
        if not live:
            failure = layout.failure(task.stage, task.step)
            if failure and not failure.get("retryable"):
                continue  # its own error: the same job would fail again; `pipeline retry` resubmits it
            if attempts(layout, task.name) >= MAX_ATTEMPTS:
                report["given_up"][task.name] = attempts(layout, task.name)
                continue
        if waits_for is None or (waits_for and not scheduler.jobs_can_wait):
            continue  # nothing will produce a prerequisite as things stand, or jobs cannot wait here
        if not scheduler.has_room(spec, task, [t for t in tasks(spec) if t.name in live_job]):
            continue
        if live:  # superseded: it would wait for a job it no longer needs, or for the wrong one
            report["superseded"].append(entry["job_id"])
        plan.append((task, waits_for))
        live_job[task.name] = "(planned)"
    report["submitted"] = _submit(layout, spec, executor, plan, registry, live_job)
    if report["superseded"]:
        scheduler.cancel(report["superseded"])  # pending and replaced; they would exit at once anyway
    return report


def unfinished_prerequisites(task: Task, spec: JobSpec, layout: RunLayout, live_job: dict) -> list[str] | None:
    """Names of the prerequisites the task must wait for ([] when its inputs are ready), or None
    when one of them is neither done nor carried by a job (failed, given up, not yet submittable)."""
    if inputs_ready(layout, task, spec):
        return []
    names = []
    for pre in prerequisites(task, spec):
        if layout.is_done(pre.stage, pre.step):
            continue
        if pre.name not in live_job:
            return None
        names.append(pre.name)
    return names


def _stale(entry: dict, waits_for: list[str] | None, live_job: dict, states: dict) -> bool:
    """A pending job that waits for a job it no longer needs, or not for the current one."""
    if _running(states.get(entry["job_id"])) or waits_for is None:
        return False
    if JobState.UNKNOWN in (states.get(jid) for jid in [entry["job_id"], *entry.get("after", [])]):
        return False  # the scheduler did not answer for it: never replace a job on a guess
    wanted = {live_job[name] for name in waits_for}
    if not wanted:  # inputs ready: stale if it still waits for any job that has not finished
        return any(is_live(states.get(jid, JobState.FINISHED)) for jid in entry.get("after", []) if jid in states)
    return not wanted <= set(entry.get("after", []))


def _running(state: str | None) -> bool:
    return state in (JobState.RUNNING, JobState.COMPLETING)


def _submit(layout: RunLayout, spec: JobSpec, executor: str, plan, registry: Registry, live_job: dict) -> list[str]:
    """Submit the planned tasks stage by stage, so that a prerequisite's job id is known before its
    dependents go out. One stage's tasks become one array when they wait for the same jobs, or
    when each waits for the matching task of one array (Slurm's aftercorr)."""
    from .layout import STAGES

    submitted = []
    for stage in STAGES:
        staged = [(task, [live_job[name] for name in after]) for task, after in plan if task.stage == stage]
        for group, after, correspond in _arrays(staged):
            res = getattr(spec.resources, stage)
            name = f"{layout.run_id}-{group[0][0].name if len(group) == 1 else stage}"
            jobs = submit_group(layout, spec, executor, res, name, group, after, correspond)
            for (task, after), job_id in zip(group, jobs):
                registry.record(task.name, executor, job_id, after)
                live_job[task.name] = job_id
                submitted.append(task.name)
            registry.save()  # after every submission: a crash later loses no job id
    return submitted


def _arrays(staged: list[tuple[Task, list[str]]]) -> list[tuple[list, list[str], str | None]]:
    """[(tasks with their dependencies, the job ids they all wait for, or the array whose task i
    task i waits for)] for one stage."""
    if not staged:
        return []
    deps = [tuple(after) for _, after in staged]
    if len(set(deps)) == 1:
        return [(staged, list(deps[0]), None)]
    arrays = {d[0].split("_")[0] for d in deps if len(d) == 1}
    if len(arrays) == 1 and all(d == (f"{next(iter(arrays))}_{i}",) for i, d in enumerate(deps)):
        return [(staged, [], next(iter(arrays)))]  # task i waits for task i
    return [([item], list(item[1]), None) for item in staged]


def submit_group(layout: RunLayout, spec: JobSpec, executor: str, res, name: str, group, after: list[str],
                 correspond: str | None = None) -> list[str]:
    from .stages import run_task

    scheduler = backend(executor)
    ex = scheduler.make_executor(layout.submitit_logs, spec.site, res, name)
    if after or correspond:
        scheduler.wait_for(ex, after, correspond)
    with ex.batch():
        jobs = [ex.submit(run_task, str(layout.dir), task.stage, task.step) for task, _ in group]
    return [str(job.job_id) for job in jobs]


def watch(layout: RunLayout, executor: str | None = None, interval: float = 30.0, on_pass=None) -> dict:
    """Advance until the study is done, blocked (failed tasks, given up) or cancelled."""
    from .status import run_status

    while True:
        report = advance(layout, executor)
        status = run_status(layout, report)
        if on_pass:
            on_pass(status)
        if status["state"] in (RunState.DONE, RunState.FAILED, RunState.CANCELLED):
            return status
        time.sleep(interval)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.advance")
    parser.add_argument("run_dir")
    parser.add_argument("--loop", type=float, default=None, help="advance every SECONDS until the study ends")
    args = parser.parse_args(argv)
    from .stages import layout_of

    layout = layout_of(args.run_dir)
    try:
        if args.loop is None:
            print(advance(layout))
            return 0
        return 0 if watch(layout, interval=args.loop)["state"] == RunState.DONE else 1
    except (UserError, OSError) as err:  # a damaged registry, a disk that refuses writes: `status` says so too
        if isinstance(err, OSError) and write_problem(err) is None:
            raise
        print(f"[pipeline] the run's loop stops: {write_problem(err) if isinstance(err, OSError) else err}",
              file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
