"""What the trainer leaves in its output folder, in the standard library alone: which steps get a
checkpoint, the checkpoint folders' names, what makes one complete, and the heartbeat's name.

The trainer writes `step_NNNNNNN/meta.json` last, listing every other file of the checkpoint with
its size (diffusion/checkpoint.py); a folder is complete when that manifest is there and every
file it names has its size. The pipeline's login-node commands check this without importing torch.
One trainer at a time writes an output folder: its first rank holds `train.lock` there (diffusion.locks).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

STEP_DIR = re.compile(r"^step_(\d{7,})$")
HEARTBEAT = "heartbeat.json"  # the trainer's last log record, in its output folder
TRAIN_LOCK = "train.lock"  # held by the trainer's first rank while it trains into its output folder
TRAINER_BUSY = 75  # the exit code of a trainer that found its output folder's lock held (EX_TEMPFAIL)


class CheckpointError(RuntimeError):
    pass


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def checkpoint_steps(steps: int, save_every: int) -> list[int]:
    """The steps at which a run of `steps` steps leaves a checkpoint: every save_every, and the last
    step. The trainer saves at these (and where it stops early); the pipeline plans a sample and an
    evaluate task for each."""
    return sorted({*range(save_every, steps + 1, save_every), steps})


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file under `folder` but the manifest itself, with its size: what meta.json lists."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "meta.json"
    }


def verify(folder: Path) -> dict:
    """meta.json of a complete checkpoint; CheckpointError naming what is missing or wrong."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{folder}: incomplete checkpoint (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path}: corrupt ({err})") from None
    for name, size in meta["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from checkpoint")
        if path.stat().st_size != size:
            raise CheckpointError(f"{path}: corrupt (size {path.stat().st_size}, expected {size})")
    return meta


def complete_steps(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint folder under root that carries a meta.json, by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and (child / "meta.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest(root: Path) -> Path | None:
    steps = complete_steps(root)
    return steps[-1][1] if steps else None
