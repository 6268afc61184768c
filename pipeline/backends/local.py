"""The local executor: submitit's LocalExecutor on this machine's own cores and GPUs (a laptop,
CI, a workstation). A job id is the pid of its process; a background loop drives the run."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from ..states import JobState
from .base import Backend

KILL_WAIT_S = 30.0  # between SIGTERM and SIGKILL, as Slurm's default KillWait: time for a checkpoint


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie is dead, though kill(pid, 0) succeeds on it
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False


def stop_processes(pids: list[int], grace_s: float = KILL_WAIT_S) -> int:
    """Stop each process and all its descendants, as a scheduler stops a job: SIGTERM to every
    one (the trainer checkpoints, a task records that it was stopped), SIGKILL to whatever is
    left after `grace_s`. A job's processes are not one process group (its shell, submitit's
    controller, the task, the trainer and its ranks), and submitit's task ignores SIGTERM until
    the task installs its own handler; signalling the job's first process alone would leave the
    others running. Returns how many processes were stopped."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            top = psutil.Process(pid)
            for proc in [top, *top.children(recursive=True)]:
                if proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE:
                    found[proc.pid] = proc
        except psutil.NoSuchProcess:
            continue
    procs = list(found.values())
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


def visible_gpus() -> int:
    """The NVIDIA GPUs this machine lets its processes use, without importing torch: those
    CUDA_VISIBLE_DEVICES names where it is set, else those the driver lists."""
    import shutil
    import subprocess

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len([d for d in listed.split(",") if d.strip() and not d.strip().startswith("-")])
    driver = Path("/proc/driver/nvidia/gpus")
    if driver.is_dir():
        return len(list(driver.iterdir()))
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
        return sum(line.startswith("GPU ") for line in out.splitlines())
    return 0


class Local(Backend):
    name = "local"
    drives_itself = True
    waiting_reason = "inputs ready; waits for free cores on this machine"

    def check_resources(self, spec) -> None:
        from ..errors import UserError
        from ..layout import STAGES

        have = visible_gpus()
        for stage in STAGES:
            want = getattr(spec.resources, stage).gpus
            if want > have:
                raise UserError(f"resources.{stage}.gpus: {want} GPU(s) asked, but this machine has {have} and the "
                                f"local executor runs every task here; set --set resources.{stage}.gpus={have} "
                                "(0: the CPU) or submit to a cluster (--site)")

    def make_executor(self, folder, site, res, name=""):
        import submitit

        executor = submitit.LocalExecutor(folder=folder, python=site.python)
        # Ctrl-C in the terminal of `pipeline submit --wait` reaches every process of its group:
        # the local jobs ignore it (inherited down to the trainer), so it stops the following,
        # not the study, which the background loop then carries on. submitit starts each job's
        # controller with the submitting process's stdin, stdout and stderr: a job that outlives
        # `pipeline submit --wait` would hold its terminal or pipe open (a caller reading the
        # output would wait for the study to end), so the controllers get a log file instead.
        log = shlex.quote(str(Path(folder) / "controllers.log"))
        executor.update_parameters(timeout_min=res.time_min, gpus_per_node=res.gpus,
                                   setup=["trap '' INT", f"exec </dev/null >>{log} 2>&1"])
        return executor

    def query(self, job_ids):
        return {jid: JobState.RUNNING if process_alive(int(jid)) else JobState.FINISHED for jid in job_ids}

    def cancel(self, job_ids):
        return stop_processes([int(jid) for jid in job_ids])

    def has_room(self, res, busy):
        """Cores are this machine's: start a task only when its cpus fit beside the running ones."""
        return not busy or sum(b.cpus for b in busy) + res.cpus <= (os.cpu_count() or 1)


BACKEND = Local()
