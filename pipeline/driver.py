"""Runs a study's stages in order through an executor, skipping every task already done.

    python -m pipeline.driver RUN_DIR          (what `pipeline submit` starts in the background)

On the local executor the driver waits for each stage before submitting the next; array stages
(sample, evaluate: one task per checkpoint) run as many tasks at once as the cores allow.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from diffusion import atomic

from .executors import make_executor
from .layout import ARRAY_STAGES, STAGES, RunLayout, task_name
from .spec import JobSpec, load_frozen
from .stages import layout_of, run_task


def tasks_of(spec: JobSpec, stage: str) -> list[int | None]:
    return spec.checkpoint_steps() if stage in ARRAY_STAGES else [None]


def pending(layout: RunLayout, spec: JobSpec, stage: str) -> list[int | None]:
    return [step for step in tasks_of(spec, stage) if not layout.is_done(stage, step)]


def record_driver(layout: RunLayout, executor: str) -> None:
    atomic.write_json(layout.state / "driver.json",
                      {"pid": os.getpid(), "pgid": os.getpgid(0), "executor": executor, "started": time.time()})


def drive(layout: RunLayout, executor_kind: str = "local", progress=None) -> bool:
    """Run every pending task; True when the study is complete. `progress(stage, done, total)` is told."""
    spec = load_frozen(layout.spec)
    record_driver(layout, executor_kind)
    for stage in STAGES:
        todo = pending(layout, spec, stage)
        total = len(tasks_of(spec, stage))
        if progress:
            progress(stage, total - len(todo), total)
        if not todo:
            continue
        res = getattr(spec.resources, stage)
        executor = make_executor(executor_kind, layout.dir / "logs" / "submitit", spec.site, res,
                                 f"{layout.run_id}-{stage}")
        # the local executor starts every job at once: no more than the cores allow; a
        # scheduler gets the whole array and queues it itself
        parallel = max(1, (os.cpu_count() or 1) // max(1, res.cpus)) if executor_kind == "local" else len(todo)
        for start in range(0, len(todo), parallel):
            batch = todo[start : start + parallel]
            with executor.batch():
                jobs = [executor.submit(run_task, str(layout.dir), stage, step) for step in batch]
            for step, job in zip(batch, jobs):
                while not job.done():
                    if progress:
                        progress(stage, total - len(pending(layout, spec, stage)), total)
                    time.sleep(1)
                try:
                    job.result()
                except Exception as err:  # the task wrote its failure marker and traceback to its log
                    print(f"[pipeline] {task_name(stage, step)} failed: {str(err).splitlines()[-1] if str(err) else err}",
                          file=sys.stderr)
                    return False
        if progress:
            progress(stage, total, total)
    return True


def main(argv=None) -> int:
    run_dir = Path((argv or sys.argv[1:])[0])
    return 0 if drive(layout_of(run_dir)) else 1


if __name__ == "__main__":
    sys.exit(main())
