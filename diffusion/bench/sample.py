"""Sampling throughput: `python -m diffusion.bench sample` (the package doc says how to call it).

Reverse steps of DiffuSeq's decoding (target noising, DDPM, L2 rounding at every step) on random
full-length token ids: sentences/s extrapolated to T steps, the time of the rounding alone, how
often the rounding picks what fp32 scores pick, how far bf16 weights move the denoiser's output,
and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import copy
import time
from contextlib import nullcontext

import torch

from ..config import Config
from ..model import Denoiser
from ..sampling import _fused_rounding_available, nearest_embedding, sample_tokens
from ..schedule import Schedule
from .common import model_config, peak_memory_gib, profiler, random_batch, reset_peak_memory, sync

DIFFUSEQ_SAMPLING = Config()  # what the sampling benchmark decodes with: target noising, DDPM, L2 rounding


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample-batch", type=int, default=2048)
    parser.add_argument("--sample-steps", type=int, default=20, help="reverse steps timed (extrapolated to T)")
    parser.add_argument("--sample-weights", default="bf16", choices=["fp32", "bf16"],
                        help="GPU: bf16 weights (diffusion.sample's default), or fp32 weights under bf16 autocast")
    parser.add_argument("--gelu-epilogue", action=argparse.BooleanOptionalAction, default=True,
                        help="sampling with bf16 weights: bias + GELU inside the matmul (cuBLASLt)")


def config(args: argparse.Namespace) -> Config:
    """The model of the options, DiffuSeq's diffusion (T) and sequence length."""
    return Config(model=model_config(args))


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
    input_ids, input_mask = random_batch(cfg.model.vocab_size, batch, L, device)
    # a schedule of `steps` steps costs the same per step as the full one
    schedule = Schedule.named(cfg.diffusion.schedule, cfg.diffusion.steps).respaced(steps)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else nullcontext()
    start = time.perf_counter()
    with autocast:  # a warm-up (and the compilation)
        sample_tokens(denoiser, schedule.respaced(2), input_ids, input_mask, DIFFUSEQ_SAMPLING)
    sync(device)
    warmup_s = time.perf_counter() - start
    reset_peak_memory(device)
    start = time.perf_counter()
    with autocast:
        sample_tokens(denoiser, schedule, input_ids, input_mask, DIFFUSEQ_SAMPLING)
    sync(device)
    per_step = (time.perf_counter() - start) / schedule.num_steps
    if profile:
        with profiler(device) as prof, autocast:
            sample_tokens(denoiser, schedule.respaced(2), input_ids, input_mask, DIFFUSEQ_SAMPLING)
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
    near = embedding[input_ids[:256]] + 0.1 * torch.randn(min(batch, 256), L, cfg.model.embed_dim, device=device)
    agreement = {name: (nearest_embedding(x, embedding) == nearest_embedding(x, embedding, fused=False)).float()
                 .mean().item() for name, x in (("near", near), ("random", z[:256]))}
    return {"batch": batch, "weights": weights, "compiled": compile and device.type == "cuda", "inductor": inductor,
            "gelu_epilogue": any(layer.gelu_epilogue for layer in denoiser.layers), "fidelity": fidelity,
            "s_per_reverse_step": per_step, "s_rounding_per_step": rounding,
            "rounding_fused": device.type == "cuda" and _fused_rounding_available(cfg.model.embed_dim),
            "rounding_agreement_with_fp32": agreement,
            "sentences_per_s_at_T": batch / (per_step * total_steps), "T": total_steps,
            "warmup_s": warmup_s, "peak_memory_gib": peak_memory_gib(device)}


def measure(args: argparse.Namespace, cfg: Config, device: torch.device) -> dict:
    return bench_sample(cfg, device, args.sample_batch, args.sample_steps, cfg.diffusion.steps, args.compile,
                        args.sample_weights, args.inductor, args.profile, args.gelu_epilogue)
