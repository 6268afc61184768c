"""Sampling speed and quality of one checkpoint for each solver (issue 13): one JSON line a setting.

    python env/device/solver_matrix.py CHECKPOINT SPLIT [--pairs 2048] [--score 200]
                                [--setting NAME:solver=S,steps=N,trim=0,pairs=P ...] [--mbr-seeds 10 --mbr-setting NAME]
                                [--dump DIR] [--table TITLE]

Each setting decodes the first --pairs pairs of SPLIT once (single sample, seed 101, the
checkpoint's sample config with the setting's fields replaced; `trim=0` decodes every pair over
all seq_len positions; `pairs=P` only the first P), timed on the device alone (model loaded and warmed up before), and scores
its first --score outputs with DiffuSeq's metrics (BLEU against the source and the empty share
too). --mbr-seeds K then times `diffusion.sample.run` with K seeds (decode every seed, then
DiffuSeq's MBR) for the setting named by --mbr-setting, over the same pairs, end to end.
--dump DIR writes each setting's scored rows ({src, ref, hyp}) to DIR/NAME.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from diffusion import metrics  # noqa: E402
from diffusion.checkpoint import load_exported  # noqa: E402
from diffusion.data import load_pairs  # noqa: E402
from diffusion.sample import generate, ready_for_sampling, run  # noqa: E402

DEFAULT_SETTINGS = ["ddpm2000:solver=ddpm", "ddim20:solver=ddim,steps=20", "ddim50:solver=ddim,steps=50",
                    "dpm10:solver=dpm++2m,steps=10", "dpm20:solver=dpm++2m,steps=20"]


def parse_setting(text: str) -> tuple[str, dict, bool, int | None]:
    """(name, sample-config fields, trimmed, pairs or None for all) of NAME:field=value,..."""
    name, _, fields = text.partition(":")
    values = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in fields.split(",") if item)}
    trim = values.pop("trim", 1) != 0
    pairs = values.pop("pairs", None)
    return name, values, trim, pairs


def scores_of(rows: list[dict]) -> dict:
    return metrics.score([r["hyp"] for r in rows], [r["ref"] for r in rows], [r["src"] for r in rows],
                         bertscore_model=None)


def markdown(title: str, results: list[dict]) -> str:
    lines = [f"| {title} | sent/s | BLEU | ROUGE-L | Dist-1 | len | copy BLEU | empty |", "| --- |" + " ---: |" * 7]
    lines += [f"| {r['setting']} | {r['sentences_per_s']:.0f} | {r['bleu']:.4f} | {r['rouge_l']:.4f} | {r['dist1']:.4f} "
              f"| {r['len']:.2f} | {r['self_bleu_src']:.4f} | {r['empty']:.3f} |" for r in results]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("split", type=Path)
    parser.add_argument("--pairs", type=int, default=2048)
    parser.add_argument("--score", type=int, default=200)
    parser.add_argument("--setting", action="append", help="NAME:field=value,... (default: the issue's five)")
    parser.add_argument("--mbr-seeds", type=int, default=0)
    parser.add_argument("--mbr-setting", default="dpm20")
    parser.add_argument("--dump", type=Path, help="write each setting's scored rows to DIR/NAME.jsonl")
    parser.add_argument("--table", metavar="TITLE", help="end with a markdown table of the settings under TITLE")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, denoiser, tokenizer = load_exported(args.checkpoint, device)
    denoiser = ready_for_sampling(denoiser, cfg.sample, device)
    pairs = load_pairs(args.split, args.pairs)
    settings = [parse_setting(s) for s in (args.setting or DEFAULT_SETTINGS)]
    generate(denoiser, cfg, tokenizer, pairs[:16], 0, dataclasses.replace(cfg.sample, steps=5), device)  # warm-up

    results = []
    for name, fields, trim, only in settings:
        some = pairs[:only] if only else pairs
        sample_cfg = dataclasses.replace(cfg.sample, **fields)
        run_cfg = cfg if trim else dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, trim=False))
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.monotonic()
        rows = generate(denoiser, run_cfg, tokenizer, some, 101, sample_cfg, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.monotonic() - started
        scored = rows[: args.score]
        scores = scores_of(scored)
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
            (args.dump / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scored))
        results.append({"setting": name, **fields, "trim": trim, "pairs": len(some), "seconds": round(seconds, 2),
                        "sentences_per_s": round(len(some) / seconds, 1), "scored": len(scored), **scores,
                        "examples": [r["hyp"] for r in scored[:3]]})
        print(json.dumps(results[-1]), flush=True)

    if args.table:
        print(markdown(args.table, results), flush=True)
    if args.mbr_seeds:
        name, fields, _, _ = next(s for s in settings if s[0] == args.mbr_setting)
        seeds = tuple(101 + i for i in range(args.mbr_seeds))
        with tempfile.TemporaryDirectory() as folder:
            started = time.monotonic()
            summary = run(args.checkpoint, args.split, Path(folder) / "mbr.jsonl",
                          {**fields, "seeds": seeds, "max_examples": args.pairs})
            seconds = time.monotonic() - started
            chosen = [json.loads(line) for line in open(Path(folder) / "mbr.jsonl")][: args.score]
        scores = scores_of(chosen)
        print(json.dumps({"setting": f"mbr{args.mbr_seeds}-{name}", **fields, "pairs": summary["pairs"],
                          "seeds": len(seeds), "seconds_end_to_end": round(seconds, 1),
                          "decode_seconds": round(summary["seconds"], 1), "scored": len(chosen), **scores}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
