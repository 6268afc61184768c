"""Sampling a checkpoint: k seeds give k candidates per source; MBR picks one when k > 1.

    python -m diffusion.sample CHECKPOINT SPLIT OUT [--seeds 101,102,...] [--steps N] [--batch-size B]

CHECKPOINT is a `step_NNNNNNN` folder (its EMA weights, config and tokenizer are used), SPLIT a
DiffuSeq-format jsonl of pairs. OUT gets one `{"src", "ref", "hyp"}` line per pair: the MBR
choice among the seeds' candidates, or the single candidate. With several seeds, each seed's
candidates also go to OUT's folder as `<stem>.seed<S>.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from . import atomic
from .checkpoint import CheckpointError, load_exported
from .config import ConfigError, SampleConfig
from .data import (DataError, batch_width, decode, width_batches, encode_pairs, load_pairs, sequence_widths, split_sequence,
                   target_budget, within_width)
from .metrics import mbr_select
from .sampling import ROUNDINGS, SOLVERS, sample_tokens
from .schedule import Schedule


def generate(denoiser, cfg, tokenizer, pairs: list[dict], seed: int, sample_cfg: SampleConfig,
             device: torch.device, progress=None) -> list[dict]:
    """One candidate per pair for one seed: [{"src", "ref", "hyp"}, ...] in the order of `pairs`."""
    return generate_seeds(denoiser, cfg, tokenizer, pairs, [seed], sample_cfg, device, progress)[0]


def generate_seeds(denoiser, cfg, tokenizer, pairs: list[dict], seeds: list[int], sample_cfg: SampleConfig,
                   device: torch.device, progress=None) -> list[list[dict]]:
    """One candidate per pair for each seed: a list of rows ({"src", "ref", "hyp"}, in the order of
    `pairs`) per seed. `progress(decoded, total)` counts candidates over all seeds.

    Pairs are decoded in batches of up to `batch_size` (with trimmed sequences, of one width: see
    `width_batches`; the reference is always the untrimmed target). Where a batch is smaller than
    that, as many seeds as fit are decoded together in it, each drawing its noise from its own
    generator as it would alone: one launch-bound reverse step then serves several seeds, and each
    seed's candidates are those it gets decoded by itself."""
    schedule = Schedule.named(cfg.diffusion.schedule, cfg.diffusion.steps)
    if sample_cfg.steps:
        schedule = schedule.respaced(sample_cfg.steps)
    input_ids, input_mask = encode_pairs(tokenizer, pairs, cfg.data.seq_len, target_budget(cfg.data))
    reference_ids, reference_mask = encode_pairs(tokenizer, pairs, cfg.data.seq_len) if cfg.data.trim else (input_ids, input_mask)
    widths = sequence_widths(input_mask, cfg.data)
    generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]
    autocast = device.type == "cuda" and sample_cfg.weights == "fp32"  # bf16 weights need none
    hypotheses: list[dict[int, str]] = [{} for _ in seeds]
    decoded, total = 0, len(pairs) * len(seeds)
    for batch in width_batches(widths, cfg.data.seq_len, sample_cfg.batch_size):
        width = batch_width(widths[batch], cfg.data.seq_len)
        indices, row_masks = batch.tolist(), input_mask[batch, :width]
        ids, mask = input_ids[batch, :width].to(device), row_masks.to(device)
        together = max(1, sample_cfg.batch_size // len(batch))  # seeds that fit in one decode batch
        for first in range(0, len(seeds), together):
            group = range(first, min(first + together, len(seeds)))
            inside = within_width(mask, cfg.data).repeat(len(group), 1) if cfg.model.width_mask else None
            with torch.autocast("cuda", dtype=torch.bfloat16) if autocast else nullcontext():
                tokens = sample_tokens(denoiser, schedule, ids.repeat(len(group), 1), mask.repeat(len(group), 1),
                                       cfg.diffusion.noising, sample_cfg.full_mode, sample_cfg.clamp_step,
                                       sample_cfg.rounding, sample_cfg.solver, sample_cfg.eta, sample_cfg.pad_penalty,
                                       cfg.diffusion.source_noise, [generators[i] for i in group],
                                       cfg.diffusion.rescale_timesteps, within_width=inside,
                                       soft_temperature=sample_cfg.soft_temperature,
                                       min_target_tokens=sample_cfg.min_target_tokens)
            for seed_index, seed_tokens in zip(group, tokens.cpu().split(len(batch))):
                for index, row_mask, row_tokens in zip(indices, row_masks, seed_tokens):
                    hypotheses[seed_index][index] = decode(tokenizer, split_sequence(row_tokens, row_mask)[1])
            decoded += len(batch) * len(group)
            if progress:
                progress(decoded, total)
    references = [split_sequence(reference_ids[i], reference_mask[i]) for i in range(len(pairs))]
    texts = [(decode(tokenizer, source), decode(tokenizer, reference)) for source, reference in references]
    return [[{"src": src, "ref": ref, "hyp": per_seed[index]} for index, (src, ref) in enumerate(texts)]
            for per_seed in hypotheses]


def select_mbr(candidates_per_seed: list[list[dict]]) -> list[dict]:
    """Per pair, the candidate DiffuSeq's MBR rule picks among the seeds' candidates."""
    chosen = []
    for candidates in zip(*candidates_per_seed):
        best = mbr_select([c["hyp"] for c in candidates])
        chosen.append(candidates[best])
    return chosen


def ready_for_sampling(denoiser, sample_cfg: SampleConfig, device: torch.device):
    """The denoiser as the sample config wants it on this device: bf16 weights (with the GELU in
    the matmul epilogue) and compiled, on a GPU."""
    if device.type == "cuda" and sample_cfg.weights == "bf16":
        denoiser = denoiser.to(torch.bfloat16)
        denoiser.use_gelu_epilogue(sample_cfg.gelu_epilogue)
    if sample_cfg.compile and device.type == "cuda":
        denoiser.compile()  # in place: fuses each reverse step's LayerNorms, GELUs and casts
    return denoiser


def run(checkpoint: Path, split: Path, out: Path, overrides: dict | None = None, cpu: bool = False,
        progress: Callable[[int, int], None] | None = None) -> dict:
    """Sample `split` with the checkpoint; `overrides` replace fields of the checkpoint's sample config.

    `progress(decoded, total)` is called after every batch, counting candidates over all seeds."""
    device = torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
    cfg, denoiser, tokenizer = load_exported(checkpoint, device)
    sample_cfg = replace(cfg.sample, **(overrides or {}))
    denoiser = ready_for_sampling(denoiser, sample_cfg, device)
    pairs = load_pairs(split, sample_cfg.max_examples)
    out = Path(out)
    started = time.monotonic()
    per_seed = generate_seeds(denoiser, cfg, tokenizer, pairs, list(sample_cfg.seeds), sample_cfg, device, progress)
    if len(per_seed) > 1:
        for seed, rows in zip(sample_cfg.seeds, per_seed):
            atomic.write_jsonl(out.with_name(f"{out.stem}.seed{seed}.jsonl"), rows)
    final = select_mbr(per_seed) if len(per_seed) > 1 else per_seed[0]
    atomic.write_jsonl(out, final)
    seconds = time.monotonic() - started
    return {"out": str(out), "pairs": len(pairs), "seeds": list(sample_cfg.seeds), "seconds": seconds,
            "sentences_per_s": len(pairs) * len(per_seed) / max(seconds, 1e-9)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("split", type=Path, help="jsonl of {src, trg} pairs")
    parser.add_argument("out", type=Path, help="output jsonl of {src, ref, hyp}")
    parser.add_argument("--seeds", help="comma-separated seeds, one candidate each (default: the config's)")
    parser.add_argument("--steps", type=int, help="respaced number of reverse steps (default: all T)")
    parser.add_argument("--solver", choices=SOLVERS)
    parser.add_argument("--eta", type=float, help="ddim: share of the posterior noise (0: deterministic)")
    parser.add_argument("--clamp-step", type=int)
    parser.add_argument("--rounding", choices=ROUNDINGS,
                        help="round x0 to the nearest embedding, the logits' argmax, or the decoder's expected embedding")
    parser.add_argument("--soft-temperature", type=float, help="rounding soft: the softmax's temperature")
    parser.add_argument("--pad-penalty", type=float, help="lower PAD's score by this much (logits) when choosing tokens")
    parser.add_argument("--min-target-tokens", type=int, help="the first N target positions take text tokens only")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-examples", type=int)
    parser.add_argument("--full-mode", choices=["conditional", "joint"])
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the denoiser (GPU)")
    parser.add_argument("--weights", choices=["bf16", "fp32"], help="GPU: bf16 weights, or fp32 under bf16 autocast")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args(argv)
    try:
        overrides = {
            "seeds": tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None,
            "steps": args.steps, "clamp_step": args.clamp_step, "batch_size": args.batch_size,
            "max_examples": args.max_examples, "full_mode": args.full_mode, "compile": args.compile,
            "weights": args.weights, "rounding": args.rounding, "solver": args.solver, "eta": args.eta,
            "pad_penalty": args.pad_penalty, "soft_temperature": args.soft_temperature,
            "min_target_tokens": args.min_target_tokens,
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        summary = run(args.checkpoint, args.split, args.out, overrides, args.cpu)
    except (CheckpointError, ConfigError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
