"""A study as a graph of tasks: what each task needs, and when its inputs are ready.

    preprocess ─▶ train ─▶ sample-<step>[-<decoding>] ─▶ evaluate-<step>[-<decoding>] ─▶ aggregate
                          (each checkpoint with the spec's own decoding, (each sample)      (all evaluations)
                           and the last or all with each named decoding)

A sampling task's input is its checkpoint, not the end of training: it is ready as soon as that
checkpoint folder is complete, while training goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusion import locks
from diffusion.manifest import is_complete

from .layout import ARRAY_STAGES, STAGES, RunLayout, task_name
from .spec import JobSpec


@dataclass(frozen=True)
class Task:
    stage: str
    step: int | None = None
    decoding: str = ""  # a sample or evaluate task's named decoding (JobSpec.decodings); "": the spec's own

    @property
    def name(self) -> str:
        return task_name(self.stage, self.step, self.decoding)

    @property
    def key(self) -> dict:
        """The task's place in the layout's markers, logs and files, as RunLayout's methods take it."""
        return {"stage": self.stage, "step": self.step, "decoding": self.decoding}


def tasks(spec: JobSpec) -> list[Task]:
    """Every task of the run, in an order where prerequisites come first."""
    points = spec.decoded_points()
    return [task for stage in STAGES
            for task in ([Task(stage, step, decoding) for step, decoding in points] if stage in ARRAY_STAGES
                         else [Task(stage)])]


def prerequisites(task: Task, spec: JobSpec) -> list[Task]:
    if task.stage == "preprocess":
        return []
    if task.stage == "train":
        return [Task("preprocess")]
    if task.stage == "sample":
        return [Task("train")]
    if task.stage == "evaluate":
        return [Task("sample", task.step, task.decoding)]
    return [Task("evaluate", step, decoding) for step, decoding in spec.decoded_points()]


def outputs(layout: RunLayout, task: Task, spec: JobSpec) -> list[Path]:
    """What a task leaves for the tasks after it (files, or folders of them): recorded with its
    done marker, so that the task counts as done only while they are whole."""
    return {"preprocess": lambda: [layout.data], "train": lambda: [layout.checkpoint(spec.train.steps)],
            # the samples, not progress.json (status's, while the task runs)
            "sample": lambda: sample_outputs(layout, task, spec),
            "evaluate": lambda: [layout.metrics(task.step, task.decoding)], "aggregate": lambda: [layout.results]}[task.stage]()


def sample_outputs(layout: RunLayout, task: Task, spec: JobSpec) -> list[Path]:
    seeds = spec.library_config(task.decoding).sample.seeds
    chosen = layout.samples_file(task.step, task.decoding)
    return [chosen] + ([layout.seed_samples(task.step, seed, task.decoding) for seed in seeds] if len(seeds) > 1 else [])


def dependents(task: Task, spec: JobSpec) -> list[Task]:
    """The tasks that read what `task` writes, and theirs in turn: what is done again with it.
    Training's output is its last checkpoint, which only the last step's sampling reads."""
    if task.stage == "preprocess":
        return tasks(spec)[1:]
    last = [Task("sample", step, decoding) for step, decoding in spec.decoded_points() if step == spec.train.steps]
    direct = {"train": last, "sample": [Task("evaluate", task.step, task.decoding)],
              "evaluate": [Task("aggregate")], "aggregate": []}[task.stage]
    found = []
    for after in direct:
        found += [after, *dependents(after, spec)]
    return list(dict.fromkeys(found))


def holder(layout: RunLayout, task: Task) -> dict | None:
    """Who runs the task now, from its lock (the trainer's own lock too, for training), whatever
    the job registry says; None when nobody does."""
    found = locks.holder(layout.task_lock(task.name))
    if found is None and task.stage == "train":
        found = locks.holder(layout.train_lock)
    return found


def inputs_ready(layout: RunLayout, task: Task, spec: JobSpec) -> bool:
    """True when the task can start now without waiting for any other job."""
    if task.stage == "sample":
        return checkpoint_complete(layout, task.step)
    return all(layout.is_done(**p.key) for p in prerequisites(task, spec))


def checkpoint_complete(layout: RunLayout, step: int) -> bool:
    """Renamed into place only when complete, and every file of its manifest has its size."""
    return is_complete(layout.checkpoint(step))
