"""What a run is doing, read from its folder alone: markers, the trainer's heartbeat and the driver.

    state of a task:  done | failed | running | queued
    state of a run:   done (aggregate done) | failed (a task failed, or the driver died) |
                      running (driver alive) | queued (submitted, nothing started)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .driver import tasks_of
from .layout import STAGES, RunLayout, task_name
from .spec import load_frozen


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie is dead, though kill(pid, 0) succeeds on it
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False


def training_progress(layout: RunLayout) -> dict | None:
    beat = layout.read_json(layout.heartbeat)
    if not beat:
        return None
    return {"step": beat["step"], "total_steps": beat["total_steps"], "loss": beat["loss"],
            "eta_s": beat["eta_s"], "tokens_per_s": beat["tokens_per_s"], "age_s": time.time() - beat["time"]}


def run_status(layout: RunLayout) -> dict:
    spec = load_frozen(layout.spec)
    driver = layout.read_json(layout.state / "driver.json")
    driver_alive = bool(driver) and process_alive(driver["pid"])
    cancelled = (layout.state / "cancelled").is_file()
    stages, failures, current = [], [], None
    for stage in STAGES:
        tasks = []
        for step in tasks_of(spec, stage):
            if layout.is_done(stage, step):
                state = "done"
            elif (failure := layout.failure(stage, step)) is not None:
                state = "failed"
                failures.append({"task": task_name(stage, step), **failure})
            elif driver_alive and current is None:
                state, current = "running", stage
            elif driver_alive and current == stage and stage != "train":
                state = "running" if _log_started(layout, stage, step) else "queued"
            else:
                state = "queued"
            tasks.append({"task": task_name(stage, step), "step": step, "state": state})
        done = sum(t["state"] == "done" for t in tasks)
        entry = {"stage": stage, "done": done, "total": len(tasks), "tasks": tasks,
                 "state": _stage_state([t["state"] for t in tasks])}
        if stage == "train":
            entry["progress"] = training_progress(layout)
        stages.append(entry)
    if stages[-1]["state"] == "done":
        state = "done"
    elif failures or cancelled:
        state = "failed"
    elif driver_alive:
        state = "running"
    elif driver is None:
        state = "queued"
    else:  # the driver is gone without finishing or recording a failure: killed
        state = "failed"
        failures.append({"task": "driver", "error": "the driver process exited before the study finished",
                         "log": str(layout.dir / "logs" / "driver.log")})
    return {"run": layout.run_id, "state": state, "dir": str(layout.dir), "stages": stages, "failures": failures,
            "cancelled": cancelled}


def _log_started(layout: RunLayout, stage: str, step) -> bool:
    return layout.log(stage, step).is_file()


def _stage_state(states: list[str]) -> str:
    for state in ("failed", "running"):
        if state in states:
            return state
    if all(s == "done" for s in states):
        return "done"
    return "running" if "done" in states else "queued"


def list_runs(root: Path) -> list[RunLayout]:
    if not root.is_dir():
        return []
    return [RunLayout(root, p.name) for p in sorted(root.iterdir()) if (p / "spec.yaml").is_file()]


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, s = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{s:02d}s"


def to_json(status: dict) -> str:
    return json.dumps(status, indent=2)
