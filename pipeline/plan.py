"""A study as a graph of tasks: what each task needs, and when its inputs are ready.

    preprocess ─▶ train ─▶ sample-<step> ─▶ evaluate-<step> ─▶ aggregate
                          (one per checkpoint)  (one per checkpoint)  (all evaluations)

A sampling task's input is its checkpoint, not the end of training: it is ready as soon as that
checkpoint folder is complete, while training goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusion.manifest import CheckpointError, verify

from .layout import ARRAY_STAGES, STAGES, RunLayout, task_name
from .spec import JobSpec


@dataclass(frozen=True)
class Task:
    stage: str
    step: int | None = None

    @property
    def name(self) -> str:
        return task_name(self.stage, self.step)


def tasks(spec: JobSpec) -> list[Task]:
    """Every task of the study, in an order where prerequisites come first."""
    steps = spec.checkpoint_steps()
    return [Task(stage, step) for stage in STAGES for step in (steps if stage in ARRAY_STAGES else [None])]


def prerequisites(task: Task, spec: JobSpec) -> list[Task]:
    if task.stage == "preprocess":
        return []
    if task.stage == "train":
        return [Task("preprocess")]
    if task.stage == "sample":
        return [Task("train")]
    if task.stage == "evaluate":
        return [Task("sample", task.step)]
    return [Task("evaluate", step) for step in spec.checkpoint_steps()]


def inputs_ready(layout: RunLayout, task: Task, spec: JobSpec) -> bool:
    """True when the task can start now without waiting for any other job."""
    if task.stage == "sample":
        return checkpoint_complete(layout, task.step)
    return all(layout.is_done(p.stage, p.step) for p in prerequisites(task, spec))


def checkpoint_complete(layout: RunLayout, step: int) -> bool:
    """Renamed into place only when complete, and every file of its manifest has its size."""
    try:
        verify(layout.checkpoint(step))
        return True
    except (CheckpointError, OSError, KeyError):
        return False
