"""Slurm through submitit: partition, account, QoS, modules and setup lines from the site
profile, the rest from the stage's resources; the whole study is queued at submit (afterok)."""

from __future__ import annotations

import subprocess

from .base import Backend, job_parameters, partition_of, query_watcher, setup_lines


class Slurm(Backend):
    name = "slurm"
    jobs_can_wait = True

    def make_executor(self, folder, site, res, name=""):
        import submitit

        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_python=site.python)
        extra = {key: value for key, value in (("account", site.account), ("qos", site.qos)) if value}
        params = dict(job_parameters(res, name), slurm_array_parallelism=res.array_parallelism,
                      slurm_setup=setup_lines(site), slurm_additional_parameters=extra)
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

        return query_watcher(SlurmInfoWatcher(delay_s=0), job_ids)

    def cancel(self, job_ids):
        subprocess.run(["scancel", *job_ids], check=False, capture_output=True)


BACKEND = Slurm()
