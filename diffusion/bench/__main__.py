"""The command line of `python -m diffusion.bench`: the subcommands, and the train and sample
measurements of the recipe in one JSON line when none is named (the package doc lists them)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .. import distributed
from ..model import Denoiser, count_parameters
from . import __doc__ as USAGE, attention, common, decode, profile, sample, train

RECIPE_PARTS = {"train": ("train",), "sample": ("sample",)}  # measurements of the recipe's model, one line
OWN_COMMANDS = {"profile": profile.main, "decode": decode.main, "attention": attention.main}  # their own options and output


def recipe_parser(command: str | None) -> argparse.ArgumentParser:
    """The options of `command` (train or sample), or of both where it is None."""
    prog = "python -m diffusion.bench" + (f" {command}" if command else "")
    doc = {"train": train.__doc__, "sample": sample.__doc__}.get(command, USAGE)
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_arguments(parser)
    parts = RECIPE_PARTS.get(command, ("train", "sample"))
    if "train" in parts:
        train.add_arguments(parser)
    if "sample" in parts:
        sample.add_arguments(parser)
    parser.set_defaults(parts=parts, skip_train=False, skip_sample=False)
    if command is None:
        parser.add_argument("--skip-train", action="store_true")
        parser.add_argument("--skip-sample", action="store_true")
    return parser


def measure_recipe(args: argparse.Namespace) -> None:
    """The train and/or sample measurement (args.parts), in one JSON line printed by rank 0."""
    cfg = train.config(args) if "train" in args.parts else sample.config(args)
    env = distributed.setup()
    result = {"device": common.device_name(env.device), "world_size": env.world_size, "torch": torch.__version__,
              "parameters": count_parameters(Denoiser(cfg.model)), "seq_len": cfg.data.seq_len}
    if "train" in args.parts:
        result |= train.header(cfg, env)
        if not args.skip_train:
            result["train"] = train.measure(args, cfg, env, result["measured_bf16_matmul_tflops"])
    if "sample" in args.parts and env.is_main and not args.skip_sample:
        result["sample"] = sample.measure(args, cfg, env.device)
    distributed.barrier()
    if env.is_main:
        print(json.dumps(result), flush=True)
    distributed.teardown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    if command in OWN_COMMANDS:
        return OWN_COMMANDS[command](argv[1:])
    if command is not None and command not in RECIPE_PARTS:
        recipe_parser(None).error(f"unknown subcommand {command!r}: choose from "
                                  f"{', '.join([*RECIPE_PARTS, *OWN_COMMANDS])}, or none for train and sample")
    measure_recipe(recipe_parser(command).parse_args(argv[1:] if command else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
