"""Which scheduler job carries each task of a run: `state/jobs.json`, changed only under the run's lock.

    {"executor": "slurm",
     "tasks": {"train": {"job_id": "4242", "after": ["4241"], "submitted": 1764...,
                         "earlier": ["4237"]}, ...}}

`job_id` is the task's current job; `after` the jobs it was told to wait for; `earlier` the jobs
that carried the task before (killed, cancelled, superseded). A job that starts and finds it is no
longer its task's current job does nothing (stages.run_task), so a task never runs twice at once.
Attempts are counted by the jobs that really started (their start markers, RunLayout.started), so a
job cancelled by the scheduler before it ran costs nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time

from diffusion import atomic

from .errors import UserError
from .layout import RunLayout


class RegistryDamaged(UserError):
    """state/jobs.json is there but not what the pipeline wrote: read as empty, it would have
    every task submitted again."""


class Registry:
    def __init__(self, layout: RunLayout):
        self.layout = layout
        self.path = layout.registry
        self.data = self._read()

    def _read(self) -> dict:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {"executor": None, "tasks": {}}
        try:
            data = json.loads(text)
            problem = _shape_problem(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            problem = f"not valid JSON: {err}"
        if problem:
            raise RegistryDamaged(f"{self.path} is damaged ({problem}); `pipeline repair {self.layout.run_id}` "
                                  "rebuilds it from the jobs' start markers")
        return data

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


def _shape_problem(data) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        return "no mapping of tasks"
    for task, entry in data["tasks"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("job_id"), str) \
                or not isinstance(entry.get("after", []), list) or not isinstance(entry.get("earlier", []), list):
            return f"the entry of {task} is not a job"
    return None


def repair(layout: RunLayout, default_executor: str) -> dict:
    """Set a damaged state/jobs.json aside (renamed, never deleted) and rebuild it from the start
    markers: each task's current job is the last that started it. A task whose job was queued
    but never started is submitted again by the next advance; should that old job start after
    all, it finds the task carried by another and exits at once."""
    with run_lock(layout):
        if layout.registry.is_file():
            layout.registry.rename(layout.registry.with_name(f"{layout.registry.name}.damaged-{int(time.time())}"))
        starts: dict[str, list[tuple[float, str, str]]] = {}
        for path in layout.starts():
            task, job_id = layout.started_task(path)
            record = layout.read_json(path) or {}
            starts.setdefault(task, []).append((record.get("started", path.stat().st_mtime), record.get("job_id", job_id),
                                                record.get("executor") or default_executor))
        registry = Registry(layout)
        for task, found in sorted(starts.items()):
            found.sort()
            registry.data["tasks"][task] = {"job_id": found[-1][1], "after": [], "submitted": found[-1][0],
                                            "earlier": [job for _, job, _ in found[:-1]]}
        latest = max((start for found in starts.values() for start in found), default=None)
        registry.data["executor"] = latest[2] if latest else default_executor
        registry.save()
        return registry.data


@contextlib.contextmanager
def run_lock(layout: RunLayout):
    """Exclusive across processes (two `pipeline submit` at once, a watch loop and a status)."""
    layout.state.mkdir(parents=True, exist_ok=True)
    with open(layout.submit_lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def attempts(layout: RunLayout, task: str) -> int:
    return len(layout.starts(task))


def clear_attempts(layout: RunLayout, task: str) -> None:
    for path in layout.starts(task):
        path.unlink(missing_ok=True)
