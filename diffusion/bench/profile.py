"""Where a training step of a recipe spends its time, and what the step's bookkeeping costs:
`python -m diffusion.bench profile SPEC` (the package doc says how to call it).

Builds SPEC's training exactly as `diffusion.train` does (engine, EMA, timestep sampler, the real
data in the recipe's batches), then times segments of `--steps` optimizer steps, the variants
taking turns (ABCD ABCD ...) so that the card's drift between calls and within one falls on all
of them alike. On one rank at ZeRO-0 (the budget recipe):
- `shipped`: the plain step (train.cuda_graphs off): the trainer clips the gradients itself
  (torch's `clip_grad_norm_`, fused over the tensors) and skips DeepSpeed's all-reduce of one rank;
- `graphed`: the same step replayed from CUDA graphs (train.cuda_graphs, graphs.py), a training
  of its own from the same initial weights and data order, so that its losses segment by segment
  sit beside `shipped`'s (the global random stream is shared, so the two draw different noise:
  the difference of their losses is a run-to-run spread);
- `deepspeed_clip`: DeepSpeed clips instead (a norm and a multiply launched per parameter, two
  scalars copied to the card, each copy waiting for it), as before 2026-12-03;
- `deepspeed_allreduce`: DeepSpeed's all-reduce over the one rank again (every gradient
  flattened, reduced, copied back per parameter);
- `deepspeed_both`: the trainer as it was.
The `deepspeed_*` variants patch `shipped`'s training (with train.grad_clip 0 nothing is clipped,
and `deepspeed_clip` is `shipped` again). `--variants` picks them (default: shipped,graphed).
Then, on a GPU, a torch.profiler trace of a few steps of each: the time the card was busy a step
beside the wall time, the kernel launches, and the kernels that take the time; on the CPU the
trace lines say they were skipped, and why.
Prints JSON lines and a markdown table of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from .. import distributed
from ..batches import BatchStream
from ..config import Config
from ..data import load_encoded, sequence_widths
from ..train import Training, build, load_data, stepper
from ..train_log import LossWindow
from .common import card_trace, device_name, sync

VARIANTS = ("shipped", "graphed", "deepspeed_clip", "deepspeed_allreduce", "deepspeed_both")


def spec_config(spec: str, overrides: list[str]) -> Config:
    """The library's part of a pipeline job spec (its bases, site profile and --set overrides
    resolved as `pipeline submit` resolves them)."""
    from pipeline.spec import load_spec  # here, not at the top: the library does not need the pipeline

    return load_spec(spec, overrides).library_config()


def patch(run: Training, variant: str, grad_clip: float) -> None:
    """Put `variant`'s bookkeeping into the plain training (undoing the previous variant's)."""
    deepspeed_clip = variant in ("deepspeed_clip", "deepspeed_both")
    run.clip_norm = 0.0 if deepspeed_clip else grad_clip
    run.engine._config.gradient_clipping = grad_clip if deepspeed_clip else 0.0
    run.engine.enable_backward_allreduce = variant in ("deepspeed_allreduce", "deepspeed_both")


@dataclass
class Trainer:
    """One training the variants step: its engine, data, log window and step function."""

    run: Training
    window: LossWindow
    step: Callable[[], None]


def trainer(cfg: Config, data_dir: Path, env, graphs: bool) -> Trainer:
    """SPEC's training as diffusion.train builds it, with train.cuda_graphs set to `graphs`."""
    cfg = replace(cfg, train=replace(cfg.train, cuda_graphs=graphs))
    run = build(cfg, env)
    input_ids, input_mask = load_encoded(data_dir / "train.pt")
    widths = sequence_widths(input_mask, cfg.data) if cfg.data.trim else None
    batches = BatchStream(input_ids, input_mask, cfg.train.micro_batch_size, 0, 1, cfg.train.seed, env.device, widths)
    run.engine.train()
    window = LossWindow(env.device)
    return Trainer(run, window, stepper(run, batches, window, cfg, env))


def segment(trainer: Trainer, steps: int, device: torch.device) -> dict:
    """`steps` optimizer steps as the trainer's loop takes them (log window, EMA), timed to the card."""
    trainer.window.reset()
    sync(device)
    start = time.monotonic()
    for _ in range(steps):
        trainer.step()
        trainer.run.ema.update(1000)
    terms, real_tokens = trainer.window.means()
    sync(device)
    seconds = time.monotonic() - start
    return {"s_per_step": seconds / steps, "positions_per_s": trainer.window.positions / seconds,
            "real_tokens_per_s": real_tokens / seconds, "loss": terms["loss"]}


def trace(trainer: Trainer, steps: int, device: torch.device) -> dict:
    """The card's side of `steps` steps: busy time beside wall time, kernel launches, top kernels."""
    def work() -> None:
        for _ in range(steps):
            trainer.step()
            trainer.run.ema.update(1000)
    return card_trace(work, device, steps, "step")


def markdown_table(results: dict[str, list[dict]]) -> str:
    """Medians over the rounds of each variant, and its real tokens/s against the first variant's."""
    first = next(iter(results))
    lines = ["| variant | ms a step (median) | positions/s (median) | real tokens/s (median) | vs " + first + " |",
             "| --- | ---: | ---: | ---: | ---: |"]
    base = statistics.median(row["real_tokens_per_s"] for row in results[first])
    for variant, rows in results.items():
        real = statistics.median(row["real_tokens_per_s"] for row in rows)
        lines.append(f"| {variant} | {1e3 * statistics.median(row['s_per_step'] for row in rows):.2f} | "
                     f"{statistics.median(row['positions_per_s'] for row in rows):,.0f} | {real:,.0f} | "
                     f"{real / base - 1:+.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.bench profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="a pipeline job spec, e.g. jobs/qqp_fast_target.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as `pipeline submit --set`")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps a timed segment")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=100, help="untimed steps of each variant first (compiles, captures)")
    parser.add_argument("--variants", default="shipped,graphed", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--profile-steps", type=int, default=10, help="steps of each traced variant (GPU only)")
    parser.add_argument("--workdir", default="/tmp/step_profile", help="where the spec's data is prepared")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    if not variants or set(variants) - set(VARIANTS):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}, got {args.variants!r}")

    cfg = spec_config(args.spec, args.set)
    env = distributed.setup(False)
    if cfg.train.zero_stage != 0 or env.world_size != 1:
        raise SystemExit("profile compares the bookkeeping of one rank at ZeRO-0 (train.zero_stage: 0)")
    workdir = Path(args.workdir)
    data_dir, cfg = load_data(cfg, workdir, workdir / "data", env)
    if cfg.train.batch_size != cfg.train.micro_batch_size:
        raise SystemExit("profile times one micro-batch a step (batch_size == micro_batch_size)")
    plain = trainer(cfg, data_dir, env, graphs=False) if set(variants) - {"graphed"} else None
    trainers = {v: trainer(cfg, data_dir, env, graphs=True) if v == "graphed" else plain for v in variants}
    print(json.dumps({"device": device_name(env.device), "torch": torch.__version__, "spec": args.spec, "sets": args.set,
                      "grad_clip": cfg.train.grad_clip, "zero_stage": cfg.train.zero_stage}), flush=True)

    def take_turn(variant: str, steps: int) -> dict:
        if variant != "graphed":
            patch(plain.run, variant, cfg.train.grad_clip)
        return segment(trainers[variant], steps, env.device)

    start = time.monotonic()
    for variant in variants if args.warmup > 0 else ():  # every variant's path compiled (and captured) before timing
        take_turn(variant, args.warmup)
    print(json.dumps({"warmup_s": round(time.monotonic() - start, 1)}), flush=True)

    results = {variant: [] for variant in variants}
    for r in range(args.rounds):
        for variant in variants:
            row = take_turn(variant, args.steps)
            results[variant].append(row)
            print(json.dumps({"round": r, "variant": variant, **{k: round(v, 5) for k, v in row.items()}}), flush=True)
    print(markdown_table(results), flush=True)

    for variant in variants:
        if variant != "graphed":
            patch(plain.run, variant, cfg.train.grad_clip)
        print(json.dumps({"profile": variant, **trace(trainers[variant], args.profile_steps, env.device)}), flush=True)
    distributed.teardown()
    return 0
