"""Throughput benchmark of the QQP recipe: prints one JSON object.

    python -m diffusion.bench [--layers 12 --hidden 768 ...] [--tiny]          # 1 process
    torchrun --nproc_per_node N -m diffusion.bench --zero-stage 2              # N ranks

Measures, on random token ids of full length (as DiffuSeq's own figures were taken):
- train: tokens/s of full DeepSpeed steps (batch_size sequences per rank in micro-batches),
  achieved TFLOP/s (6 x parameters x tokens) and its share of --peak-tflops;
- sample: sentences/s of reverse steps with per-step rounding, extrapolated to T steps;
- peak GPU memory of each.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch

from . import distributed
from .config import Config, DiffusionConfig, ModelConfig, TrainConfig
from .model import Denoiser, count_parameters
from .objective import DiffusionObjective
from .sampling import sample_tokens
from .schedule import Schedule
from .timesteps import make_sampler
from .train import deepspeed_config, uses_bf16


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(cfg: Config, env, steps: int, warmup: int, profile: bool = False) -> dict:
    import deepspeed

    torch.manual_seed(0)
    schedule = Schedule.named(cfg.diffusion.schedule, cfg.diffusion.steps)
    objective = DiffusionObjective(Denoiser(cfg.model), schedule, cfg.diffusion.noising,
                                   autocast_dtype=torch.bfloat16 if uses_bf16(cfg, env.device) else None)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4, fused=cfg.train.fused_optimizer and env.device.type == "cuda")
    engine, *_ = deepspeed.initialize(model=objective, optimizer=optimizer, config=deepspeed_config(cfg, env.world_size))
    sampler = make_sampler(cfg.diffusion.timestep_sampler, schedule.num_steps, env.device)
    tc, L = cfg.train, cfg.data.seq_len
    accumulation = tc.batch_size // tc.micro_batch_size
    ids = torch.randint(4, cfg.model.vocab_size, (tc.micro_batch_size, L), device=env.device)
    mask = torch.zeros_like(ids)
    mask[:, L // 2 :] = 1

    def step():
        for _ in range(accumulation):
            t, w = sampler.sample(ids.shape[0])
            terms = engine(ids, mask, t)
            sampler.update(t, terms["loss"])
            engine.backward((terms["loss"] * w).mean())
            engine.step()

    for _ in range(warmup):
        step()
    sync(env.device)
    if profile and env.is_main:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            sync(env.device)
        for key in ("self_cuda_time_total", "self_cpu_time_total"):
            print(prof.key_averages().table(sort_by=key, row_limit=12), flush=True)
    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(env.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(env.device)
    seconds = (time.perf_counter() - start) / steps
    tokens_per_s = tc.batch_size * L / seconds  # per rank
    return {"s_per_step": seconds, "tokens_per_s_per_gpu": tokens_per_s,
            "tokens_per_s_total": tokens_per_s * env.world_size,
            "tflops_per_gpu": 6 * count_parameters(objective) * tokens_per_s / 1e12,
            "peak_memory_gib": torch.cuda.max_memory_allocated(env.device) / 2**30 if env.device.type == "cuda" else None}


@torch.no_grad()
def bench_sample(cfg: Config, device, batch: int, steps: int, total_steps: int) -> dict:
    torch.manual_seed(0)
    denoiser = Denoiser(cfg.model).to(device).eval()
    L = cfg.data.seq_len
    ids = torch.randint(4, cfg.model.vocab_size, (batch, L), device=device)
    mask = torch.zeros_like(ids)
    mask[:, L // 2 :] = 1
    # a schedule of `steps` steps costs the same per step as the full one
    schedule = Schedule.named(cfg.diffusion.schedule, cfg.diffusion.steps).respaced(steps)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with autocast:
        sample_tokens(denoiser, schedule.respaced(2), ids, mask)  # warm-up
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with autocast:
        sample_tokens(denoiser, schedule, ids, mask)
    sync(device)
    per_step = (time.perf_counter() - start) / schedule.num_steps
    return {"batch": batch, "s_per_reverse_step": per_step,
            "sentences_per_s_at_T": batch / (per_step * total_steps), "T": total_steps,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m diffusion.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny model (CI checks that the benchmark runs)")
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=64)
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--fused-optimizer", action="store_true")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--sample-batch", type=int, default=512)
    p.add_argument("--sample-steps", type=int, default=20, help="reverse steps timed (extrapolated to T)")
    p.add_argument("--peak-tflops", type=float, default=800.0, help="bf16 dense peak of the card, for the share")
    p.add_argument("--skip-sample", action="store_true")
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables of one training step")
    args = p.parse_args(argv)
    model = ModelConfig(vocab_size=args.vocab)
    if args.tiny:
        model = ModelConfig(vocab_size=200, embed_dim=16, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64)
    cfg = Config(model=model, diffusion=DiffusionConfig(),
                 train=TrainConfig(batch_size=args.batch_size, micro_batch_size=args.micro_batch,
                                   zero_stage=args.zero_stage, precision=args.precision,
                                   fused_optimizer=args.fused_optimizer))
    env = distributed.setup()
    result = {"device": torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu",
              "world_size": env.world_size, "zero_stage": args.zero_stage, "torch": torch.__version__,
              "parameters": count_parameters(Denoiser(model)), "precision": "bf16" if uses_bf16(cfg, env.device) else "fp32",
              "batch_size_per_gpu": args.batch_size, "micro_batch": args.micro_batch, "seq_len": cfg.data.seq_len}
    result["train"] = bench_train(cfg, env, args.steps, args.warmup, args.profile)
    result["train"]["share_of_peak"] = result["train"]["tflops_per_gpu"] / args.peak_tflops
    if env.is_main and not args.skip_sample:
        result["sample"] = bench_sample(cfg, env.device, args.sample_batch, args.sample_steps, cfg.diffusion.steps)
    distributed.barrier()
    if env.is_main:
        print(json.dumps(result), flush=True)
    distributed.teardown()


if __name__ == "__main__":
    main()
