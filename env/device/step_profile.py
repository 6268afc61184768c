"""Where a training step of a recipe spends its time, and what the step's bookkeeping costs.

    python env/device/step_profile.py SPEC [--set KEY=VALUE ...] [--steps 100] [--rounds 4]

Builds SPEC's training exactly as `diffusion.train` does (engine, EMA, timestep sampler, the real
data in the recipe's batches), then times segments of `--steps` optimizer steps, the variants
taking turns (ABCD ABCD ...) so that the card's drift between calls and within one falls on all
of them alike. On one rank at ZeRO-0 (the budget recipe):
- `shipped`: the trainer as it is: it clips the gradients itself (torch's `clip_grad_norm_`,
  fused over the tensors) and skips DeepSpeed's all-reduce of one rank;
- `deepspeed_clip`: DeepSpeed clips instead (a norm and a multiply launched per parameter, two
  scalars copied to the card, each copy waiting for it), as before 2026-12-03;
- `deepspeed_allreduce`: DeepSpeed's all-reduce over the one rank again (every gradient
  flattened, reduced, copied back per parameter);
- `deepspeed_both`: the trainer as it was.
Then a torch.profiler trace of a few steps of `shipped` and `deepspeed_both`: the time the card
was busy a step beside the wall time, the kernel launches, and the kernels that take the time.
Prints JSON lines and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from diffusion import distributed  # noqa: E402
from diffusion.batches import BatchStream  # noqa: E402
from diffusion.bench import sync  # noqa: E402
from diffusion.data import load_encoded, sequence_widths  # noqa: E402
from diffusion.train import build, load_data, train_step  # noqa: E402
from diffusion.train_log import LossWindow  # noqa: E402
from pipeline.spec import load_spec  # noqa: E402


def patch(run, variant: str, grad_clip: float) -> None:
    """Put `variant`'s bookkeeping into the training (undoing the previous variant's)."""
    deepspeed_clip = variant in ("deepspeed_clip", "deepspeed_both")
    run.clip_norm = 0.0 if deepspeed_clip else grad_clip
    run.engine._config.gradient_clipping = grad_clip if deepspeed_clip else 0.0
    run.engine.enable_backward_allreduce = variant in ("deepspeed_allreduce", "deepspeed_both")


def segment(run, batches, steps: int, device) -> dict:
    """`steps` optimizer steps as the trainer's loop takes them (log window, EMA), timed to the card."""
    window = LossWindow(device)
    sync(device)
    start = time.monotonic()
    for _ in range(steps):
        for terms, ids in train_step(run, batches.next, 1):
            window.add(terms, ids)
        run.ema.update(1000)
    _, real = window.means()
    sync(device)
    seconds = time.monotonic() - start
    return {"s_per_step": seconds / steps, "positions_per_s": window.positions / seconds,
            "real_tokens_per_s": real / seconds}


def profile(run, batches, steps: int, device) -> dict:
    from torch.profiler import ProfilerActivity, profile as torch_profile
    sync(device)
    start = time.monotonic()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            train_step(run, batches.next, 1)
            run.ema.update(1000)
        sync(device)
    wall = time.monotonic() - start
    events = prof.key_averages()
    kernels = [e for e in events if str(e.device_type).endswith("CUDA")]  # kernels, copies, memsets
    busy_us = sum(e.self_device_time_total for e in kernels)
    top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:12]
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    return {"wall_ms_per_step": 1e3 * wall / steps, "device_busy_ms_per_step": busy_us / 1e3 / steps,
            "kernel_launches_per_step": launches / steps, "distinct_kernels": len(kernels),
            "top": [(e.key[:70], round(e.self_device_time_total / 1e3 / steps, 3), e.count // steps) for e in top]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps a timed segment")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=60, help="untimed steps first (compiles)")
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--workdir", default="/tmp/step_profile")
    args = parser.parse_args()

    cfg = load_spec(args.spec, args.set).library_config()
    env = distributed.setup(False)
    if cfg.train.zero_stage != 0 or env.world_size != 1:
        raise SystemExit("step_profile compares the bookkeeping of one rank at ZeRO-0 (train.zero_stage: 0)")
    workdir = Path(args.workdir)
    data_dir, cfg = load_data(cfg, workdir, workdir / "data", env)
    if cfg.train.batch_size != cfg.train.micro_batch_size:
        raise SystemExit("step_profile times one micro-batch a step (batch_size == micro_batch_size)")
    run = build(cfg, env)
    ids, mask = load_encoded(data_dir / "train.pt")
    widths = sequence_widths(mask, cfg.data) if cfg.data.trim else None
    batches = BatchStream(ids, mask, cfg.train.micro_batch_size, 0, 1, cfg.train.seed, env.device, widths)
    run.engine.train()
    print(json.dumps({"card": torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu", "spec": args.spec, "sets": args.set,
                      "grad_clip": cfg.train.grad_clip, "zero_stage": cfg.train.zero_stage}), flush=True)

    variants = ["shipped", "deepspeed_clip", "deepspeed_allreduce", "deepspeed_both"]
    start = time.monotonic()
    for variant in variants:  # every variant's path compiled and warm before timing
        patch(run, variant, cfg.train.grad_clip)
        segment(run, batches, args.warmup // len(variants) + 1, env.device)
    print(json.dumps({"warmup_s": round(time.monotonic() - start, 1)}), flush=True)

    results = {v: [] for v in variants}
    for r in range(args.rounds):
        for variant in variants:
            patch(run, variant, cfg.train.grad_clip)
            row = segment(run, batches, args.steps, env.device)
            results[variant].append(row)
            print(json.dumps({"round": r, "variant": variant, **{k: round(v, 5) for k, v in row.items()}}), flush=True)

    print("| variant | ms a step (median) | positions/s (median) | real tokens/s (median) | vs shipped |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = statistics.median(x["real_tokens_per_s"] for x in results["shipped"])
    for variant, rows in results.items():
        real = statistics.median(x["real_tokens_per_s"] for x in rows)
        print(f"| {variant} | {1e3 * statistics.median(x['s_per_step'] for x in rows):.2f} | "
              f"{statistics.median(x['positions_per_s'] for x in rows):,.0f} | {real:,.0f} | {real / base - 1:+.1%} |")

    for variant in ("shipped", "deepspeed_both"):
        patch(run, variant, cfg.train.grad_clip)
        print(json.dumps({"profile": variant, **profile(run, batches, args.profile_steps, env.device)}), flush=True)
    distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
