"""The trainer's log: loss terms and real tokens summed on the device between two log lines (one
host sync a line), and each line written to OUTDIR's train log and heartbeat (manifest.py names
them) and printed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import atomic
from .config import Config
from .data import PAD
from .manifest import HEARTBEAT, TRAIN_LOG

if TYPE_CHECKING:
    from .train import Training


class LossWindow:
    """Sums of the loss terms and of the real (non-PAD) tokens on the device between two log
    lines, so that a step needs no host sync; `positions` is counted on the host. The sums are
    updated and reset in place, so that a CUDA graph that adds to them (train.cuda_graphs) keeps
    adding to the same memory."""

    def __init__(self, device: torch.device):
        self.device = device
        self.names: list[str] | None = None
        self.sums: torch.Tensor | None = None
        self.real_tokens = torch.zeros((), device=self.device, dtype=torch.long)
        self.reset()

    def reset(self) -> None:
        if self.sums is not None:
            self.sums.zero_()
        self.real_tokens.zero_()
        self.positions, self.micro_batches = 0, 0

    def add(self, terms: dict[str, torch.Tensor], input_ids: torch.Tensor) -> None:
        self.accumulate(terms, input_ids)
        self.count(input_ids.numel())

    def accumulate(self, terms: dict[str, torch.Tensor], input_ids: torch.Tensor) -> None:
        """The device's part of `add`: the terms' means and the real tokens, added to the sums."""
        self.names = self.names or list(terms)
        values = torch.stack([terms[name].detach().float().mean() for name in self.names])
        if self.sums is None:
            self.sums = torch.zeros_like(values)
        self.sums += values
        self.real_tokens += (input_ids != PAD).sum()

    def count(self, positions: int) -> None:
        """The host's part of `add`: one more micro-batch of `positions` positions."""
        self.positions += positions
        self.micro_batches += 1

    def means(self) -> tuple[dict[str, float], int]:
        """({term: mean over the window}, real tokens): the one host sync per log line."""
        values = [total / self.micro_batches for total in self.sums.tolist()]
        return dict(zip(self.names, values)), int(self.real_tokens.item())


def log_record(window: LossWindow, step: int, run: Training, cfg: Config, env, elapsed: float, steps: int) -> dict:
    """The log line of the steps since the last one: the loss and its terms, speeds, ETA."""
    terms, real_tokens = window.means()
    record = {
        "step": step, "loss": terms["loss"], "lr": float(run.lr_schedule.get_last_lr()[0]),  # a tensor under train.cuda_graphs
        "terms": {k: v for k, v in terms.items() if k != "loss"},
        # positions (PAD included) and real tokens of every rank, per second
        "tokens_per_s": window.positions * env.world_size / max(elapsed, 1e-9),
        "real_tokens_per_s": real_tokens * env.world_size / max(elapsed, 1e-9),
        "s_per_step": elapsed / steps,
        "eta_s": (cfg.train.steps - step) * elapsed / steps, "time": time.time(), "total_steps": cfg.train.steps,
    }
    if env.device.type == "cuda":  # allocator statistics: no device sync
        record["max_memory_gib"] = torch.cuda.max_memory_allocated(env.device) / 2**30
    return record


def write_log(outdir: Path, record: dict) -> None:
    with open(outdir / TRAIN_LOG, "a") as f:
        f.write(json.dumps(record) + "\n")
    atomic.write_json(outdir / HEARTBEAT, record)
    shown = " ".join(f"{k} {v:.4f}" for k, v in record["terms"].items())
    print(f"[train] step {record['step']}/{record['total_steps']} loss {record['loss']:.4f} ({shown}) "
          f"{record['tokens_per_s']:,.0f} positions/s, {record['real_tokens_per_s']:,.0f} real tokens/s", flush=True)
