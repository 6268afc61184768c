"""What a run is doing: its markers, its jobs' states from one scheduler query, the trainer's heartbeat.

    state of a task: a TaskState (states.py), the same words in the table and in --json, with
      `reason` saying why a task that is not running waits, and `log` for a running or failed one;
    state of a run: a RunState.
"""

from __future__ import annotations

import time

from diffusion import locks
from diffusion.atomic import refusal

from .backends import backend, is_live
from .backends.local import process_alive
from .jobs import Registry, attempts
from .layout import STAGES, RunLayout
from .plan import holder, inputs_ready, prerequisites, tasks
from .spec import load_frozen
from .states import JobState, RunState, TaskState


def training_progress(layout: RunLayout) -> dict | None:
    beat = layout.read_json(layout.heartbeat)
    if not beat:
        return None
    return {"step": beat["step"], "total_steps": beat["total_steps"], "loss": beat["loss"],
            "eta_s": beat["eta_s"], "tokens_per_s": beat["tokens_per_s"], "age_s": time.time() - beat["time"],
            # logs of older trainers have neither
            "terms": beat.get("terms", {}), "real_tokens_per_s": beat.get("real_tokens_per_s")}


def sampling_progress(layout: RunLayout, spec, rows: list[dict]) -> dict:
    """The sample stage's work and, once a task has reported progress, its speed and time left.

    Every task decodes the same pairs with the same solver, so the candidates a second measured on
    the tasks so far (their progress.json) times the candidates still to decode, shared among the
    tasks running at once, is the estimate."""
    s = spec.sample
    steps = s.steps or spec.diffusion.steps
    out = {"solver": s.solver, "steps": steps, "seeds": len(s.seeds)}
    if spec.decodings:
        out["decodings"] = len(spec.decodings)
    rows = [row for row in rows if not row.get("decoding")]  # the named decodings' work differs: not in the estimate
    reports = {row["step"]: layout.read_json(layout.sample_progress(row["step"])) for row in rows}
    measured = [r for r in reports.values() if r and r["decoded"] > 0]
    if not measured:
        return out
    per_task = max(r["total"] for r in measured)
    decoded = sum(per_task if row["state"] == TaskState.DONE else (reports[row["step"]] or {}).get("decoded", 0) for row in rows)
    rate = sum(r["decoded"] for r in measured) / max(sum(r["elapsed_s"] for r in measured), 1e-9)
    at_once = max(1, sum(row["state"] == TaskState.RUNNING for row in rows))
    return {**out, "decoded": decoded, "total": per_task * len(rows), "sentences_per_s": rate,
            "eta_s": (per_task * len(rows) - decoded) / rate / at_once}


def local_loop_alive(layout) -> bool:
    """Whether the local executor's loop recorded in a run's (or a study's) folder still runs."""
    loop = layout.read_json(layout.driver)
    return bool(loop) and process_alive(loop["pid"])


def run_status(layout: RunLayout, report: dict) -> dict:
    """`report`: what pipeline.advance.advance returned for this run (its states come from one query)."""
    spec = load_frozen(layout.spec)
    registry = Registry(layout)
    states, given_up = report["states"], report.get("given_up", {})
    cancelled = layout.cancel_flag.is_file()
    scheduler = backend(report["executor"])
    loop_gone = scheduler.drives_itself and not local_loop_alive(layout)
    every_task = tasks(spec)
    # each done marker read and its outputs checked once a pass: a login node's shared filesystem
    done_tasks = {task.name for task in every_task if layout.is_done(**task.key)}
    # a full or read-only disk: the reason of whatever stopped without a word (no room for one)
    disk = None if len(done_tasks) == len(every_task) else refusal(layout.dir)
    by_name, failures = {}, []
    for task in every_task:
        entry = registry.current(task.name)
        job_state = states.get(entry["job_id"]) if entry else None
        done = task.name in done_tasks
        failure = None if done else layout.failure(**task.key)
        held = None if done or failure or (job_state and is_live(job_state)) else holder(layout, task)
        reason = ""
        if done:
            state = TaskState.DONE
        elif held is not None:  # run by a process its job entry does not name (the registry was lost)
            state, reason = TaskState.RUNNING, f"run by {locks.describe(held)}, a process the run's job registry does not name"
        elif job_state and is_live(job_state):
            # PJM's history query cannot tell queued from running: the job's own start marker can
            running = job_state in (JobState.RUNNING, JobState.COMPLETING) or layout.started(task.name, entry["job_id"]).is_file()
            state = TaskState.RUNNING if running else TaskState.QUEUED
        elif failure and not failure.get("retryable"):
            state = TaskState.FAILED
            failures.append({"task": task.name, **failure})
        elif task.name in given_up:
            state = TaskState.FAILED
            failures.append({"task": task.name, "log": str(layout.log(**task.key)),
                             "error": f"started {given_up[task.name]} times and killed each time (last job state "
                                      f"{job_state or 'unknown'}); `pipeline retry` tries again"})
        elif cancelled:
            state = TaskState.CANCELLED
        elif disk and entry and job_state:  # its job ended without a word: the disk had no room for one
            state = TaskState.FAILED
            failures.append({"task": task.name, "log": str(layout.log(**task.key)),
                             "error": f"{disk}; its job {entry['job_id']} ended without finishing it"})
        elif any(by_name.get(p.name, {}).get("state") in (TaskState.FAILED, TaskState.BLOCKED) for p in prerequisites(task, spec)):
            state, reason = TaskState.BLOCKED, "a task it needs failed"
        elif loop_gone:
            state, reason = TaskState.STOPPED, "nothing submits it: the run's local loop is gone"
        elif entry and job_state:  # its job ended without the task's output (killed): submitted again
            state, reason = TaskState.QUEUED, f"its job {entry['job_id']} ended without finishing it; it is submitted again"
        elif inputs_ready(layout, task, spec):
            state, reason = TaskState.WAITING_FOR_RESOURCES, scheduler.waiting_reason
        else:
            waiting_for = [p.name for p in prerequisites(task, spec) if by_name.get(p.name, {}).get("state") != TaskState.DONE]
            state, reason = TaskState.WAITING_FOR_INPUT, "waits for " + (", ".join(waiting_for) or "its inputs")
        row = {"task": task.name, **task.key, "state": state,
               "job": entry["job_id"] if entry else None, "job_state": job_state if state in (TaskState.RUNNING, TaskState.QUEUED) else None,
               "starts": attempts(layout, task.name)}
        if reason:
            row["reason"] = reason
        if state in (TaskState.RUNNING, TaskState.FAILED):
            row["log"] = str(layout.log(**task.key))
        by_name[task.name] = row
    stages = []
    for stage in STAGES:
        rows = [row for row in by_name.values() if row["stage"] == stage]
        entry = {"stage": stage, "done": sum(r["state"] == TaskState.DONE for r in rows), "total": len(rows), "tasks": rows,
                 "state": _stage_state([r["state"] for r in rows])}
        if stage == "train" and entry["state"] == TaskState.RUNNING:  # no speed or ETA for a task that does not run
            entry["progress"] = training_progress(layout)
        if stage == "sample" and entry["state"] != TaskState.DONE:
            entry["progress"] = sampling_progress(layout, spec, rows)
        stages.append(entry)
    every = [row["state"] for row in by_name.values()]
    if all(s == TaskState.DONE for s in every):
        state = RunState.DONE
    elif cancelled:
        state = RunState.CANCELLED
    elif TaskState.RUNNING in every:
        state = RunState.RUNNING
    elif TaskState.QUEUED in every:
        state = RunState.QUEUED
    elif failures:
        state = RunState.FAILED
    elif loop_gone:
        state = RunState.STOPPED
    else:
        state = RunState.QUEUED  # the next advance submits what is waiting
    next_step = NEXT_STEP.get(state, "").format(run=layout.run_id)
    if disk and state in (RunState.FAILED, RunState.STOPPED):
        next_step = f"{disk}: make room (or mount it writable), then `pipeline retry {layout.run_id}`"
    return {"run": layout.run_id, "state": state, "dir": str(layout.dir), "executor": report.get("executor"),
            "site": spec.site.name,
            "next": next_step, "disk": disk,
            "stages": stages, "failures": failures, "submitted": report.get("submitted", []),
            "scheduler_queries": 1 if report["states"] else 0}


# what a user types to go on from a run in this state
NEXT_STEP = {
    RunState.STOPPED: "nothing drives it any more (its loop ended with the process that ran it); continue it with "
               "`pipeline retry {run}`",
    RunState.CANCELLED: "continue it with `pipeline retry {run}`",
    RunState.FAILED: "see the failed tasks' logs; after fixing the cause, `pipeline retry {run}` runs them again",
}


def _stage_state(states: list[str]) -> str:
    for state in (TaskState.FAILED, TaskState.RUNNING, TaskState.BLOCKED, TaskState.CANCELLED, TaskState.STOPPED):
        if state in states:
            return state
    if all(s == TaskState.DONE for s in states):
        return TaskState.DONE
    if TaskState.DONE in states:
        return TaskState.RUNNING
    for state in (TaskState.QUEUED, TaskState.WAITING_FOR_RESOURCES):
        if state in states:
            return state
    return TaskState.WAITING_FOR_INPUT


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, s = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{s:02d}s"
