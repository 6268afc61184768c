"""The stages: thin functions that read inputs from the run folder, call the library, and
write their outputs atomically, completion marker last.

`run_task(run_dir, stage, step, decoding)` is what a job (local, Slurm or PJM) executes. A task whose
marker exists is skipped, so re-running any of them is safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from diffusion import atomic, locks, manifest
from diffusion.atomic import refusal
from diffusion.config import to_dict

from .errors import write_problem
from .layout import RunLayout
from .spec import JobSpec, load_frozen


JOB_STARTED = time.time()  # about when this job's process started: the clock of its time limit


class StageError(RuntimeError):
    pass


class Interrupted(StageError):
    """The task was stopped from outside (a signal, its time limit): running it again continues it."""


def layout_of(run_dir: str | Path) -> RunLayout:
    run_dir = Path(run_dir)
    return RunLayout(run_dir.parent, run_dir.name)


def current_job() -> tuple[str | None, str | None]:
    """(the scheduler's id of the job running this code, its executor's name); (None, None)
    outside a submitit job."""
    try:
        import submitit

        environment = submitit.JobEnvironment()
        return str(environment.job_id), environment.cluster
    except RuntimeError:
        return None, None


class Carried(StageError):
    """Another process runs this task (or its trainer): this one leaves it, and its markers, alone."""


def run_task(run_dir: str, stage: str, step: int | None = None, decoding: str = "") -> str:
    """Run one task of a stage unless it is done, another process runs it (its lock is held), or
    another job now carries it (this one was superseded); its output goes to the task's log file.
    Whatever the run's state files say, one process at a time runs a task."""
    from .plan import Task

    layout = layout_of(run_dir)
    task = Task(stage, step, decoding)
    if layout.is_done(**task.key):
        return "skipped"
    name = task.name
    job_id, executor = current_job()
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(locks.exclusive(layout.task_lock(name), what=f"{name}, job {job_id}"))
        except locks.LockHeld as err:
            return _leave(name, job_id, f"run by {locks.describe(err.holder)}")
        try:
            return _run_held(layout, task, job_id, executor)
        except Carried as err:
            return _leave(name, job_id, str(err))


def _leave(task: str, job_id: str | None, why: str) -> str:
    message = f"[pipeline] {task} is {why}; this job ({job_id or 'no scheduler job'}) leaves it alone"
    print(message, file=sys.stderr, flush=True)  # the job's own log
    return message


def _run_held(layout: RunLayout, task, job_id: str | None, executor: str | None) -> str:
    from .jobs import Registry, RegistryDamaged

    name = task.name
    if layout.is_done(**task.key):  # finished by the process that held the lock before
        return "skipped"
    if job_id is not None:
        try:
            current = Registry(layout).job_id(name)
        except RegistryDamaged:
            current = None  # the task's lock keeps it to one process all the same
        if current is not None and current != job_id:
            return f"superseded by job {current}"
        atomic.write_json(layout.started(name, job_id), {"started": time.time(), "host": os.uname().nodename,
                                                                 "job_id": job_id, "executor": executor})
    layout.marker(**task.key, kind="failed").unlink(missing_ok=True)  # an earlier attempt's; its traceback stays in the log
    spec = load_frozen(layout.spec)
    offline_environment(layout)
    log = layout.log(**task.key)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as log_file, contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file), \
            stopped_by_sigterm():
        print(f"[pipeline] {name} started on {os.uname().nodename} (job {job_id})", flush=True)
        try:
            info = STAGES[task.stage](layout, spec, task, log_file)
        except Carried:
            raise
        except BaseException as err:
            traceback.print_exc()
            record_failure(layout, task, err)
            raise
    return finish(layout, spec, task, info or {})


@contextlib.contextmanager
def stopped_by_sigterm():
    """SIGTERM (`pipeline cancel`, the scheduler's cancel or time limit) stops the task with
    Interrupted, which records it as retryable; submitit's own handler would ignore it."""
    def stop(signum, frame):
        raise Interrupted("stopped by SIGTERM (cancelled, or the job's time limit); running this task again "
                          "starts it afresh (training resumes from its last checkpoint)")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def record_failure(layout: RunLayout, task, err: BaseException) -> None:
    """The failure marker `status` shows: one line, naming a full or read-only disk where that
    is the cause; on a disk too full for even the marker, the job's log keeps it."""
    error = write_problem(err) if isinstance(err, OSError) else None
    if error is None:
        error = f"{type(err).__name__}: {err}"
        where = refusal(layout.dir)
        error = f"{where} ({error})" if where else error
    try:
        layout.mark_failed(task.stage, task.step, error, retryable=isinstance(err, (Interrupted, KeyboardInterrupt)),
                           decoding=task.decoding)
    except OSError as again:
        print(f"[pipeline] could not record the failure ({write_problem(again) or again}): {error}", file=sys.__stderr__,
              flush=True)


def finish(layout: RunLayout, spec: JobSpec, task, info: dict) -> str:
    """The done marker, with the outputs' sizes; never once the run is cancelled (checked under
    the run's lock, which `pipeline cancel` holds while it flags the run)."""
    from .jobs import run_lock
    from .plan import outputs

    with run_lock(layout):
        if layout.cancel_flag.is_file():
            return "cancelled before it was marked done"
        layout.mark_done(task.stage, task.step, outputs(layout, task, spec), decoding=task.decoding, **info)
    return "done"


def offline_environment(layout: RunLayout) -> None:
    """Compute nodes often have no internet: models and datasets come from the results root's
    cache, filled on the login node at submit time (pipeline.prefetch)."""
    from .prefetch import cache_environment

    os.environ.update(cache_environment(layout.root, offline=True))


def preprocess(layout: RunLayout, spec: JobSpec, task, log) -> dict:
    """Submit's data checks again (a file may have changed since), then the vocabulary and the
    encoded splits; a result training could not use fails here, with its reason in `status`."""
    from diffusion.prepare import prepare

    from .preflight import PreflightError, check_data, check_train_size

    try:
        check_data(spec)
        with shared_data(layout):
            info = prepare(spec.data, layout.data)
        check_train_size(spec, info["counts"]["train"], "the prepared train split")
    except PreflightError as err:
        raise StageError(str(err)) from None
    return info


def shared_data(layout: RunLayout):
    """A study's variants with equal data sections share one prepared folder (the run's data/ links
    to it): the first preprocess to take its lock prepares it, the others wait, then find it done."""
    if not layout.data.is_symlink():
        return contextlib.nullcontext()
    target = layout.data.resolve()
    return locks.exclusive(target.with_name(target.name + ".lock"), what=f"preprocess of {layout.run_id}", wait=True)


# the signals that stop a sound trainer (Ctrl-C, a cancel, a time limit, a preemption, the kernel's
# OOM killer): running the task again resumes it. Any other (SIGSEGV, SIGABRT, SIGBUS: a device-side
# assert ends so) is a crash.
STOPPING_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGKILL, signal.SIGTERM, signal.SIGUSR1,
                              signal.SIGUSR2, signal.SIGXCPU})


def train(layout: RunLayout, spec: JobSpec, task, log) -> dict:
    """Start the trainer: one process, or one rank per GPU (or per `ranks` on CPU) on this node."""
    from .plan import checkpoint_complete

    res = spec.resources.train
    ranks = res.gpus if res.gpus > 0 else res.ranks
    set_aside_corrupt_checkpoints(layout)
    steps_before = [step for step, _ in manifest.complete_steps(layout.checkpoints)]
    args = ["-m", "diffusion.train", str(layout.config), str(layout.dir), "--data-dir", str(layout.data)]
    if spec.train.time_limit_s is None:
        # checkpoint and stop before the job's own time limit rather than trust a signal to come in
        # time (PJM: about 10 s between its warning and the kill): keep 10% of it, 2 to 10 minutes
        limit = res.time_min * 60
        left = limit - min(600, max(120, limit // 10)) - (time.time() - JOB_STARTED)
        args += ["--time-limit", str(max(60, int(left)))]
    if ranks > 1:  # torchrun, not srun: the same command starts the ranks under PJM, which has no srun
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] + args
    env = dict(os.environ)
    if res.gpus == 0:
        env.setdefault("OMP_NUM_THREADS", str(max(1, res.cpus // ranks)))
    log.flush()
    said_from = log.tell()  # this attempt's part of the log, which earlier attempts share
    returncode = wait_passing_sigterm(subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                                       env=env))
    if returncode == manifest.TRAINER_BUSY:
        raise Carried(f"trained by another trainer ({layout.train_lock}: {locks.describe(locks.holder(layout.train_lock))})")
    # the signal that ended it: -N from Popen, 128 + N where the trainer (StopRequest) or a shell exits so
    sig = -returncode if returncode < 0 else returncode - 128 if returncode - 128 in STOPPING_SIGNALS else 0
    if sig in STOPPING_SIGNALS:
        raise Interrupted(f"training was stopped by {signal.Signals(sig).name} (exit {returncode}); running this task "
                          "again resumes it from its last checkpoint")
    if sig:  # a crash, which the same checkpoint would most likely meet again: no retry of its own
        raise StageError(f"training crashed ({signal.Signals(sig).name}, exit {returncode}); see {layout.log('train')}")
    if returncode != 0:  # with the trainer's own one-line reason, where it gave one
        with open(layout.log("train"), errors="replace") as written:
            written.seek(said_from)
            said = [line for line in written.read().splitlines() if line.startswith("error: ")]
        raise StageError(f"training exited with code {returncode}" + (f": {said[-1][len('error: '):]}" if said else "")
                         + f"; see {layout.log('train')}")
    final = layout.checkpoint(spec.train.steps)
    if not checkpoint_complete(layout, spec.train.steps):
        if [step for step, _ in manifest.complete_steps(layout.checkpoints)] != steps_before:
            from .jobs import clear_attempts

            clear_attempts(layout, "train")  # progress: a long training may need many job lengths
        raise Interrupted(f"training stopped before step {spec.train.steps} (its time limit); "
                          "the pipeline resubmits it and it resumes from the last checkpoint")
    return {"checkpoint": str(final)}


def wait_passing_sigterm(proc: subprocess.Popen) -> int:
    """The trainer's exit code; a SIGTERM to this job reaches the trainer, which finishes its
    step and checkpoints before it exits, and is waited for."""
    while True:
        try:
            return proc.wait()
        except Interrupted:
            proc.send_signal(signal.SIGTERM)


def set_aside_corrupt_checkpoints(layout: RunLayout) -> None:
    """A complete-looking checkpoint that fails its check (truncated, a file missing) is renamed
    aside, never deleted, so that training resumes from the one before and writes it again."""
    for step, folder in reversed(manifest.finished_steps(layout.checkpoints)):
        try:
            manifest.verify(folder)
            return  # the trainer resumes from this one
        except manifest.CheckpointError as err:
            aside = folder.with_name(manifest.aside_name(folder, time.time()))
            folder.rename(aside)
            print(f"[pipeline] {err}: set aside as {aside.name}; training resumes from the checkpoint before", flush=True)


def sample(layout: RunLayout, spec: JobSpec, task, log) -> dict:
    from diffusion.sample import run

    step, decoding = task.step, task.decoding
    try:
        manifest.verify(layout.checkpoint(step))
    except manifest.CheckpointError as err:  # training sets a corrupt checkpoint aside and writes it again
        raise Interrupted(f"{err}; this task runs again once training has rewritten it") from None

    split = layout.data / f"{spec.evaluate.split}.jsonl"
    if not split.is_file():
        raise StageError(f"{split}: the {spec.evaluate.split} split was not prepared; set data.{spec.evaluate.split}")
    # the checkpoint's config samples as the spec's own `sample` section; a named decoding replaces it
    overrides = to_dict(spec.decoding(decoding).sample) if decoding else None
    return run(layout.checkpoint(step), split, layout.samples_file(step, decoding), overrides=overrides,
               progress=SampleProgress(layout.sample_progress(step, decoding)))


class SampleProgress:
    """Writes how many candidates a sample task has decoded (at most every `every_s` seconds, and
    at the end), so that `pipeline status` can tell the stage's speed and time left."""

    def __init__(self, path: Path, every_s: float = 5.0):
        self.path, self.every_s = path, every_s
        self.started, self.written = time.time(), 0.0

    def __call__(self, decoded: int, total: int) -> None:
        now = time.time()
        if decoded < total and now - self.written < self.every_s:
            return
        self.written = now
        atomic.write_json(self.path, {"decoded": decoded, "total": total, "elapsed_s": now - self.started, "time": now})


def read_samples(path: Path) -> list[dict]:
    if not path.is_file():
        raise StageError(f"{path}: missing; the sample task of this checkpoint has not finished")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def bertscore_model(spec: JobSpec) -> str | None:
    """What the evaluate section's model names, as bert-score loads it."""
    from diffusion.metrics import resolve_bertscore_model

    try:
        return resolve_bertscore_model(spec.evaluate.bertscore_model)
    except ValueError as err:
        raise StageError(f"evaluate.bertscore_model: {err}") from None


def evaluate(layout: RunLayout, spec: JobSpec, task, log) -> dict:
    from diffusion.metrics import score

    step, decoding = task.step, task.decoding
    seeds = spec.library_config(decoding).sample.seeds
    chosen = read_samples(layout.samples_file(step, decoding))
    single = read_samples(layout.seed_samples(step, seeds[0], decoding)) if len(seeds) > 1 else chosen
    model = bertscore_model(spec)

    def scores(rows, hyp_key="hyp"):
        return score([r[hyp_key] for r in rows], [r["ref"] for r in rows], [r["src"] for r in rows],
                     bertscore_model=model, bertscore_batch_size=spec.evaluate.bertscore_batch_size)

    rows = {"single": scores(single)}
    if len(seeds) > 1:
        rows[f"mbr-{len(seeds)}"] = scores(chosen)
    result = {
        "run": layout.run_id, "label": spec.evaluate.label or default_label(spec), "noising": spec.diffusion.noising,
        "step": step, "decoding": decoding, "split": spec.evaluate.split, "n": len(chosen), "rows": rows,
        "copy_source": scores(chosen, "src"),  # QQP rewards copying: the source itself as the paraphrase
    }
    if not decoding:  # the checkpoint's, whatever decodes it: once, beside its own decoding's scores
        result["diagnostics"] = checkpoint_diagnostics(layout, spec, step)
        result["loss_terms"] = logged_loss_terms(layout, step)
    atomic.write_json(layout.metrics(step, decoding), result)
    return {"metrics": str(layout.metrics(step, decoding))}


def logged_loss_terms(layout: RunLayout, step: int) -> dict:
    """The trainer's loss and per-term losses (mse on source and target positions, nll, ...) last
    logged at or before `step`: where a checkpoint's training loss goes."""
    last = {}
    try:
        lines = layout.train_log.read_text().splitlines()
    except FileNotFoundError:
        return last
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed trainer
        if isinstance(record, dict) and "loss" in record and record.get("step", 0) <= step:
            last = {"loss": record["loss"], **record.get("terms", {})}
    return last


def checkpoint_diagnostics(layout: RunLayout, spec: JobSpec, step: int) -> dict:
    """The denoiser's token accuracy at a few noise levels on the evaluated pairs, and the
    embedding norms: they show learning (or a collapse) long before BLEU moves."""
    from diffusion.diagnostics import diagnose
    from diffusion.pairs import read_pairs

    pairs = read_pairs(layout.data / f"{spec.evaluate.split}.jsonl", spec.sample.max_examples)
    return diagnose(layout.checkpoint(step), pairs)


def default_label(spec: JobSpec) -> str:
    from diffusion.noising import NOISING

    return NOISING[spec.diffusion.noising].label


def aggregate(layout: RunLayout, spec: JobSpec, task, log) -> dict:
    from .plan import prerequisites
    from .results import aggregate as write_results

    # an aggregate job queued before the run gained decodings may start before their evaluations
    waiting = [t.name for t in prerequisites(task, spec) if not layout.is_done(**t.key)]
    if waiting:
        raise Carried(f"waiting for {', '.join(waiting)}")
    paths = write_results([layout.dir], layout.results)
    return {name: str(path) for name, path in paths.items()}


STAGES = {"preprocess": preprocess, "train": train, "sample": sample, "evaluate": evaluate, "aggregate": aggregate}


def write_run_inputs(layout: RunLayout, spec: JobSpec, frozen_text: str) -> None:
    """The frozen spec and the library config the trainer reads (written at submit time)."""
    import yaml

    atomic.write_text(layout.spec, frozen_text)
    atomic.write_text(layout.config, yaml.safe_dump(to_dict(spec.library_config()), sort_keys=False))
