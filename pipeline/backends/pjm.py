"""PJM (Fujitsu's scheduler) through our submitit plugin (pipeline/pjm.py): resource group, group
(-g), modules and setup lines from the site profile, the rest from the stage's resources. PJM bulk
jobs cannot wait for other jobs: `pipeline status`/`watch` submit each stage when it is ready."""

from __future__ import annotations

import subprocess

from .base import Backend, job_parameters, partition_of, query_watcher, setup_lines


class Pjm(Backend):
    name = "pjm"
    after_submit = ("PJM jobs cannot wait for each other: `pipeline status` submits each stage when it becomes ready; "
                    "`pipeline watch RUN` does so in a loop (run it in tmux or screen)")

    def make_executor(self, folder, site, res, name=""):
        import submitit

        executor = submitit.AutoExecutor(folder=folder, cluster="pjm", pjm_python=site.python)
        # cpus and mem_gb are not rendered (PJM groups give cores and memory with the node or the
        # GPU share); PJM has no array throttle, so array_parallelism has nothing to set
        params = dict(job_parameters(res, name), pjm_setup=setup_lines(site))
        if site.account:
            params["pjm_group"] = site.account
        if partition_of(site, res):
            params["pjm_rscgrp"] = partition_of(site, res)
        executor.update_parameters(**params)
        return executor

    def query(self, job_ids):
        from ..pjm import PjmInfoWatcher

        return query_watcher(PjmInfoWatcher(delay_s=0), job_ids)

    def cancel(self, job_ids):
        from ..pjm import pjm_job_id

        subprocess.run(["pjdel", *map(pjm_job_id, job_ids)], check=False, capture_output=True)


BACKEND = Pjm()
