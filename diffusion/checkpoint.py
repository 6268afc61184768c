"""Step-keyed checkpoints that can never be taken as complete when they are not.

    checkpoints/step_0010000/
        ds/                 DeepSpeed engine state: weights, optimizer (per ZeRO rank), LR schedule
        rank_00000.pt       per rank: RNG states, data position, timestep-sampler state (+ EMA shard under ZeRO-3)
        model.pt            exported EMA weights of the denoiser + config: what sampling loads, on one device
        tokenizer.json
        meta.json           written last: step, world size, and the size of every file above

Everything is written into `.step_0010000.partial/` and renamed to `step_0010000/` only after
every rank has finished, so a killed job leaves at most a `.partial` folder, which is ignored
and replaced on the next save. Loading checks meta.json's file list and sizes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from . import atomic
from .distributed import barrier

STEP_DIR = re.compile(r"^step_(\d{7,})$")


class CheckpointError(RuntimeError):
    pass


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _file_sizes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "meta.json"
    }


def save(
    engine,
    root: Path,
    step: int,
    rank: int,
    world_size: int,
    rank_state: dict,
    write_main_files: Callable[[Path], None],
    extra_meta: dict | None = None,
) -> Path:
    """Collective: every rank calls it. `write_main_files(folder)` runs on rank 0 only."""
    root = Path(root)
    final = root / step_dir_name(step)
    partial = root / f".{step_dir_name(step)}.partial"
    if rank == 0:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    barrier()
    if not final.exists():
        engine.save_checkpoint(str(partial), tag="ds", client_state={"step": step})
        atomic.torch_save(rank_state, partial / f"rank_{rank:05d}.pt")
        if rank == 0:
            write_main_files(partial)
            meta = {"step": step, "world_size": world_size, "files": _file_sizes(partial), **(extra_meta or {})}
            atomic.write_json(partial / "meta.json", meta)
        barrier()
        if rank == 0:
            partial.rename(final)
    barrier()
    if rank == 0 and partial.exists():
        shutil.rmtree(partial, ignore_errors=True)
    return final


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


def load_rank_state(folder: Path, rank: int) -> dict[str, Any]:
    path = Path(folder) / f"rank_{rank:05d}.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (was the checkpoint written by a different number of ranks?)")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_exported(folder: Path, device: str | torch.device = "cpu"):
    """(Config, Denoiser in eval mode with the EMA weights, tokenizer) from a checkpoint folder."""
    from .config import Config, from_dict
    from .data import load_tokenizer
    from .model import Denoiser

    folder = Path(folder)
    verify(folder)
    payload = torch.load(folder / "model.pt", map_location="cpu", weights_only=False)
    cfg = from_dict(Config, payload["config"])
    denoiser = Denoiser(cfg.model)
    denoiser.load_state_dict(payload["state_dict"])
    return cfg, denoiser.to(device).eval(), load_tokenizer(folder / "tokenizer.json")
