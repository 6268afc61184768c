"""Which scheduler job carries each task of a run: `state/jobs.json`, changed only under the run's lock.

    {"executor": "slurm",
     "tasks": {"train": {"job_id": "4242", "after": ["4241"], "submitted": 1764...,
                         "earlier": ["4237"]}, ...}}

`job_id` is the task's current job; `after` the jobs it was told to wait for; `earlier` the jobs
that carried the task before (killed, cancelled, superseded). A job that starts and finds it is no
longer its task's current job does nothing (stages.run_task), so a task never runs twice at once.
Attempts are counted by the jobs that really started (`state/<task>.started-<job>` markers), so a
job cancelled by the scheduler before it ran costs nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from pathlib import Path

from diffusion import atomic

from .layout import RunLayout


class Registry:
    def __init__(self, layout: RunLayout):
        self.layout = layout
        self.path = layout.state / "jobs.json"
        self.data = layout.read_json(self.path) or {"executor": None, "tasks": {}}

    @property
    def executor(self) -> str | None:
        return self.data.get("executor")

    def current(self, task: str) -> dict | None:
        return self.data["tasks"].get(task)

    def job_id(self, task: str) -> str | None:
        entry = self.current(task)
        return entry["job_id"] if entry else None

    def record(self, task: str, executor: str, job_id: str, after: list[str]) -> None:
        old = self.data["tasks"].get(task)
        earlier = (old["earlier"] + [old["job_id"]]) if old else []
        self.data["executor"] = executor
        self.data["tasks"][task] = {"job_id": job_id, "after": after, "submitted": time.time(), "earlier": earlier}

    def forget(self, task: str) -> None:
        """Drop the task's current job (retry): the next advance submits it afresh."""
        old = self.data["tasks"].pop(task, None)
        if old:
            self.data.setdefault("retired", {}).setdefault(task, []).extend(old["earlier"] + [old["job_id"]])

    def all_job_ids(self) -> list[str]:
        return [entry["job_id"] for entry in self.data["tasks"].values()]

    def save(self) -> None:
        atomic.write_json(self.path, self.data)


@contextlib.contextmanager
def run_lock(layout: RunLayout):
    """Exclusive across processes (two `pipeline submit` at once, a watch loop and a status)."""
    layout.state.mkdir(parents=True, exist_ok=True)
    with open(layout.state / "submit.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def started_marker(layout: RunLayout, task: str, job_id: str) -> Path:
    return layout.state / f"{task}.started-{job_id.replace('/', '_')}"


def attempts(layout: RunLayout, task: str) -> int:
    return sum(1 for _ in layout.state.glob(f"{task}.started-*")) if layout.state.is_dir() else 0


def clear_attempts(layout: RunLayout, task: str) -> None:
    for path in layout.state.glob(f"{task}.started-*"):
        path.unlink(missing_ok=True)
