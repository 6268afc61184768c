"""Which submitit executor runs a stage's jobs, with the stage's resources.

Only the local executor (a laptop, CI, a login node's own cores) is here; schedulers plug in
behind the same function.
"""

from __future__ import annotations

from pathlib import Path

import submitit

from .spec import SiteSpec, StageResources

EXECUTORS = ("local",)


def make_executor(kind: str, folder: Path, site: SiteSpec, res: StageResources) -> submitit.Executor:
    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=res.time_min, gpus_per_node=res.gpus)
        return executor
    raise ValueError(f"executor {kind!r} is not available in this version; choose one of: {', '.join(EXECUTORS)}")
