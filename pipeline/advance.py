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
Tasks of one stage submitted in one pass with the same dependencies go out as one array; a pass
over a study's runs (advance_runs) queries the scheduler once for all of them and makes one array
of a stage's tasks across the runs where their resources and dependencies allow.

    python -m pipeline.advance RUN_DIR|STUDY_DIR [--loop SECONDS]    (the local executor's background loop)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from diffusion.config import to_dict

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
    return advance_runs([layout], executor, submit)[layout.run_id]


def advance_runs(layouts: list[RunLayout], executor: str | None = None, submit: bool = True,
                 train_at_once: int | None = None, shared: Path | None = None, name: str = "") -> dict[str, dict]:
    """One pass over several runs (a study's): one scheduler query for all their jobs, then what
    became ready submitted together, so that the runs' tasks of one stage go out as one array.
    `train_at_once`: at most this many training tasks live at once (the local executor's study
    loop); `shared`: the folder for submitit's files of a job that carries several runs' tasks,
    named `name`-<stage>. Returns each run's report, by run ID."""
    if not submit:
        return _pass(layouts, executor, False, train_at_once, shared, name)
    with contextlib.ExitStack() as held:
        for layout in sorted(layouts, key=lambda layout: str(layout.dir)):  # one order: no two passes deadlock
            held.enter_context(run_lock(layout))
        return _pass(layouts, executor, True, train_at_once, shared, name)


@dataclass(eq=False)  # one per run in a pass: compared and hashed by identity
class Run:
    """One run within a pass: what it holds, and which job will produce each of its tasks."""

    layout: RunLayout
    spec: JobSpec
    registry: Registry
    report: dict
    live_job: dict = field(default_factory=dict)  # task name -> the job that will produce it, after this pass


def _pass(layouts, executor, submit, train_at_once, shared, name) -> dict[str, dict]:
    runs = []
    for layout in layouts:
        registry = Registry(layout)
        spec = load_frozen(layout.spec)
        runs.append(Run(layout, spec, registry, {"executor": registry.executor or executor or spec.site.executor,
                                                 "states": {}, "submitted": [], "given_up": {}, "superseded": []}))
    undone = {run.layout.run_id: [t for t in tasks(run.spec) if not run.layout.is_done(**t.key)] for run in runs}
    for chosen in dict.fromkeys(run.report["executor"] for run in runs):  # one query (a study has one executor)
        mine = [run for run in runs if run.report["executor"] == chosen]
        ids = [jid for run in mine for t in undone[run.layout.run_id] if (jid := run.registry.job_id(t.name))]
        states = backend(chosen).query(ids) if ids else {}
        for run in mine:
            run.report["states"] = states
    if submit:
        plan = []  # (run, task, names of the prerequisites it waits for)
        busy: list = []  # the resources of every task live after this pass, over all the runs
        for run in runs:
            if not run.layout.cancel_flag.is_file():
                plan += _plan(run, undone[run.layout.run_id], busy, train_at_once)
        _submit(plan, shared, name)
        for run in runs:
            if run.report["superseded"]:
                backend(run.report["executor"]).cancel(run.report["superseded"])  # pending and replaced
    return {run.layout.run_id: run.report for run in runs}


def _plan(run: Run, undone: list[Task], busy: list, train_at_once: int | None) -> list[tuple]:
    """What to submit for one run, in the study's order; `busy` gains each task that will be live."""
    layout, spec, registry, report = run.layout, run.spec, run.registry, run.report
    scheduler, states, live_job = backend(report["executor"]), report["states"], run.live_job
    plan = []
    for task in undone:
        entry = registry.current(task.name)
        live = entry is not None and is_live(states.get(entry["job_id"], JobState.UNKNOWN))
        if not live and holder(layout, task) is not None:
            continue  # a process runs it that its registry entry does not name: never a second one
        res = getattr(spec.resources, task.stage)
        waits_for = unfinished_prerequisites(task, spec, layout, live_job)
        if live and not _stale(entry, waits_for, live_job, states):
            live_job[task.name] = entry["job_id"]
            busy.append((task.stage, res))
            continue
        if not live:
            failure = layout.failure(**task.key)
            if failure and not failure.get("retryable"):
                continue  # its own error: the same job would fail again; `pipeline retry` resubmits it
            if attempts(layout, task.name) >= MAX_ATTEMPTS:
                report["given_up"][task.name] = attempts(layout, task.name)
                continue
        if waits_for is None or (waits_for and not scheduler.jobs_can_wait):
            continue  # nothing will produce a prerequisite as things stand, or jobs cannot wait here
        if not scheduler.has_room(res, [r for _, r in busy]):
            continue
        if task.stage == "train" and train_at_once is not None and \
                sum(stage == "train" for stage, _ in busy) >= train_at_once:
            continue
        if live:  # superseded: it would wait for a job it no longer needs, or for the wrong one
            report["superseded"].append(entry["job_id"])
        plan.append((run, task, waits_for))
        live_job[task.name] = "(planned)"
        busy.append((task.stage, res))
    return plan


def unfinished_prerequisites(task: Task, spec: JobSpec, layout: RunLayout, live_job: dict) -> list[str] | None:
    """Names of the prerequisites the task must wait for ([] when its inputs are ready), or None
    when one of them is neither done nor carried by a job (failed, given up, not yet submittable)."""
    if inputs_ready(layout, task, spec):
        return []
    names = []
    for pre in prerequisites(task, spec):
        if layout.is_done(**pre.key):
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


def _submit(plan: list[tuple], shared: Path | None, name: str) -> None:
    """Submit the planned tasks stage by stage, so that a prerequisite's job id is known before its
    dependents go out. One stage's tasks with the same resources and site become one array
    (several runs' alike) when they wait for the same jobs, or when each waits for the matching
    task of one array (Slurm's aftercorr); else one array per set of jobs waited for."""
    from .layout import STAGES

    for stage in STAGES:
        staged = [(run, task, [run.live_job[pre] for pre in after]) for run, task, after in plan if task.stage == stage]
        kinds: dict[str, list] = {}  # what one submitit executor can carry: resources, site and executor alike
        for item in staged:
            run = item[0]
            kind = json.dumps([to_dict(getattr(run.spec.resources, stage)), to_dict(run.spec.site), run.report["executor"]])
            kinds.setdefault(kind, []).append(item)
        for items in kinds.values():
            for group, after, correspond in _arrays(items):
                jobs = submit_group(group, after, correspond, shared, name)
                for (run, task, waits), job_id in zip(group, jobs):
                    run.registry.record(task.name, run.report["executor"], job_id, waits)
                    run.live_job[task.name] = job_id
                    run.report["submitted"].append(task.name)
                for run in dict.fromkeys(run for run, _, _ in group):
                    run.registry.save()  # after every submission: a crash later loses no job id


def _arrays(staged: list[tuple]) -> list[tuple[list, list[str], str | None]]:
    """[(items, the job ids they all wait for, or the array whose task i item i waits for)]; an
    item is (run, task, job ids it waits for). All in one array where they can be; else one a
    run where its items can be (its sampling, each waiting for its own training); else one a set
    of jobs waited for."""
    if not staged:
        return []
    whole = _one_array(staged)
    if whole:
        return [whole]
    runs: dict = {}
    for item in staged:
        runs.setdefault(item[0], []).append(item)
    if len(runs) > 1:
        return [group for items in runs.values() for group in _arrays(items)]
    groups: dict[tuple, list] = {}
    for item in staged:
        groups.setdefault(tuple(item[2]), []).append(item)
    return [(items, list(dep), None) for dep, items in groups.items()]


def _one_array(staged: list[tuple]) -> tuple | None:
    deps = [tuple(after) for _, _, after in staged]
    if len(set(deps)) == 1:
        return staged, list(deps[0]), None
    arrays = {d[0].split("_")[0] for d in deps if len(d) == 1}
    if len(arrays) == 1 and all(d == (f"{next(iter(arrays))}_{i}",) for i, d in enumerate(deps)):
        return staged, [], next(iter(arrays))  # task i waits for task i
    return None


def submit_group(group: list[tuple], after: list[str], correspond: str | None = None, shared: Path | None = None,
                 name: str = "") -> list[str]:
    """One submitit batch (an array on a cluster) for the group's tasks; their job ids in order."""
    from .stages import run_task

    runs = list(dict.fromkeys(run for run, _, _ in group))
    first, stage = runs[0], group[0][1].stage
    executor = first.report["executor"]
    scheduler = backend(executor)
    if len(runs) == 1 or shared is None:
        folder = first.layout.submitit_logs
        job_name = f"{first.layout.run_id}-{group[0][1].name if len(group) == 1 else stage}"
    else:
        folder, job_name = shared, f"{name}-{stage}"
    ex = scheduler.make_executor(folder, first.spec.site, getattr(first.spec.resources, stage), job_name)
    if after or correspond:
        scheduler.wait_for(ex, after, correspond)
    with ex.batch():
        jobs = [ex.submit(run_task, str(run.layout.dir), task.stage, task.step, task.decoding) for run, task, _ in group]
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
    from . import study
    from .layout import StudyLayout
    from .stages import layout_of

    folder = Path(args.run_dir)
    try:
        if StudyLayout(folder.parent, folder.name).record.is_file():  # a study's loop drives all its runs
            layout = StudyLayout(folder.parent, folder.name)
            if args.loop is None:
                print(study.advance(layout))
                return 0
            return 0 if study.watch(layout, interval=args.loop)["state"] == RunState.DONE else 1
        layout = layout_of(args.run_dir)
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
