"""The run folder on the shared filesystem: the only channel between stages.

    <results_root>/<run_id>/
        spec.yaml                       the resolved job spec, frozen at submit time
        config.yaml                     its library part, what `python -m diffusion.train` reads
        data/                           tokenizer.json, {train,valid,test}.pt and .jsonl, prepared.json
        checkpoints/step_NNNNNNN/       written by the trainer, renamed into place when complete
        heartbeat.json, train_log.jsonl the trainer's progress
        samples/step_NNNNNNN/           samples.jsonl (the MBR choice, or the single seed's), samples.seed<S>.jsonl,
                                        progress.json (candidates decoded so far, for status)
        metrics/step_NNNNNNN.json       scores of one checkpoint
        results/                        table.{md,csv,tex,json}, metrics.png
        logs/<stage>[-<task>].log       what each stage and task printed
        state/<stage>[-<task>].done     completion markers, written last; .failed markers with the error

Every file is written aside and renamed into place (diffusion.atomic).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from diffusion import atomic
from diffusion.manifest import HEARTBEAT, step_dir_name

from .errors import UserError

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
STAGES = ("preprocess", "train", "sample", "evaluate", "aggregate")
ARRAY_STAGES = ("sample", "evaluate")  # one task per checkpoint step


class LayoutError(UserError, ValueError):
    pass


def validate_run_id(run_id: str) -> str:
    if not RUN_ID.match(run_id or "") or ".." in run_id:
        raise LayoutError(f"invalid run ID {run_id!r}: use letters, digits, '.', '-' and '_', no '/' or '..'")
    return run_id


def task_name(stage: str, step: int | None = None) -> str:
    return stage if step is None else f"{stage}-{step:07d}"


class RunLayout:
    def __init__(self, root: str | Path, run_id: str):
        self.root = Path(root).resolve()
        self.run_id = validate_run_id(run_id)
        self.dir = self.root / run_id

    # --- inputs and outputs ---
    @property
    def spec(self) -> Path:
        return self.dir / "spec.yaml"

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / step_dir_name(step)  # the trainer's name for it

    @property
    def heartbeat(self) -> Path:
        return self.dir / HEARTBEAT  # the trainer writes it into its output folder, the run folder

    def samples(self, step: int) -> Path:
        return self.dir / "samples" / step_dir_name(step)

    def sample_progress(self, step: int) -> Path:
        return self.samples(step) / "progress.json"

    def metrics(self, step: int) -> Path:
        return self.dir / "metrics" / f"{step_dir_name(step)}.json"

    @property
    def results(self) -> Path:
        return self.dir / "results"

    def log(self, stage: str, step: int | None = None) -> Path:
        return self.dir / "logs" / f"{task_name(stage, step)}.log"

    # --- state ---
    @property
    def state(self) -> Path:
        return self.dir / "state"

    def marker(self, stage: str, step: int | None = None, kind: str = "done") -> Path:
        return self.state / f"{task_name(stage, step)}.{kind}"

    def is_done(self, stage: str, step: int | None = None) -> bool:
        return self.marker(stage, step).is_file()

    def mark_done(self, stage: str, step: int | None = None, **info) -> None:
        self.marker(stage, step, "failed").unlink(missing_ok=True)
        atomic.write_json(self.marker(stage, step), {"finished": time.time(), **info})

    def mark_failed(self, stage: str, step: int | None, error: str, retryable: bool = False) -> None:
        """`retryable`: interrupted from outside, so the pipeline may resubmit it by itself."""
        atomic.write_json(self.marker(stage, step, "failed"), {"failed": time.time(), "error": error,
                                                               "retryable": retryable, "log": str(self.log(stage, step))})

    def failure(self, stage: str, step: int | None = None) -> dict | None:
        path = self.marker(stage, step, "failed")
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {"error": f"unreadable failure marker {path}", "log": str(self.log(stage, step))}

    def read_json(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):  # not written (yet), or its folder is not one
            return None
