"""Small configs and a subprocess runner shared by the library tests."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def decoding(**keys):
    """A checked Config whose diffusion and sample sections hold these keys (each goes to the
    section that has it): what `sample_tokens` reads."""
    import dataclasses

    from diffusion.config import Config, DataConfig, DiffusionConfig, SampleConfig, checked, from_dict

    names = {f.name for f in dataclasses.fields(DiffusionConfig)}
    diffusion = from_dict(DiffusionConfig, {k: v for k, v in keys.items() if k in names}, "diffusion")
    sample = from_dict(SampleConfig, {k: v for k, v in keys.items() if k not in names}, "sample")
    return checked(Config(data=DataConfig(synthetic_pairs=1), diffusion=diffusion, sample=sample), nested=False)


def tiny_config(train_path, **train) -> dict:
    """A model small enough to train a few hundred steps in seconds on 2 cores."""
    return {
        "data": {"train": str(train_path), "vocab_size": 400, "seq_len": 32},
        "model": {"embed_dim": 16, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "ffn_size": 128,
                  "max_positions": 32, "dropout": 0.0},
        "diffusion": {"steps": 100},
        "train": {"steps": 20, "batch_size": 32, "micro_batch_size": 16, "lr": 0.002, "save_every": 10,
                  "log_every": 1, "zero_stage": 2, "ema_rate": 0.9, **train},
        "sample": {"batch_size": 100},
    }


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_module(module: str, *args, nproc: int = 1, timeout: int = 300) -> list[dict]:
    """Run `python -m module args` (under torchrun when nproc > 1); the JSON lines it printed."""
    log_dir = Path(tempfile.mkdtemp(prefix="torchrun-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1" if nproc > 1 else "2", "PYTHONPATH": str(REPO)}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               # each rank's output to its own file: lines of two ranks sharing a pipe can interleave
               "--redirects", "3", "--log-dir", str(log_dir),
               "-m", module, *map(str, args)]
    else:
        cmd = [sys.executable, "-m", module, *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    outputs = [proc.stdout] + [p.read_text() for p in sorted(log_dir.rglob("std*.log"))]
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n" + "\n".join(o[-4000:] for o in outputs) + proc.stderr[-4000:]
    return [json.loads(line) for out in outputs for line in out.splitlines() if line.startswith("{")]


def read_log(outdir: Path) -> list[dict]:
    return [json.loads(line) for line in (outdir / "train_log.jsonl").read_text().splitlines()]


def slurm_is_up() -> bool:
    """A local Slurm answers and its node takes jobs (busy counts: alloc, mix, completing)."""
    import shutil

    if not shutil.which("sinfo"):
        return False
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip()
    return state in ("idle", "mix", "alloc", "comp")


# The tiers (`make test-fast` leaves out integration and slurm): integration tests spawn the CLI,
# a trainer or a job; slurm tests need the real local Slurm (env/local-slurm.sh), and skip,
# saying so, where there is none.
integration = pytest.mark.integration
needs_slurm = [pytest.mark.slurm, pytest.mark.skipif(not slurm_is_up(), reason="no local Slurm: run "
                                                       "`bash env/local-slurm.sh up` as root")]


def slurm_test(test):
    for mark in needs_slurm:
        test = mark(test)
    return test


def tiny_denoiser(**kw):
    """An untrained denoiser of a few thousand parameters over a vocabulary of 60."""
    import torch

    from diffusion.config import ModelConfig
    from diffusion.model import Denoiser

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=60, embed_dim=16, hidden_size=32, num_layers=1, num_heads=2, ffn_size=64,
                      max_positions=24, dropout=0.0, **kw)
    return Denoiser(cfg).eval()


class Recorder:
    """Wraps a denoiser and records the `previous_z_0` of every call and what the call returned,
    and in `z_t` the state each call was handed."""

    def __init__(self, denoiser):
        self.denoiser, self.calls, self.z_t = denoiser, [], []
        self.original = denoiser.forward

        def forward(z_t, t, previous_z_0=None, **kw):
            out = self.original(z_t, t, previous_z_0, **kw)
            self.calls.append((None if previous_z_0 is None else previous_z_0.clone(), out.detach().clone()))
            self.z_t.append(z_t.detach().clone())
            return out
        denoiser.forward = forward


def small_batch():
    """Six sequences of 24: source positions 0-9, target 10-23."""
    import torch

    torch.manual_seed(1)
    ids = torch.randint(4, 60, (6, 24))
    mask = torch.zeros(6, 24, dtype=torch.long)
    mask[:, 10:] = 1
    return ids, mask
