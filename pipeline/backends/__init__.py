"""Scheduler backends: one class a scheduler, behind the small interface of `base.Backend`.

The registry names them without importing them (spec validation and the CLI read the names on a
login node); `backend(name)` imports the one a run uses. A new scheduler (LSF, PBS...) is one new
module here with a `Backend` subclass, plus its name in NAMES: its submitit executor, its one
batched state query, its cancel command, and whether its jobs can wait for each other.
"""

from __future__ import annotations

import importlib

from .base import Backend, is_live  # noqa: F401

# name -> module under pipeline.backends holding its Backend subclass, as `BACKEND`
NAMES = {"local": "local", "slurm": "slurm", "pjm": "pjm"}


def backend(name: str) -> Backend:
    if name not in NAMES:
        raise ValueError(f"executor {name!r} is not available in this version; choose one of: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{NAMES[name]}").BACKEND
