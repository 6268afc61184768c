"""The local executor: submitit's LocalExecutor on this machine's own cores and GPUs (a laptop,
CI, a workstation). A job id is the pid of its process; a background loop drives the run."""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path

from .base import Backend


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


class Local(Backend):
    name = "local"
    drives_itself = True
    waiting_reason = "inputs ready; waits for free cores on this machine"

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
        return {jid: "RUNNING" if process_alive(int(jid)) else "FINISHED" for jid in job_ids}

    def cancel(self, job_ids):
        for jid in job_ids:
            try:
                os.kill(int(jid), signal.SIGTERM)
            except ProcessLookupError:
                pass

    def has_room(self, spec, task, busy_tasks):
        """Cores are this machine's: start a task only when its cpus fit beside the running ones."""
        used = sum(getattr(spec.resources, t.stage).cpus for t in busy_tasks)
        want = getattr(spec.resources, task.stage).cpus
        return not busy_tasks or used + want <= (os.cpu_count() or 1)


BACKEND = Local()
