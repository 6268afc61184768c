"""Decoding a trained checkpoint's split, round after round in one process: `python -m
diffusion.bench decode CHECKPOINT SPLIT` (the package doc says how to call it).

Each round decodes every pair of SPLIT with every seed of the checkpoint's sample section (as
changed by --set), exactly as `python -m diffusion.sample` does, MBR choosing where there are
several seeds. The first round pays what a fresh process pays (each batch width is a new shape
for the kernels); the later ones show the warm rate. A JSON line a round: its seconds, the
sentences/s (a pair and a seed is a sentence) and whether its outputs are the first round's;
then one line of the outputs' scores (DiffuSeq's evaluator: BLEU, ROUGE-L, and BLEU against each
output's own source); with --profile, a torch.profiler trace of one more round on a GPU: the card's
busy time beside the wall time, the kernel launches and the kernels that take the time.
`--set sample.attention=efficient` (or flash, cudnn, math) pins the attention backend and
`--set sample.cuda_graphs=true` replays the middle steps, as they do in diffusion.sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .. import metrics
from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..data import DataError, load_pairs
from ..sample import generate_seeds, load_for_sampling, parse_sets, select_mbr
from .common import card_trace, device_name, sync


def decode_round(denoiser, cfg, sample_cfg, tokenizer, pairs: list[dict], device: torch.device,
                 length_table: list[int] | None = None) -> tuple[float, list[dict]]:
    """(seconds, the rows diffusion.sample would write) of one decoding of `pairs`, timed to the card."""
    sync(device)
    start = time.perf_counter()
    per_seed = generate_seeds(denoiser, cfg, tokenizer, pairs, list(sample_cfg.seeds), sample_cfg, device,
                              length_table=length_table)
    sync(device)
    seconds = time.perf_counter() - start
    return seconds, select_mbr(per_seed) if len(per_seed) > 1 else per_seed[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.bench decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a step_NNNNNNN folder")
    parser.add_argument("split", type=Path, help="jsonl of {src, trg} pairs")
    parser.add_argument("--set", action="append", default=[], metavar="sample.KEY=VALUE",
                        help="as `python -m diffusion.sample --set`, e.g. sample.steps=10 (repeat it)")
    parser.add_argument("--rounds", type=int, default=3, help="decodings of the split timed")
    parser.add_argument("--profile", action="store_true", help="trace one more round (GPU only)")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds: at least 1")

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    try:
        cfg, sample_cfg, denoiser, tokenizer, length_table = load_for_sampling(args.checkpoint, parse_sets(args.set), device)
        pairs = load_pairs(args.split, sample_cfg.max_examples)
    except (CheckpointError, ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"device": device_name(device), "torch": torch.__version__, "checkpoint": str(args.checkpoint),
                      "sets": args.set, "pairs": len(pairs), "seeds": list(sample_cfg.seeds),
                      "solver": sample_cfg.solver, "steps": sample_cfg.steps, "batch_size": sample_cfg.batch_size,
                      "attention": sample_cfg.attention, "cuda_graphs": sample_cfg.cuda_graphs}), flush=True)

    def run_round() -> tuple[float, list[dict]]:
        return decode_round(denoiser, cfg, sample_cfg, tokenizer, pairs, device, length_table)

    first = None
    for r in range(args.rounds):
        try:
            seconds, rows = run_round()
        except ConfigError as err:  # a pinned attention backend that cannot run these batches here
            print(f"error: {err}", file=sys.stderr)
            return 2
        hyps = [row["hyp"] for row in rows]
        first = first if first is not None else hyps
        print(json.dumps({"round": r, "seconds": round(seconds, 4),
                          "sentences_per_s": round(len(pairs) * len(sample_cfg.seeds) / seconds, 1),
                          "same_as_first": hyps == first}), flush=True)
    scores = metrics.score(hyps, [row["ref"] for row in rows], [row["src"] for row in rows], bertscore_model=None)
    print(json.dumps({"bleu": scores["bleu"], "rouge_l": scores["rouge_l"], "copy_bleu": scores["self_bleu_src"],
                      "len": scores["len"], "empty": scores["empty"]}), flush=True)
    if args.profile:
        print(json.dumps({"profile": card_trace(run_round, device, 1, "round")}), flush=True)
    return 0
