"""Train throughput of a recipe: `python -m diffusion.bench train` (the package doc says how to call it).

Full DeepSpeed steps, as `diffusion.train` builds and takes them (batch_size sequences per rank in
micro-batches, the EMA update aside), on one fixed micro-batch of random full-length token ids:
tokens/s, achieved TFLOP/s (6 x parameters x tokens) and its share of --peak-tflops and of the
bf16 matmul peak measured on this card, and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from .. import objective as objective_module
from ..config import Config, DiffusionConfig, TrainConfig
from ..train import build, deepspeed_config, train_step, uses_bf16, uses_compile
from .common import model_config, peak_memory_gib, profiler, random_batch, reset_peak_memory, sync


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=2048, help="sequences a step, per rank")
    parser.add_argument("--micro-batch", type=int, default=512)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--zero", type=json.loads, default={}, metavar="JSON",
                        help='extra DeepSpeed zero_optimization keys, e.g. \'{"reduce_scatter": false}\'')
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--fused-optimizer", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--fallback-random", action=argparse.BooleanOptionalAction,
                        default=objective_module.COMPILE_OPTIONS["fallback_random"],
                        help="dropout RNG of the compiled loss")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps timed")
    parser.add_argument("--warmup", type=int, default=1, help="steps after the first (compiling) one, before timing")
    parser.add_argument("--peak-tflops", type=float, default=800.0, help="bf16 dense peak of the card, for the share")


def config(args: argparse.Namespace) -> Config:
    """The recipe measured: the model of the options, DiffuSeq's diffusion and data, their training."""
    return Config(model=model_config(args), diffusion=DiffusionConfig(),
                  train=TrainConfig(batch_size=args.batch_size, micro_batch_size=args.micro_batch,
                                    zero_stage=args.zero_stage, precision=args.precision,
                                    fused_optimizer=args.fused_optimizer, compile=args.compile))


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 30) -> float | None:
    """bf16 dense matmul TFLOP/s this card reaches (the 'measured peak')."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(5):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def header(cfg: Config, env) -> dict:
    """What the train figures were taken with, and the card's measured matmul peak."""
    return {"zero_stage": cfg.train.zero_stage, "precision": "bf16" if uses_bf16(cfg, env.device) else "fp32",
            "batch_size_per_gpu": cfg.train.batch_size, "micro_batch": cfg.train.micro_batch_size,
            "measured_bf16_matmul_tflops": matmul_tflops(env.device)}


def profile_summary(prof) -> dict:
    """Counts of the host-side calls that stall a step (syncs, copies) in one profiled step."""
    counts = {}
    for event in prof.key_averages():
        if any(key in event.key for key in ("Synchronize", "cudaMemcpy", "ncclDevKernel", "aten::item")):
            counts[event.key] = {"calls": event.count, "host_ms": event.cpu_time_total / 1e3}
    return counts


def bench_train(cfg: Config, env, steps: int, warmup: int, zero_overrides: dict, profile: bool = False) -> dict:
    run = build(cfg, env, zero_overrides)  # what diffusion.train builds, with the ZeRO variant asked for
    tc, L = cfg.train, cfg.data.seq_len
    accumulation = tc.batch_size // tc.micro_batch_size
    input_ids, input_mask = random_batch(cfg.model.vocab_size, tc.micro_batch_size, L, env.device)
    loss_sum = torch.zeros((), device=env.device)

    def step():  # diffusion.train's step, on one fixed micro-batch (the EMA update aside)
        for terms, _ in train_step(run, lambda: (input_ids, input_mask), accumulation):
            loss_sum.add_(terms["loss"].detach().mean())

    start = time.perf_counter()
    step()  # the first step compiles
    sync(env.device)
    first_step_s = time.perf_counter() - start
    for _ in range(warmup):
        step()
    sync(env.device)
    result = {}
    if profile:
        with profiler(env.device) as prof:
            step()
            sync(env.device)
        result["profile"] = profile_summary(prof)
        if env.is_main:
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25), flush=True)
    reset_peak_memory(env.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(env.device)
    seconds = (time.perf_counter() - start) / steps
    tokens_per_s = tc.batch_size * L / seconds  # per rank
    compiled = uses_compile(cfg, env.device)
    return {"s_per_step": seconds, "tokens_per_s_per_gpu": tokens_per_s,
            "tokens_per_s_total": tokens_per_s * env.world_size,
            "tflops_per_gpu": 6 * run.n_parameters * tokens_per_s / 1e12,
            "peak_memory_gib": peak_memory_gib(env.device),
            "first_step_s": first_step_s, "compiled": compiled,
            "compile_options": objective_module.COMPILE_OPTIONS if compiled else None,
            "fused_optimizer": cfg.train.fused_optimizer and env.device.type == "cuda",
            "zero_optimization": deepspeed_config(cfg, env.world_size)["zero_optimization"] | zero_overrides,
            "loss": loss_sum.item() / ((1 + warmup + steps) * accumulation), **result}


def measure(args: argparse.Namespace, cfg: Config, env, measured_peak: float | None) -> dict:
    """bench_train with the options' compile settings, and the shares of the peaks."""
    objective_module.COMPILE_OPTIONS["fallback_random"] = args.fallback_random
    objective_module.COMPILE_OPTIONS.update(args.inductor)
    train = bench_train(cfg, env, args.steps, args.warmup, args.zero, args.profile)
    train["share_of_peak"] = train["tflops_per_gpu"] / args.peak_tflops
    train["share_of_measured_peak"] = train["tflops_per_gpu"] / measured_peak if measured_peak else None
    return train
