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

import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from . import atomic
from .distributed import barrier
# what a complete checkpoint is, readable without torch (the login-node commands check it)
from .manifest import (DEEPSPEED_TAG, EXPORTED_MODEL, MANIFEST, TOKENIZER, CheckpointError, complete_steps,  # noqa: F401
                       file_sizes, latest, partial_dir_name, rank_file, step_dir_name, verify)


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
    partial = root / partial_dir_name(step)
    if rank == 0:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    barrier()
    if not final.exists():
        try:
            engine.save_checkpoint(str(partial), tag=DEEPSPEED_TAG, client_state={"step": step})
            atomic.torch_save(rank_state, partial / rank_file(rank))
            barrier()  # every rank's files are in place before rank 0 lists them into the manifest
            if rank == 0:
                write_main_files(partial)
                meta = {"step": step, "world_size": world_size, "files": file_sizes(partial), **(extra_meta or {})}
                atomic.write_json(partial / MANIFEST, meta)
            barrier()
        except Exception as err:
            # a full or read-only disk said as such (torch's own error does not), and the room the
            # half-written folder takes given back
            refused = atomic.refused(err, root)
            if rank == 0:
                shutil.rmtree(partial, ignore_errors=True)
            if refused is not None:
                raise refused from err
            raise
        if rank == 0:
            partial.rename(final)
    barrier()
    if rank == 0 and partial.exists():
        shutil.rmtree(partial, ignore_errors=True)
    return final


def load_rank_state(folder: Path, rank: int) -> dict[str, Any]:
    path = Path(folder) / rank_file(rank)
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
    payload = torch.load(folder / EXPORTED_MODEL, map_location="cpu", weights_only=False)
    cfg = from_dict(Config, payload["config"])
    denoiser = Denoiser(cfg.model)
    denoiser.load_state_dict(payload["state_dict"])
    return cfg, denoiser.to(device).eval(), load_tokenizer(folder / TOKENIZER)
