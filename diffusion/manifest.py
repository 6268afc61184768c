"""What the library leaves on disk, named in the standard library alone: which steps get a
checkpoint, the checkpoint folders' names and files, what makes one complete, the trainer's log,
heartbeat and lock, and the sampler's per-seed files.

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
# the trainer's output folder
HEARTBEAT = "heartbeat.json"  # the trainer's last log record
TRAIN_LOG = "train_log.jsonl"  # every log record, a line each
TRAIN_LOCK = "train.lock"  # held by the trainer's first rank while it trains into its output folder
TRAINER_BUSY = 75  # the exit code of a trainer that found its output folder's lock held (EX_TEMPFAIL)
# a checkpoint folder (and the prepared data folder's tokenizer, which it copies)
MANIFEST = "meta.json"  # written last: what makes the folder complete
EXPORTED_MODEL = "model.pt"  # the EMA weights and the config: what sampling loads
TOKENIZER = "tokenizer.json"
TARGET_LENGTHS = "target_lengths.json"  # the training targets' median length by source length (diffusion.lengths)
DEEPSPEED_TAG = "ds"  # the DeepSpeed engine's state, in a subfolder of this name


def rank_file(rank: int) -> str:
    """Each rank's own state in a checkpoint: RNGs, data position, timestep sampler (EMA shard)."""
    return f"rank_{rank:05d}.pt"


def partial_dir_name(step: int) -> str:
    """Where a checkpoint is written before it is complete (a dot name: never taken for one)."""
    return f".{step_dir_name(step)}.partial"


def seed_samples(samples: Path, seed: int) -> Path:
    """Where one seed's candidates go beside the chosen samples of several seeds (MBR)."""
    samples = Path(samples)
    return samples.with_name(f"{samples.stem}.seed{seed}.jsonl")


def aside_name(folder: Path, when: float) -> str:
    """The name a corrupt checkpoint is set aside under (renamed, never deleted)."""
    return f".{Path(folder).name}.corrupt-{int(when)}"


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
    """Every file under `folder` but the manifest itself, with its size: what the manifest lists."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def verify(folder: Path) -> dict:
    """meta.json of a complete checkpoint; CheckpointError naming what is missing or wrong."""
    folder = Path(folder)
    meta_path = folder / MANIFEST
    if not meta_path.is_file():
        raise CheckpointError(f"{folder}: incomplete checkpoint (no {MANIFEST})")
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


def is_complete(folder: Path) -> bool:
    """The one completeness rule: its manifest is there and every file it names has its size."""
    try:
        verify(folder)
        return True
    except (CheckpointError, OSError, KeyError, TypeError, AttributeError):
        return False


def finished_steps(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint folder under root that has been renamed into place (its
    manifest written), by step; `is_complete` says whether it is whole."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and (child / MANIFEST).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def complete_steps(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under root, by step."""
    return [(step, folder) for step, folder in finished_steps(root) if is_complete(folder)]


def latest(root: Path) -> Path | None:
    """The newest checkpoint folder renamed into place (the trainer resumes from it, verifying it
    first: a corrupt one is an error, never passed over)."""
    steps = finished_steps(root)
    return steps[-1][1] if steps else None
