"""Sampling a checkpoint: k seeds give k candidates per source; MBR picks one when k > 1.

    python -m diffusion.sample CHECKPOINT SPLIT OUT [--set sample.KEY=VALUE ...] [--cpu]

CHECKPOINT is a `step_NNNNNNN` folder (its EMA weights, config and tokenizer are used), SPLIT a
DiffuSeq-format jsonl of pairs. OUT gets one `{"src", "ref", "hyp"}` line per pair: the MBR
choice among the seeds' candidates, or the single candidate. With several seeds, each seed's
candidates also go to OUT's folder as `<stem>.seed<S>.jsonl`. `--set` changes a key of the
checkpoint's sample section, as `pipeline submit --set` does (value read as YAML: 20, [1, 2],
dpm++2m), checked by the same rules.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch.nn.attention import sdpa_kernel

from . import atomic
from .checkpoint import CheckpointError, load_exported
from .config import ConfigError, SampleConfig, checked, from_dict, to_dict
from .data import (DataError, batch_width, build_pairs, decode_batch, width_batches, load_pairs, sequence_widths, split_sequence,
                   source_part, target_budget, tokenize_pairs, within_width)
from .lengths import load_table, predicted_lengths, source_lengths
from .manifest import seed_samples
from .metrics import mbr_select
from .model import SDPA_BACKENDS
from .sampling import sample_tokens
from .schedule import Schedule


def generate(denoiser, cfg, tokenizer, pairs: list[dict], seed: int, sample_cfg: SampleConfig,
             device: torch.device, progress=None) -> list[dict]:
    """One candidate per pair for one seed: [{"src", "ref", "hyp"}, ...] in the order of `pairs`."""
    return generate_seeds(denoiser, cfg, tokenizer, pairs, [seed], sample_cfg, device, progress)[0]


def generate_seeds(denoiser, cfg, tokenizer, pairs: list[dict], seeds: list[int], sample_cfg: SampleConfig,
                   device: torch.device, progress=None, length_table: list[int] | None = None) -> list[list[dict]]:
    """One candidate per pair for each seed: a list of rows ({"src", "ref", "hyp"}, in the order of
    `pairs`) per seed. `progress(decoded, total)` counts candidates over all seeds. With
    sample.target_length predicted, `length_table` (the checkpoint's, lengths.load_table) gives
    each target's length, seed i's offset by sample.length_offsets[i % len].

    Pairs are decoded in batches of up to `batch_size` (with trimmed sequences, of one width: see
    `width_batches`; the reference is always the untrimmed target). Where a batch is smaller than
    that, as many seeds as fit are decoded together in it, each drawing its noise from its own
    generator as it would alone: one launch-bound reverse step then serves several seeds, and each
    seed's candidates are those it gets decoded by itself."""
    schedule = Schedule.named(cfg.diffusion.schedule, cfg.diffusion.steps)
    if sample_cfg.steps:
        schedule = schedule.respaced(sample_cfg.steps)
    srcs, trgs = tokenize_pairs(tokenizer, pairs)
    input_ids, input_mask = build_pairs(srcs, trgs, cfg.data.seq_len, target_budget(cfg.data))
    reference_ids, reference_mask = build_pairs(srcs, trgs, cfg.data.seq_len) if cfg.data.trim else (input_ids, input_mask)
    widths = sequence_widths(input_mask, cfg.data)
    lengths = None
    if sample_cfg.target_length == "predicted":
        if length_table is None:
            raise ValueError("sample.target_length predicted needs the checkpoint's length table")
        room = widths - source_part(input_mask) - 2  # the target part's positions besides [CLS] and [SEP]
        offsets = sample_cfg.length_offsets
        lengths = [predicted_lengths(length_table, source_lengths(input_mask), offsets[i % len(offsets)], room)
                   for i in range(len(seeds))]
    generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]
    autocast = device.type == "cuda" and sample_cfg.weights == "fp32"  # bf16 weights need none
    hypotheses: list[dict[int, str]] = [{} for _ in seeds]
    decoded, total = 0, len(pairs) * len(seeds)
    with attention_kernel(sample_cfg.attention, device):
        for batch in width_batches(widths, cfg.data.seq_len, sample_cfg.batch_size):
            width = batch_width(widths[batch], cfg.data.seq_len)
            indices, row_masks = batch.tolist(), input_mask[batch, :width]
            ids, mask = input_ids[batch, :width].to(device), row_masks.to(device)
            together = max(1, sample_cfg.batch_size // len(batch))  # seeds that fit in one decode batch
            for first in range(0, len(seeds), together):
                group = range(first, min(first + together, len(seeds)))
                inside = within_width(mask, cfg.data).repeat(len(group), 1) if cfg.model.width_mask else None
                group_lengths = None if lengths is None else torch.cat([lengths[i][batch] for i in group])
                with torch.autocast("cuda", dtype=torch.bfloat16) if autocast else nullcontext():
                    tokens = sample_tokens(denoiser, schedule, ids.repeat(len(group), 1), mask.repeat(len(group), 1),
                                           replace(cfg, sample=sample_cfg), [generators[i] for i in group], inside,
                                           target_lengths=group_lengths)
                for seed_index, seed_tokens in zip(group, tokens.cpu().split(len(batch))):
                    targets = [split_sequence(row_tokens, row_mask)[1] for row_tokens, row_mask in zip(seed_tokens, row_masks)]
                    hypotheses[seed_index].update(zip(indices, decode_batch(tokenizer, targets)))
                decoded += len(batch) * len(group)
                if progress:
                    progress(decoded, total)
    references = [split_sequence(ids, mask) for ids, mask in zip(reference_ids, reference_mask)]
    texts = list(zip(decode_batch(tokenizer, [source for source, _ in references]),
                     decode_batch(tokenizer, [reference for _, reference in references])))
    return [[{"src": src, "ref": ref, "hyp": per_seed[index]} for index, (src, ref) in enumerate(texts)]
            for per_seed in hypotheses]


UNSUPPORTED_ATTENTION = ("No available kernel", "No viable backend")  # torch's words on a GPU, on a CPU


@contextmanager
def attention_kernel(name: str, device: torch.device):
    """sample.attention's SDPA backends pinned for what runs inside, on a GPU (a CPU keeps PyTorch's
    choice). A pinned backend that cannot run there ends in a ConfigError naming the key."""
    backends = SDPA_BACKENDS[name] if device.type == "cuda" else None
    if backends is None:
        yield
        return
    try:
        with sdpa_kernel(backends):
            yield
    except RuntimeError as err:
        if not any(words in str(err) for words in UNSUPPORTED_ATTENTION):
            raise
        raise ConfigError("sample.attention", f"{name} cannot run these batches on this device: "
                          f"{str(err).splitlines()[0]}") from None


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


def load_for_sampling(checkpoint: Path, overrides: dict | None, device: torch.device):
    """(config, its sample section with `overrides` ({key: value}) checked under the config's
    rules, the denoiser ready for sampling on `device`, the tokenizer, the target length table
    where sample.target_length reads it, else None) of a checkpoint."""
    cfg, denoiser, tokenizer = load_exported(checkpoint, device)
    sample_cfg = from_dict(SampleConfig, {**to_dict(cfg.sample), **(overrides or {})}, "sample")
    checked(replace(cfg, sample=sample_cfg), nested=False)
    table = load_table(checkpoint) if sample_cfg.target_length == "predicted" else None
    return cfg, sample_cfg, ready_for_sampling(denoiser, sample_cfg, device), tokenizer, table


def run(checkpoint: Path, split: Path, out: Path, overrides: dict | None = None, cpu: bool = False,
        progress: Callable[[int, int], None] | None = None) -> dict:
    """Sample `split` with the checkpoint; `overrides` ({key: value}, as a config file writes them)
    replace keys of the checkpoint's sample section, under the config's rules.

    `progress(decoded, total)` is called after every batch, counting candidates over all seeds."""
    device = torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
    cfg, sample_cfg, denoiser, tokenizer, length_table = load_for_sampling(checkpoint, overrides, device)
    pairs = load_pairs(split, sample_cfg.max_examples)
    out = Path(out)
    started = time.monotonic()
    per_seed = generate_seeds(denoiser, cfg, tokenizer, pairs, list(sample_cfg.seeds), sample_cfg, device, progress,
                              length_table)
    if len(per_seed) > 1:
        for seed, rows in zip(sample_cfg.seeds, per_seed):
            atomic.write_jsonl(seed_samples(out, seed), rows)
    final = select_mbr(per_seed) if len(per_seed) > 1 else per_seed[0]
    atomic.write_jsonl(out, final)
    seconds = time.monotonic() - started
    return {"out": str(out), "pairs": len(pairs), "seeds": list(sample_cfg.seeds), "seconds": seconds,
            "sentences_per_s": len(pairs) * len(per_seed) / max(seconds, 1e-9)}


def parse_sets(items: list[str]) -> dict:
    """{key: value} of `--set sample.KEY=VALUE` items, values read as YAML."""
    import yaml

    overrides = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.startswith("sample.") or "." in key[len("sample."):]:
            raise ConfigError("", f"--set {item!r}: expected sample.KEY=VALUE (e.g. sample.steps=20)")
        try:
            overrides[key[len("sample."):]] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(key, f"value {raw!r} is not valid YAML ({err})") from None
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("split", type=Path, help="jsonl of {src, trg} pairs")
    parser.add_argument("out", type=Path, help="output jsonl of {src, ref, hyp}")
    parser.add_argument("--set", action="append", default=[], metavar="sample.KEY=VALUE",
                        help="change a key of the checkpoint's sample section, e.g. sample.solver=dpm++2m (repeat it)")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args(argv)
    try:
        summary = run(args.checkpoint, args.split, args.out, parse_sets(args.set), args.cpu)
    except (CheckpointError, ConfigError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
