"""What the pipeline asks of a scheduler besides submitting: the state of all of a run's jobs in
ONE query, cancelling them in one command, and whether a job can wait for another.

States use Slurm's words (PJM's are mapped onto them by pipeline.pjm); a job is *live* while it
may still run. An unanswered query leaves every job UNKNOWN, which counts as live: the pipeline
never resubmits a task because the scheduler was slow to answer.
"""

from __future__ import annotations

import os
import subprocess

LIVE = {"PENDING", "READY", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED", "CONFIGURING",
        "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


def is_live(state: str) -> bool:
    return state in LIVE


def supports_dependencies(executor: str) -> bool:
    """Slurm queues a whole study at submit time (afterok); PJM bulk jobs and the local executor
    cannot wait for another job, so the pipeline submits their tasks when they become ready."""
    return executor == "slurm"


def dependency_parameters(executor: str, after: list[str]) -> dict:
    """submitit parameters that make a job wait for every job in `after` to succeed; a job whose
    dependency failed is cancelled by Slurm instead of waiting forever (kill_on_invalid_dep)."""
    if not after:
        return {}
    assert executor == "slurm", executor
    return {"dependency": "afterok:" + ":".join(after), "kill_on_invalid_dep": "yes"}


def _watcher(executor: str):
    if executor == "slurm":
        from submitit.slurm.slurm import SlurmInfoWatcher

        return SlurmInfoWatcher(delay_s=0)
    if executor == "pjm":
        from .pjm import PjmInfoWatcher

        return PjmInfoWatcher(delay_s=0)
    raise ValueError(executor)


def query(executor: str, job_ids: list[str]) -> dict[str, str]:
    """{job id: state} for every id, from one scheduler command (none for the local executor)."""
    if not job_ids:
        return {}
    if executor == "local":  # the job id of submitit's local executor is the pid of its process
        from .status import process_alive

        return {jid: "RUNNING" if process_alive(int(jid)) else "FINISHED" for jid in job_ids}
    watcher = _watcher(executor)  # a private instance: submitit's shared one throttles its calls
    for jid in job_ids:
        watcher.register_job(jid)
    watcher.update()  # the one command (sacct / pjstat) for all of them
    return {jid: (watcher.get_state(jid, mode="cache") or "UNKNOWN").split()[0].upper() for jid in job_ids}


def cancel(executor: str, job_ids: list[str]) -> None:
    if not job_ids:
        return
    if executor == "local":
        import signal

        for jid in job_ids:
            try:
                os.kill(int(jid), signal.SIGTERM)
            except ProcessLookupError:
                pass
        return
    if executor == "slurm":
        subprocess.run(["scancel", *job_ids], check=False, capture_output=True)
        return
    from .pjm import pjm_job_id

    subprocess.run(["pjdel", *map(pjm_job_id, job_ids)], check=False, capture_output=True)
