"""What the benchmarks share: the card's clock, name and memory, the profiler, the command-line
options of the recipe's model, and a batch of random full-length token ids."""

from __future__ import annotations

import argparse
import json
import time

import torch

from ..config import ModelConfig

TINY_MODEL = ModelConfig(vocab_size=200, embed_dim=16, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64)


def sync(device: torch.device) -> None:
    """Wait for the card, so that a host clock read after it covers the work queued before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """The most GPU memory allocated since the last reset (None on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def profiler(device: torch.device):
    """A torch.profiler context recording the host, and the card's kernels on a GPU."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    return profile(activities=activities)


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")  # the host's kernel launch calls


def card_trace(work, device: torch.device, repeats: int, unit: str) -> dict:
    """The card's side of `work()` (`repeats` units of `unit`, e.g. 10 steps), per unit: wall time
    beside the card's busy time, kernel launches, and the kernels that take the time (GPU only)."""
    if device.type != "cuda":
        return {"skipped": "the kernel trace needs a CUDA GPU (this run is on the CPU)"}
    sync(device)
    start = time.monotonic()
    with profiler(device) as prof:
        work()
        sync(device)
    wall = time.monotonic() - start
    events = prof.key_averages()
    kernels = [e for e in events if str(e.device_type).endswith("CUDA")]  # kernels, copies, memsets
    top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:12]
    return {f"wall_ms_per_{unit}": 1e3 * wall / repeats,
            f"device_busy_ms_per_{unit}": sum(e.self_device_time_total for e in kernels) / 1e3 / repeats,
            f"kernel_launches_per_{unit}": sum(e.count for e in events if e.key in LAUNCHES) / repeats,
            "distinct_kernels": len(kernels),
            "top": [(e.key[:70], round(e.self_device_time_total / 1e3 / repeats, 3), e.count // repeats) for e in top]}


def random_batch(vocab_size: int, batch: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids of full length (as DiffuSeq's own figures were taken) and the input mask
    of a source in the first half and a target in the second."""
    input_ids = torch.randint(4, vocab_size, (batch, length), device=device)
    input_mask = torch.zeros_like(input_ids)
    input_mask[:, length // 2 :] = 1
    return input_ids, input_mask


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both the train and the sample measurement read."""
    parser.add_argument("--tiny", action="store_true", help="a tiny model (CI checks that the benchmark runs)")
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.compile (GPU only)")
    parser.add_argument("--inductor", type=json.loads, default={}, metavar="JSON",
                        help='extra Inductor options for both compiles, e.g. \'{"max_autotune": true}\'')
    parser.add_argument("--profile", action="store_true",
                        help="profile one training step (a table; its syncs and copies in the JSON) and two reverse "
                             "steps (a table)")


def model_config(args: argparse.Namespace) -> ModelConfig:
    return TINY_MODEL if args.tiny else ModelConfig(vocab_size=args.vocab)
