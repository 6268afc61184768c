"""What the pipeline asks of a scheduler: an executor for a stage's jobs, the state of all of a
run's jobs in ONE query, cancelling jobs, and whether a job can wait for another.

States use Slurm's words (PJM's are mapped onto them by pipeline.pjm); a job is *live* while it
may still run. An unanswered query leaves every job UNKNOWN, which counts as live: the pipeline
never resubmits a task because the scheduler was slow to answer.
"""

from __future__ import annotations

from pathlib import Path

from ..states import JobState

LIVE = {JobState.PENDING, JobState.RUNNING, JobState.UNKNOWN, JobState.COMPLETING, "READY", "REQUEUED", "PREEMPTED",
        "CONFIGURING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


def is_live(state: str) -> bool:
    return state in LIVE


def partition_of(site, res) -> str | None:
    """The stage's own partition, else the site's GPU partition for a GPU stage, else the site's."""
    return res.partition or (site.gpu_partition if res.gpus else None) or site.partition


def setup_lines(site) -> list[str]:
    return [f"module load {m}" for m in site.modules] + list(site.setup)


def job_parameters(res, name: str) -> dict:
    """What a cluster job takes from the stage's resources, in submitit's shared parameters: one
    task a node (ranks start inside the job), its cores, memory, time and GPUs."""
    params = dict(name=name, timeout_min=res.time_min, nodes=res.nodes, tasks_per_node=1,
                  cpus_per_task=res.cpus, mem_gb=res.mem_gb)
    if res.gpus:
        params["gpus_per_node"] = res.gpus
    return params


def query_watcher(watcher, job_ids: list[str]) -> dict[str, str]:
    """One command (sacct / pjstat) for all the ids, through a private submitit watcher (the
    shared one throttles its calls)."""
    for jid in job_ids:
        watcher.register_job(jid)
    watcher.update()
    return {jid: (watcher.get_state(jid, mode="cache") or JobState.UNKNOWN).split()[0].upper() for jid in job_ids}


class Backend:
    name = ""
    # Slurm queues a whole study at submit time; where jobs cannot wait for another job (PJM bulk
    # jobs, local processes) a task is submitted when its inputs are ready
    jobs_can_wait = False
    # the local executor: a background loop on this machine drives the run (status only reads);
    # elsewhere `pipeline status`/`watch` submit what has become ready
    drives_itself = False
    # said after a submit: how the run goes on
    after_submit = "follow it with: pipeline status {run}"
    # why a task whose inputs are ready has no job yet
    waiting_reason = "inputs ready; submitted at the next pass"

    def make_executor(self, folder: Path, site, res, name: str = ""):
        """The submitit executor for one stage's jobs, with the stage's resources."""
        raise NotImplementedError

    def wait_for(self, executor, after: list[str], correspond: str | None = None) -> None:
        """Make the executor's next jobs wait for every job in `after` to succeed, or (with
        `correspond`, an array's id) task i of the array for task i of that one."""
        raise ValueError(f"{self.name} jobs cannot wait for other jobs")

    def query(self, job_ids: list[str]) -> dict[str, str]:
        """{job id: state} for every id, from one scheduler command."""
        raise NotImplementedError

    def cancel(self, job_ids: list[str]) -> int | None:
        """Stop the jobs (and every process of theirs); the number of processes stopped where
        the backend can count them."""
        raise NotImplementedError

    def check_resources(self, spec) -> None:
        """A UserError, at submit, for resources this scheduler can never give (the scheduler
        itself judges a cluster's)."""

    def has_room(self, res, busy: list) -> bool:
        """Whether a task asking for `res` (StageResources) may start beside live tasks that asked
        for `busy` (the scheduler decides, except locally)."""
        return True
