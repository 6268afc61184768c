"""Training on DeepSpeed, readable top to bottom.

    python -m diffusion.train CONFIG OUTDIR [--data-dir DIR] [--stop-after STEP]
    torchrun --nproc_per_node N -m diffusion.train CONFIG OUTDIR

OUTDIR gets `checkpoints/step_NNNNNNN/` every `save_every` steps (see checkpoint.py),
`train_log.jsonl` and `heartbeat.json`. Re-running the same command resumes from the last
complete checkpoint; a finished run does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from . import atomic, checkpoint, distributed, lengths, locks
from .batches import BatchStream
from .manifest import DEEPSPEED_TAG, EXPORTED_MODEL, TOKENIZER, TRAIN_LOCK, TRAINER_BUSY, checkpoint_steps
from .config import Config, ConfigError, load_config, to_dict
from .data import load_encoded, load_tokenizer, sequence_widths, within_width
from .ema import EMA
from .graphs import GraphedStep
from .train_log import LossWindow, log_record, write_log
from .model import Denoiser, count_parameters
from .objective import DiffusionObjective
from .prepare import prepare
from .schedule import Schedule
from .timesteps import make_sampler


def trainer_clips(cfg: Config) -> bool:
    """Whether train_step clips the gradients itself (ZeRO-0) rather than DeepSpeed (ZeRO 1-3, whose
    optimizer clips): DeepSpeed's ZeRO-0 clipping launches a norm and a multiply per parameter and
    copies two scalars to the card, each copy waiting for it (the budget recipe: 18 % of the real
    tokens/s on an H200, `python -m diffusion.bench profile`)."""
    return cfg.train.zero_stage == 0


def deepspeed_config(cfg: Config, world_size: int) -> dict:
    t = cfg.train  # checked: batch_size is a multiple of micro_batch_size (TrainConfig.check)
    accumulation = t.batch_size // t.micro_batch_size
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": t.micro_batch_size * accumulation * world_size,
        "gradient_clipping": 0.0 if trainer_clips(cfg) else t.grad_clip,
        # overlap_comm off below ZeRO-3: the whole model fits one reduce bucket, so there is nothing
        # to overlap, and with it on ZeRO-2 syncs the device after every micro-batch (H200: 1.4 %
        # faster on 1 GPU, 3.5 % on 2; BENCHMARKS.md); ZeRO-3 keeps it (measured with it on)
        "zero_optimization": {"stage": t.zero_stage, "overlap_comm": t.zero_stage == 3, "contiguous_gradients": True},
        # fp32 master weights in the engine; bf16 comes from autocast inside the objective's forward
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 62,
        "wall_clock_breakdown": False,
    }


def uses_bf16(cfg: Config, device: torch.device) -> bool:
    return cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")


def uses_compile(cfg: Config, device: torch.device) -> bool:
    return cfg.train.compile and device.type == "cuda" and cfg.train.zero_stage < 3


def learning_rate_factor(cfg: Config):
    steps, warmup = cfg.train.steps, cfg.train.warmup_steps
    if cfg.train.lr_schedule == "constant":
        decay = lambda step: 1.0  # noqa: E731
    else:
        decay = lambda step: max(0.0, 1.0 - step / steps)  # noqa: E731  DiffuSeq: linear decay to 0, no warm-up
    if warmup == 0:
        return decay
    return lambda step: min(1.0, (step + 1) / warmup) * decay(step)


class Diverged(RuntimeError):
    """The loss is no longer finite: every step from here on is wasted, and a checkpoint of the
    weights would decode nothing."""

    def __init__(self, what: str, last_saved: int):
        saved = f"the last checkpoint is step {last_saved}'s" if last_saved else "no checkpoint was saved"
        super().__init__(f"training diverged: {what}; {saved} (a lower train.lr or train.grad_clip may keep it finite)")


class StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM to a one-rank trainer: it finishes the step, checkpoints and exits
    128 + the signal, so that nothing since the last checkpoint is lost; running it again resumes.
    A signal that the parent set to be ignored stays ignored (the pipeline's local jobs ignore
    Ctrl-C: it stops `pipeline submit --wait` following, not the training). Several ranks would
    have to agree on the step to stop at; they keep the default (stop now, resume from the last
    checkpoint)."""

    def __init__(self, enabled: bool):
        self.signal: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM) if enabled else ():
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal = signum


def load_data(cfg: Config, outdir: Path, data_dir: Path | None, env) -> tuple[Path, Config]:
    """The prepared data folder and the config with the model's vocabulary size filled in."""
    data_dir = Path(data_dir) if data_dir else outdir / "data"
    if env.is_main:
        prepare(cfg.data, data_dir)
    distributed.barrier()
    vocab_size = load_tokenizer(data_dir / TOKENIZER).get_vocab_size()
    if cfg.model.vocab_size not in (0, vocab_size):
        raise ConfigError("model.vocab_size", f"{cfg.model.vocab_size} differs from the tokenizer's {vocab_size}")
    return data_dir, replace(cfg, model=replace(cfg.model, vocab_size=vocab_size))


@dataclass
class Training:
    """What a run trains, built the same on every rank: the engine (objective, optimizer, learning
    rate) and beside it the EMA of the denoiser and the timestep sampler."""

    schedule: Schedule
    engine: Any
    lr_schedule: Any
    ema: EMA
    sampler: Any
    n_parameters: int
    clip_norm: float = 0.0  # the trainer clips the gradients' norm to this (0: none, or DeepSpeed does)
    clipped: list | None = None  # the parameters whose gradients it clips


def build(cfg: Config, env, zero_overrides: dict | None = None) -> Training:
    import deepspeed  # after distributed.setup: the CPU accelerator must be chosen first

    tc = cfg.train
    torch.manual_seed(tc.seed)
    schedule = Schedule.named(cfg.diffusion.schedule, cfg.diffusion.steps)
    denoiser = Denoiser(cfg.model)
    n_parameters = count_parameters(denoiser)  # before ZeRO-3 partitions them
    objective = DiffusionObjective(denoiser, schedule, cfg.diffusion,
                                   torch.bfloat16 if uses_bf16(cfg, env.device) else None, uses_compile(cfg, env.device),
                                   dynamic_length=cfg.data.trim,
                                   within_width=partial(within_width, cfg=cfg.data) if cfg.model.width_mask else None)
    optimizer = torch.optim.AdamW(
        objective.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, tc.adam_beta2),
        fused=tc.fused_optimizer and env.device.type == "cuda",
    )
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor(cfg))
    ds_config = deepspeed_config(cfg, env.world_size)
    ds_config["zero_optimization"].update(zero_overrides or {})
    engine, _, _, _ = deepspeed.initialize(model=objective, optimizer=optimizer, lr_scheduler=lr_schedule, config=ds_config)
    if env.world_size == 1 and tc.zero_stage == 0:
        # on one rank the all-reduce is the identity, yet DeepSpeed flattens every gradient, reduces
        # it and copies it back each step (7 % of the budget recipe's step on an H200, diffusion.bench profile)
        engine.enable_backward_allreduce = False
    ema = EMA(engine.module.denoiser, tc.ema_rate, tc.ema_warmup)
    sampler = make_sampler(cfg.diffusion.timestep_sampler, schedule.num_steps, env.device)
    return Training(schedule, engine, lr_schedule, ema, sampler, n_parameters,
                    tc.grad_clip if trainer_clips(cfg) else 0.0,
                    [p for p in engine.module.parameters() if p.requires_grad])


def train_step(run: Training, next_batch, accumulation: int) -> list[tuple[dict, torch.Tensor]]:
    """One optimizer step over `accumulation` micro-batches from `next_batch()`: the loss terms
    and input ids of each micro-batch (kept on the device: no host sync)."""
    done = []
    for i in range(accumulation):
        ids, mask = next_batch()
        t, weights = run.sampler.sample(ids.shape[0])
        terms = run.engine(ids, mask, t)
        run.sampler.update(t, terms["loss"])
        run.engine.backward((terms["loss"] * weights).mean())
        if run.clip_norm and i == accumulation - 1:  # at the boundary the gradients are whole and reduced
            # DeepSpeed's clipping (norm + 1e-6, the factor capped at 1), fused over the tensors on a GPU
            torch.nn.utils.clip_grad_norm_(run.clipped, run.clip_norm)
        run.engine.step()
        done.append((terms, ids))
    return done


def stepper(run: Training, batches: BatchStream, window: LossWindow, cfg: Config, env):
    """A function taking one optimizer step and adding its losses to `window`: train_step, or with
    train.cuda_graphs the same step replayed from CUDA graphs (graphs.py; eager on a CPU)."""
    if cfg.train.cuda_graphs:
        if env.world_size != 1:
            raise ConfigError("train.cuda_graphs", f"needs one rank; this run has {env.world_size}")
        return GraphedStep(run, batches, window, capture=env.device.type == "cuda")
    accumulation = cfg.train.batch_size // cfg.train.micro_batch_size

    def step() -> None:
        for terms, ids in train_step(run, batches.next, accumulation):
            window.add(terms, ids)
    return step


def save_checkpoint(run: Training, batches: BatchStream, cfg: Config, data_dir: Path, ckpt_root: Path, step: int,
                    env, target_lengths: list[int]) -> None:
    """Collective: the engine's state, each rank's RNG, data position and sampler, and the EMA
    weights exported for sampling (with the config, the tokenizer and the training targets'
    lengths, `lengths.length_table`)."""
    def main_files(folder: Path):
        atomic.torch_save({"config": to_dict(cfg), "state_dict": exported, "step": step}, folder / EXPORTED_MODEL)
        shutil.copyfile(data_dir / TOKENIZER, folder / TOKENIZER)
        lengths.save_table(target_lengths, folder)

    exported = run.ema.full_state_dict()  # collective under ZeRO-3
    rank_state = {
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(env.device) if env.device.type == "cuda" else None,
        "batches": batches.state_dict(),
        "sampler": run.sampler.state_dict(),
        "ema": run.ema.state_dict() if run.ema.partitioned else None,
    }
    checkpoint.save(run.engine, ckpt_root, step, env.rank, env.world_size, rank_state, main_files,
                    {"zero_stage": cfg.train.zero_stage})


@contextlib.contextmanager
def sole_trainer(outdir: Path):
    """The world's first rank holds the output folder's train.lock before anything is written
    there: a second trainer of the same folder (however it was started) stops at once with
    locks.LockHeld naming the first, instead of overwriting its checkpoints."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    with locks.exclusive(outdir / TRAIN_LOCK, what="training"):
        yield


def train(cfg: Config, outdir: str | Path, data_dir: str | Path | None = None, stop_after: int | None = None,
          force_cpu: bool = False) -> dict:
    """Train (or resume) to cfg.train.steps, or until `stop_after` steps or the time limit. Returns a summary."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with sole_trainer(outdir):
        return _train(cfg, outdir, data_dir, stop_after, force_cpu)


def _train(cfg: Config, outdir: Path, data_dir: str | Path | None, stop_after: int | None, force_cpu: bool) -> dict:
    wall_start = time.monotonic()
    env = distributed.setup(force_cpu)
    data_dir, cfg = load_data(cfg, outdir, data_dir, env)
    tc = cfg.train

    # --- build: model, objective, optimizer, engine, EMA, sampler (same init on every rank), data ---
    run = build(cfg, env)
    input_ids, input_mask = load_encoded(data_dir / "train.pt")
    target_lengths = lengths.length_table(input_ids, input_mask)  # what a checkpoint samples lengths from
    widths = sequence_widths(input_mask, cfg.data) if cfg.data.trim else None
    batches = BatchStream(input_ids, input_mask, tc.micro_batch_size, env.rank, env.world_size, tc.seed, env.device,
                          widths)
    torch.manual_seed(tc.seed + 1 + env.rank)  # noise, timesteps and dropout differ across ranks

    # --- resume from the last complete checkpoint, if any ---
    ckpt_root = outdir / "checkpoints"
    step = resume(run.engine, run.ema, run.sampler, batches, ckpt_root, env)
    last_step = min(tc.steps, stop_after) if stop_after is not None else tc.steps
    # the checkpoints the pipeline expects; a run stopped early also saves where it stops
    scheduled = set(checkpoint_steps(tc.steps, tc.save_every))
    if env.is_main:
        print(f"[train] {run.n_parameters / 1e6:.1f} M parameters, {env.world_size} rank(s) on "
              f"{env.device.type}, ZeRO-{tc.zero_stage}, {'bf16' if uses_bf16(cfg, env.device) else 'fp32'}"
              f"{', compiled' if uses_compile(cfg, env.device) else ''}"
              f"{', CUDA graphs' if tc.cuda_graphs and env.device.type == 'cuda' else ''}, micro-batch {tc.micro_batch_size}, "
              f"step {step} -> {last_step}", flush=True)

    # --- the loop: step, log, checkpoint ---
    window = LossWindow(env.device)
    take_step = stepper(run, batches, window, cfg, env)
    stop = StopRequest(enabled=env.world_size == 1)
    window_start, window_steps, slowest_step, first_step = time.monotonic(), 0, 0.0, step
    last_saved = step
    stopped_for_time = False
    run.engine.train()
    while step < last_step:
        step_start = time.monotonic()
        take_step()
        step += 1
        run.ema.update(step)
        window_steps += 1
        if step > first_step + 1:  # the first step of a start compiles: not what one more step costs
            slowest_step = max(slowest_step, time.monotonic() - step_start)

        if step % tc.log_every == 0 or step == last_step:
            record = log_record(window, step, run, cfg, env, time.monotonic() - window_start, window_steps)
            if env.is_main:
                write_log(outdir, record)
            stop_if_diverged(record["loss"], step - window_steps + 1, step, last_saved, env)
            window.reset()
            window_start, window_steps = time.monotonic(), 0

        if tc.time_limit_s is not None:
            # stop with a checkpoint while there is surely time for one more step and the save
            remaining = tc.time_limit_s - (time.monotonic() - wall_start)
            stopped_for_time = remaining < 3 * slowest_step + 60
        if step in scheduled or step == last_step or stopped_for_time or stop.signal:
            if window_steps:  # steps since the last log line, not checked yet (a host sync, as the line's)
                stop_if_diverged(window.means()[0]["loss"], step - window_steps + 1, step, last_saved, env)
            save_checkpoint(run, batches, cfg, data_dir, ckpt_root, step, env, target_lengths)
            last_saved = step
        if stopped_for_time or stop.signal:
            break

    distributed.barrier()
    return {"step": step, "finished": step >= tc.steps, "stopped_for_time": stopped_for_time, "stopped_by_signal": stop.signal,
            "checkpoints": str(ckpt_root), "rank": env.rank, "parameters_sha256": parameters_digest(run.engine.module)}


def stop_if_diverged(loss: float, first: int, last: int, last_saved: int, env) -> None:
    """Diverged where the mean loss of steps first..last is not finite on any rank (a collective:
    every rank stops at the same step)."""
    if distributed.any_rank(not math.isfinite(loss), env.device):
        raise Diverged(f"the loss of steps {first}-{last} is {loss}", last_saved)


def parameters_digest(module: torch.nn.Module) -> str | None:
    """A digest of this rank's full parameters (None under ZeRO-3, where a rank holds a shard)."""
    if any(hasattr(p, "ds_tensor") for p in module.parameters()):
        return None
    digest = hashlib.sha256()
    for p in module.parameters():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def resume(engine, ema: EMA, sampler, batches: BatchStream, ckpt_root: Path, env) -> int:
    """Restore everything from the latest complete checkpoint; returns its step (0 when none)."""
    folder = checkpoint.latest(ckpt_root)
    if folder is None:
        return 0
    meta = checkpoint.verify(folder)
    if meta["world_size"] != env.world_size:
        raise checkpoint.CheckpointError(
            f"{folder}: written by {meta['world_size']} rank(s); resume it with the same number (now {env.world_size})"
        )
    engine.load_checkpoint(str(folder), tag=DEEPSPEED_TAG)
    state = checkpoint.load_rank_state(folder, env.rank)
    if state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    else:
        exported = torch.load(folder / EXPORTED_MODEL, map_location="cpu", weights_only=False)["state_dict"]
        names = [name for name, p in ema.module.named_parameters() if p.requires_grad]
        ema.load_state_dict({"shadow": [exported[name] for name in names]})
    sampler.load_state_dict(state["sampler"])
    batches.load_state_dict(state["batches"])
    torch.set_rng_state(state["cpu_rng"])
    if state["cuda_rng"] is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], env.device)
    if env.is_main:
        print(f"[train] resumed from {folder}", flush=True)
    return meta["step"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML or JSON config (see diffusion/config.py)")
    parser.add_argument("outdir", help="output folder: checkpoints, logs, heartbeat")
    parser.add_argument("--data-dir", help="prepared data folder (default: OUTDIR/data, prepared if missing)")
    parser.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this step")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is visible")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="checkpoint and stop before this much wall time (default: train.time_limit_s)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.time_limit is not None:
            cfg = replace(cfg, train=replace(cfg.train, time_limit_s=args.time_limit))
        summary = train(cfg, args.outdir, args.data_dir, args.stop_after, args.cpu)
    except locks.LockHeld as err:
        print(f"error: {err.path.parent} is being trained by {locks.describe(err.holder)} ({err.path}); "
              "a second trainer would overwrite its checkpoints", file=sys.stderr)
        return TRAINER_BUSY
    except (ConfigError, checkpoint.CheckpointError, Diverged, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full or read-only disk: one line, which the pipeline shows as the reason
        refused = atomic.refused(err, args.outdir)
        if refused is None:
            raise
        print(f"error: cannot write {refused.filename or args.outdir}: {refused.strerror}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()
    print(json.dumps(summary), flush=True)
    return 128 + summary["stopped_by_signal"] if summary["stopped_by_signal"] else 0


if __name__ == "__main__":
    sys.exit(main())
