"""Which submitit executor runs a stage's jobs, with the stage's resources.

local: submitit's local executor (a laptop, CI, a workstation's own cores and GPUs).
slurm: submitit's Slurm executor; partition, account, QoS, modules and setup lines come from
the site profile, everything else from the stage's resources in the spec.
pjm: the PJM plugin (pipeline/pjm.py); resource group, group (-g), modules and setup lines from
the site profile, the rest from the stage's resources.
"""

from __future__ import annotations

from pathlib import Path

import submitit

from .spec import SiteSpec, StageResources

EXECUTORS = ("local", "slurm", "pjm")


def partition_of(site: SiteSpec, res: StageResources) -> str | None:
    return res.partition or (site.gpu_partition if res.gpus else None) or site.partition


def make_executor(kind: str, folder: Path, site: SiteSpec, res: StageResources, name: str = "") -> submitit.Executor:
    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        # Ctrl-C in the terminal of `pipeline submit --wait` reaches every process of its group:
        # the local jobs ignore it (inherited down to the trainer), so it stops the following,
        # not the study, which the background loop then carries on
        executor.update_parameters(timeout_min=res.time_min, gpus_per_node=res.gpus, setup=["trap '' INT"])
        return executor
    if kind == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        extra = {key: value for key, value in (("account", site.account), ("qos", site.qos)) if value}
        params = dict(name=name, timeout_min=res.time_min, nodes=res.nodes, tasks_per_node=1,
                      cpus_per_task=res.cpus, mem_gb=res.mem_gb, slurm_array_parallelism=res.array_parallelism,
                      slurm_setup=[f"module load {m}" for m in site.modules] + list(site.setup),
                      slurm_additional_parameters=extra)
        if res.gpus:
            params["gpus_per_node"] = res.gpus
        if partition_of(site, res):
            params["slurm_partition"] = partition_of(site, res)
        executor.update_parameters(**params)
        return executor
    if kind == "pjm":
        executor = submitit.AutoExecutor(folder=folder, cluster="pjm")
        # cpus and mem_gb are not rendered (PJM groups give cores and memory with the node or the
        # GPU share); PJM has no array throttle, so array_parallelism has nothing to set
        params = dict(name=name, timeout_min=res.time_min, nodes=res.nodes, tasks_per_node=1,
                      cpus_per_task=res.cpus, mem_gb=res.mem_gb,
                      pjm_setup=[f"module load {m}" for m in site.modules] + list(site.setup))
        if res.gpus:
            params["gpus_per_node"] = res.gpus
        if site.account:
            params["pjm_group"] = site.account
        if partition_of(site, res):
            params["pjm_rscgrp"] = partition_of(site, res)
        executor.update_parameters(**params)
        return executor
    raise ValueError(f"executor {kind!r} is not available in this version; choose one of: {', '.join(EXECUTORS)}")
