"""The run folder on the shared filesystem: the only channel between stages.

    <results_root>/<run_id>/
        spec.yaml                       the resolved job spec, frozen at submit time
        config.yaml                     its library part, what `python -m diffusion.train` reads
        data/                           tokenizer.json, {train,valid,test}.pt and .jsonl, prepared.json (in a
                                        study, a link to the folder the variants with equal data share)
        checkpoints/step_NNNNNNN/       written by the trainer, renamed into place when complete
        heartbeat.json, train_log.jsonl the trainer's progress; train.lock, held while a trainer writes here
        samples/step_NNNNNNN[-<decoding>]/  samples.jsonl (the MBR choice, or the single seed's), samples.seed<S>.jsonl,
                                        progress.json (candidates decoded so far, for status); -<decoding>:
                                        a named decoding of the spec's (JobSpec.decodings), else its own
        metrics/step_NNNNNNN[-<decoding>].json  scores of one checkpoint decoded one way
        results/                        table.{md,csv,tex,json}, metrics.png
        logs/<stage>[-<task>].log       what each stage and task printed
        state/<task>.done               completion markers, written last, with the size of every output
                                        file: a task is done only while its outputs are whole
        state/<task>.failed             the error of a task that failed
        state/<task>.lock               held by the one process that runs the task (diffusion.locks)
        state/<task>.started-<job>      one a job that started the task (its attempts)
        state/jobs.json, submit.lock    which job carries each task (pipeline.jobs), and the run's lock
        state/driver.json, cancelled    the local executor's loop; the flag of a cancelled run

Every file is written aside and renamed into place (diffusion.atomic).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from diffusion import atomic
from diffusion.manifest import HEARTBEAT, TRAIN_LOCK, TRAIN_LOG, seed_samples, step_dir_name

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


def task_name(stage: str, step: int | None = None, decoding: str = "") -> str:
    """`decoding`: a named decoding of the checkpoint (JobSpec.decodings); "" for the spec's own."""
    return stage if step is None else f"{stage}-{step:07d}" + (f"-{decoding}" if decoding else "")


def point_name(step: int, decoding: str = "") -> str:
    """A checkpoint step, with the decoding it is sampled with: step_0003500, step_0003500-dpm-20."""
    return step_dir_name(step) + (f"-{decoding}" if decoding else "")


class Folder:
    """What a run's folder and a study's have alike (<results_root>/<name>/): results/, logs/ with
    submitit's files and the local executor loop's output, state/ with that loop's pid and the
    lock of whoever submits."""

    def __init__(self, root: str | Path, name: str):
        self.root = Path(root).resolve()
        self.name = validate_run_id(name)
        self.dir = self.root / name

    @property
    def results(self) -> Path:
        return self.dir / "results"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def submitit_logs(self) -> Path:
        return self.logs / "submitit"  # submitit's own files of each job: its pickles, stdout and stderr

    @property
    def driver_log(self) -> Path:
        return self.logs / "driver.log"  # what the local executor's loop printed

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def submit_lock(self) -> Path:
        return self.state / "submit.lock"

    @property
    def driver(self) -> Path:
        return self.state / "driver.json"  # the local executor's loop: its pid and process group

    def read_json(self, path: Path) -> dict | None:
        try:
            found = json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
            return None  # not written (yet), its folder is not one, or damaged
        return found if isinstance(found, dict) else None


class RunLayout(Folder):
    @property
    def run_id(self) -> str:
        return self.name

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

    @property
    def train_lock(self) -> Path:
        return self.dir / TRAIN_LOCK  # held by the trainer itself, however it was started

    @property
    def train_log(self) -> Path:
        return self.dir / TRAIN_LOG

    def samples(self, step: int, decoding: str = "") -> Path:
        return self.dir / "samples" / point_name(step, decoding)

    def samples_file(self, step: int, decoding: str = "") -> Path:
        """The chosen samples of a checkpoint: the MBR pick of several seeds, or the one seed's."""
        return self.samples(step, decoding) / "samples.jsonl"

    def seed_samples(self, step: int, seed: int, decoding: str = "") -> Path:
        """One seed's candidates, where several seeds were decoded."""
        return seed_samples(self.samples_file(step, decoding), seed)

    def sample_progress(self, step: int, decoding: str = "") -> Path:
        return self.samples(step, decoding) / "progress.json"

    @property
    def metrics_dir(self) -> Path:
        return self.dir / "metrics"

    def metrics(self, step: int, decoding: str = "") -> Path:
        return self.metrics_dir / f"{point_name(step, decoding)}.json"

    def metrics_files(self) -> list[Path]:
        """The metrics written so far (a name starting with '.' is a write in progress)."""
        return sorted(p for p in self.metrics_dir.glob("step_*.json") if p.is_file() and not p.name.startswith("."))

    def log(self, stage: str, step: int | None = None, decoding: str = "") -> Path:
        return self.logs / f"{task_name(stage, step, decoding)}.log"

    # --- state ---
    @property
    def registry(self) -> Path:
        return self.state / "jobs.json"

    @property
    def cancel_flag(self) -> Path:
        return self.state / "cancelled"

    def task_lock(self, task: str) -> Path:
        return self.state / f"{task}.lock"

    def started(self, task: str, job_id: str) -> Path:
        """Written by a job that starts the task, with its job id and executor."""
        return self.state / f"{task}.started-{job_id.replace('/', '_')}"

    def starts(self, task: str = "*") -> list[Path]:
        """The start markers of a task (of every task, by default)."""
        return sorted(self.state.glob(f"{task}.started-*")) if self.state.is_dir() else []

    @staticmethod
    def started_task(marker: Path) -> tuple[str, str]:
        """(task, job id as written in the name) of a start marker."""
        task, _, job_id = marker.name.partition(".started-")
        return task, job_id

    def marker(self, stage: str, step: int | None = None, kind: str = "done", decoding: str = "") -> Path:
        return self.state / f"{task_name(stage, step, decoding)}.{kind}"

    def is_done(self, stage: str, step: int | None = None, decoding: str = "") -> bool:
        """Its done marker is there and every output it recorded has its size."""
        return self.marker(stage, step, decoding=decoding).is_file() and self.damage(stage, step, decoding) is None

    def damage(self, stage: str, step: int | None = None, decoding: str = "") -> str | None:
        """What is wrong with a done task's outputs (one missing, or not the size it was written
        with), or None. Markers written before outputs were recorded are taken as they are."""
        done = self.read_json(self.marker(stage, step, decoding=decoding))
        if done is None:
            return None
        for name, size in (done.get("outputs") or {}).items():
            path = self.dir / name
            try:
                found = path.stat().st_size
            except OSError:
                return f"its output {path} is missing"
            if found != size:
                return f"its output {path} is damaged ({found} bytes, written with {size})"
        return None

    def mark_done(self, stage: str, step: int | None = None, outputs: list[Path] = (), decoding: str = "",
                  **info) -> None:
        """`outputs`: the files (or folders of them) the task leaves for the tasks after it; their
        sizes are recorded, and the task counts as done only while they have them."""
        self.marker(stage, step, "failed", decoding).unlink(missing_ok=True)
        atomic.write_json(self.marker(stage, step, decoding=decoding), {"finished": time.time(), **info,
                                                                        "outputs": self._sizes(outputs)})

    def _sizes(self, outputs: list[Path]) -> dict[str, int]:
        files = []
        for path in outputs:
            files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        # names starting with '.' are writes in progress or set aside (atomic, checkpoints)
        return {str(p.relative_to(self.dir)): p.stat().st_size for p in files
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.dir).parts)}

    def undo(self, stage: str, step: int | None = None, decoding: str = "") -> None:
        """Forget that a task is done (its outputs stay until it writes them again)."""
        self.marker(stage, step, decoding=decoding).unlink(missing_ok=True)

    def mark_failed(self, stage: str, step: int | None, error: str, retryable: bool = False, decoding: str = "") -> None:
        """`retryable`: interrupted from outside, so the pipeline may resubmit it by itself."""
        atomic.write_json(self.marker(stage, step, "failed", decoding),
                          {"failed": time.time(), "error": error, "retryable": retryable,
                           "log": str(self.log(stage, step, decoding))})

    def failure(self, stage: str, step: int | None = None, decoding: str = "") -> dict | None:
        """Why a task failed ({"error", "log", "retryable"}), a done task with damaged outputs
        included; None when it did not."""
        damage = self.damage(stage, step, decoding)  # None without a done marker
        log = str(self.log(stage, step, decoding))
        if damage:
            return {"error": f"{damage}; `pipeline retry {self.run_id}` runs it again with what depends on it",
                    "log": log, "retryable": False, "damaged": True}
        path = self.marker(stage, step, "failed", decoding)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"error": f"unreadable failure marker {path}", "log": log}


class StudyLayout(Folder):
    """A study's own folder, beside its runs (<results_root>/<study>-<variant>/, each a RunLayout):

    <results_root>/<study>/
        study.yaml                      the study as submitted: its file, runs by variant, concurrent_train
        data/<digest>/                  the prepared data of the variants whose data sections are equal
                                        (each run's data/ links here: one preprocess does the work)
        results/                        table.{md,csv,tex,json}, checkpoints.md, metrics.png of every run
        logs/submitit/, logs/driver.log submitit's files of jobs that carry several runs' tasks; the local loop's output
        state/driver.json, submit.lock  the local executor's loop over the runs; the study's lock
    """

    @property
    def record(self) -> Path:
        return self.dir / "study.yaml"

    def data(self, digest: str) -> Path:
        return self.dir / "data" / digest
