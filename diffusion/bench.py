"""Throughput benchmark of the QQP recipe: prints one JSON object.

    python -m diffusion.bench [--micro-batch 512 --no-compile ...] [--tiny]     # 1 process
    torchrun --nproc_per_node N -m diffusion.bench --zero-stage 2              # N ranks

Measures, on random token ids of full length (as DiffuSeq's own figures were taken):
- train: tokens/s of full DeepSpeed steps (batch_size sequences per rank in micro-batches),
  achieved TFLOP/s (6 x parameters x tokens) and its share of --peak-tflops and of the bf16
  matmul peak measured on this card;
- sample: sentences/s of reverse steps with per-step rounding, extrapolated to T steps, and the
  time of the rounding alone;
- peak GPU memory of each.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from contextlib import nullcontext

import torch

from . import distributed, objective as objective_module
from .config import Config, DiffusionConfig, ModelConfig, TrainConfig
from .model import Denoiser, count_parameters
from .sampling import _fused_rounding_available, nearest_embedding, sample_tokens
from .schedule import Schedule
from .train import build, deepspeed_config, train_step, uses_bf16, uses_compile

DIFFUSEQ_SAMPLING = Config()  # what the sampling benchmark decodes with: target noising, DDPM, L2 rounding


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def matmul_tflops(device, n: int = 8192, reps: int = 30) -> float | None:
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
    ids = torch.randint(4, cfg.model.vocab_size, (tc.micro_batch_size, L), device=env.device)
    mask = torch.zeros_like(ids)
    mask[:, L // 2 :] = 1
    loss_sum = torch.zeros((), device=env.device)

    def step():  # diffusion.train's step, on one fixed micro-batch (the EMA update aside)
        for terms, _ in train_step(run, lambda: (ids, mask), accumulation):
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
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            sync(env.device)
        result["profile"] = profile_summary(prof)
        if env.is_main:
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25), flush=True)
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
            "tflops_per_gpu": 6 * run.n_parameters * tokens_per_s / 1e12, "peak_memory_gib": peak_memory_gib(env.device),
            "first_step_s": first_step_s, "compiled": uses_compile(cfg, env.device),
            "compile_options": objective_module.COMPILE_OPTIONS if uses_compile(cfg, env.device) else None,
            "fused_optimizer": cfg.train.fused_optimizer and env.device.type == "cuda",
            "zero_optimization": deepspeed_config(cfg, env.world_size)["zero_optimization"] | zero_overrides,
            "loss": loss_sum.item() / ((1 + warmup + steps) * accumulation), **result}


@torch.no_grad()
def denoiser_fidelity(denoiser: Denoiser, length: int, batch: int = 64) -> dict:
    """Relative error (|out - fp32 out| / |fp32 out|) of the denoiser's prediction with bf16 weights,
    exact GELU and GELU in the matmul epilogue, on N(0, 1) inputs at random timesteps."""
    device = next(denoiser.parameters()).device
    z = torch.randn(batch, length, denoiser.cfg.embed_dim, device=device)
    t = torch.randint(0, 2000, (batch,), device=device).float()
    reference = denoiser(z, t)
    bf16 = copy.deepcopy(denoiser).to(torch.bfloat16)
    errors = {}
    for name, on in (("bf16_exact_gelu", False), ("bf16_gelu_epilogue", True)):
        bf16.use_gelu_epilogue(on)
        errors[name] = ((bf16(z, t).float() - reference).norm() / reference.norm()).item()
    return errors


@torch.no_grad()
def bench_sample(cfg: Config, device, batch: int, steps: int, total_steps: int, compile: bool, weights: str,
                 inductor: dict | None = None, profile: bool = False, gelu_epilogue: bool = True) -> dict:
    """Reverse steps with rounding at every step. weights: fp32 under bf16 autocast, or bf16 (no autocast)."""
    torch.manual_seed(0)
    denoiser = Denoiser(cfg.model).to(device).eval()
    weights = weights if device.type == "cuda" else "fp32"  # as diffusion.sample: the CPU samples in fp32
    use_autocast = device.type == "cuda" and weights == "fp32"
    L = cfg.data.seq_len
    fidelity = denoiser_fidelity(denoiser, L) if device.type == "cuda" else None
    if weights == "bf16":
        denoiser = denoiser.to(torch.bfloat16)
        denoiser.use_gelu_epilogue(gelu_epilogue and device.type == "cuda")
    if compile and device.type == "cuda":
        denoiser.compile(options=inductor or None)
    ids = torch.randint(4, cfg.model.vocab_size, (batch, L), device=device)
    mask = torch.zeros_like(ids)
    mask[:, L // 2 :] = 1
    # a schedule of `steps` steps costs the same per step as the full one
    schedule = Schedule.named(cfg.diffusion.schedule, cfg.diffusion.steps).respaced(steps)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else nullcontext()
    start = time.perf_counter()
    with autocast:
        sample_tokens(denoiser, schedule.respaced(2), ids, mask, DIFFUSEQ_SAMPLING)  # warm-up (and compilation)
    sync(device)
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with autocast:
        sample_tokens(denoiser, schedule, ids, mask, DIFFUSEQ_SAMPLING)
    sync(device)
    per_step = (time.perf_counter() - start) / schedule.num_steps
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof, autocast:
            sample_tokens(denoiser, schedule.respaced(2), ids, mask, DIFFUSEQ_SAMPLING)
            sync(device)
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20), flush=True)
    # the rounding alone, on a prediction of the same shape
    z = torch.randn(batch, L, cfg.model.embed_dim, device=device)
    with autocast:
        nearest_embedding(z, denoiser.word_embedding.weight)
        sync(device)
        start = time.perf_counter()
        for _ in range(5):
            nearest_embedding(z, denoiser.word_embedding.weight)
        sync(device)
    rounding = (time.perf_counter() - start) / 5
    # the rounding's choices against fp32 scores (unfused torch), near the embeddings and far from them
    embedding = denoiser.word_embedding.weight.float()
    near = embedding[ids[:256]] + 0.1 * torch.randn(min(batch, 256), L, cfg.model.embed_dim, device=device)
    agreement = {f"{name}": (nearest_embedding(x, embedding) == nearest_embedding(x, embedding, fused=False)).float().mean().item()
                 for name, x in (("near", near), ("random", z[:256]))}
    return {"batch": batch, "weights": weights, "compiled": compile and device.type == "cuda", "inductor": inductor,
            "gelu_epilogue": any(layer.gelu_epilogue for layer in denoiser.layers), "fidelity": fidelity,
            "s_per_reverse_step": per_step, "s_rounding_per_step": rounding,
            "rounding_fused": device.type == "cuda" and _fused_rounding_available(cfg.model.embed_dim),
            "rounding_agreement_with_fp32": agreement,
            "sentences_per_s_at_T": batch / (per_step * total_steps), "T": total_steps,
            "warmup_s": warmup_s, "peak_memory_gib": peak_memory_gib(device)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m diffusion.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny model (CI checks that the benchmark runs)")
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=512)
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--zero", type=json.loads, default={}, metavar="JSON",
                   help='extra DeepSpeed zero_optimization keys, e.g. \'{"reduce_scatter": false}\'')
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--fused-optimizer", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile (GPU only)")
    p.add_argument("--fallback-random", action=argparse.BooleanOptionalAction,
                   default=objective_module.COMPILE_OPTIONS["fallback_random"], help="dropout RNG of the compiled loss")
    p.add_argument("--inductor", type=json.loads, default={}, metavar="JSON",
                   help='extra Inductor options for both compiles, e.g. \'{"max_autotune": true}\'')
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="steps after the first (compiling) one, before timing")
    p.add_argument("--sample-batch", type=int, default=2048)
    p.add_argument("--sample-steps", type=int, default=20, help="reverse steps timed (extrapolated to T)")
    p.add_argument("--sample-weights", default="bf16", choices=["fp32", "bf16"],
                   help="GPU: bf16 weights (diffusion.sample's default), or fp32 weights under bf16 autocast")
    p.add_argument("--gelu-epilogue", action=argparse.BooleanOptionalAction, default=True,
                   help="sampling with bf16 weights: bias + GELU inside the matmul (cuBLASLt)")
    p.add_argument("--peak-tflops", type=float, default=800.0, help="bf16 dense peak of the card, for the share")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-sample", action="store_true")
    p.add_argument("--profile", action="store_true", help="profile one training step (tables and sync counts) and two reverse steps")
    args = p.parse_args(argv)
    objective_module.COMPILE_OPTIONS["fallback_random"] = args.fallback_random
    objective_module.COMPILE_OPTIONS.update(args.inductor)
    model = ModelConfig(vocab_size=args.vocab)
    if args.tiny:
        model = ModelConfig(vocab_size=200, embed_dim=16, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64)
    cfg = Config(model=model, diffusion=DiffusionConfig(),
                 train=TrainConfig(batch_size=args.batch_size, micro_batch_size=args.micro_batch,
                                   zero_stage=args.zero_stage, precision=args.precision,
                                   fused_optimizer=args.fused_optimizer, compile=args.compile))
    env = distributed.setup()
    result = {"device": torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu",
              "world_size": env.world_size, "zero_stage": args.zero_stage, "torch": torch.__version__,
              "parameters": count_parameters(Denoiser(model)), "precision": "bf16" if uses_bf16(cfg, env.device) else "fp32",
              "batch_size_per_gpu": args.batch_size, "micro_batch": args.micro_batch, "seq_len": cfg.data.seq_len}
    measured_peak = matmul_tflops(env.device)
    result["measured_bf16_matmul_tflops"] = measured_peak
    if not args.skip_train:
        train = result["train"] = bench_train(cfg, env, args.steps, args.warmup, args.zero, args.profile)
        train["share_of_peak"] = train["tflops_per_gpu"] / args.peak_tflops
        train["share_of_measured_peak"] = train["tflops_per_gpu"] / measured_peak if measured_peak else None
    if env.is_main and not args.skip_sample:
        result["sample"] = bench_sample(cfg, env.device, args.sample_batch, args.sample_steps, cfg.diffusion.steps,
                                        args.compile, args.sample_weights, args.inductor, args.profile,
                                        args.gelu_epilogue)
    distributed.barrier()
    if env.is_main:
        print(json.dumps(result), flush=True)
    distributed.teardown()


if __name__ == "__main__":
    main()
