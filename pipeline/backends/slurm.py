"""Slurm through submitit: partition, account, QoS, modules and setup lines from the site
profile, the rest from the stage's resources; the whole study is queued at submit (afterok)."""

from __future__ import annotations

import subprocess

from .base import Backend, partition_of, setup_lines


class Slurm(Backend):
    name = "slurm"
    jobs_can_wait = True

    def make_executor(self, folder, site, res, name=""):
        import submitit

        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_python=site.python)
        extra = {key: value for key, value in (("account", site.account), ("qos", site.qos)) if value}
        params = dict(name=name, timeout_min=res.time_min, nodes=res.nodes, tasks_per_node=1,
                      cpus_per_task=res.cpus, mem_gb=res.mem_gb, slurm_array_parallelism=res.array_parallelism,
                      slurm_setup=setup_lines(site), slurm_additional_parameters=extra)
        if res.gpus:
            params["gpus_per_node"] = res.gpus
        if partition_of(site, res):
            params["slurm_partition"] = partition_of(site, res)
        executor.update_parameters(**params)
        return executor

    def wait_for(self, executor, after, correspond=None):
        dependency = f"aftercorr:{correspond}" if correspond else "afterok:" + ":".join(after)
        extra = dict(executor.parameters.get("additional_parameters") or {})  # account, qos
        # a job whose dependency failed is cancelled by Slurm instead of waiting forever
        executor.update_parameters(slurm_additional_parameters={**extra, "dependency": dependency,
                                                                "kill_on_invalid_dep": "yes"})

    def query(self, job_ids):
        from submitit.slurm.slurm import SlurmInfoWatcher

        return _watch(SlurmInfoWatcher(delay_s=0), job_ids)

    def cancel(self, job_ids):
        subprocess.run(["scancel", *job_ids], check=False, capture_output=True)


def _watch(watcher, job_ids: list[str]) -> dict[str, str]:
    """One command (sacct / pjstat) for all the ids, through a private watcher (submitit's shared
    one throttles its calls)."""
    for jid in job_ids:
        watcher.register_job(jid)
    watcher.update()
    return {jid: (watcher.get_state(jid, mode="cache") or "UNKNOWN").split()[0].upper() for jid in job_ids}


BACKEND = Slurm()
