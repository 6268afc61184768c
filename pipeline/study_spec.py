"""Study files: one base spec, its variants and the decodings of their checkpoints, as the
resolved JobSpec of each variant's run.

    # jobs/qqp_study.yaml
    study: qqp-study                # each variant is a run named <study>-<variant>
    base: qqp_base.yaml             # the spec every variant starts from (relative to this file)
    set: {train.steps: 4000}        # optional: overrides of every variant
    variants:                       # name -> overrides: the keys of --set, values as YAML; {}: the base as is
      target: {diffusion.noising: target, evaluate.label: DiffuSeq}
      full: {diffusion.noising: full, sample.full_mode: conditional}
    decodings:                      # optional: name -> sample.* overrides, each checkpoint decoded again so
      dpm-20: {sample.steps: 20}
    decode_checkpoints: last        # which checkpoints the decodings decode: last (default) or all
    concurrent_train: 1             # the local executor: how many variants train at once (several fit a GPU)

A variant's spec is the base's (site profile under it), then the study's `set`, the variant's
overrides, the study's decodings, then `--set` from the command line (every variant alike).
Every error names the file, the line and the variant.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .layout import RUN_ID
from .sites import apply_site
from .spec import DECODE_CHECKPOINTS, DECODING_NAME, JobSpec, parse_override, resolve, set_value
from .spec_yaml import SpecError, load_with_bases, read_yaml

KEYS = ("study", "base", "set", "variants", "decodings", "decode_checkpoints", "concurrent_train")


@dataclass(frozen=True)
class Study:
    name: str
    file: str  # the study file, absolute
    runs: dict[str, JobSpec]  # variant -> its run's spec, in the file's order
    concurrent_train: int = 1


def is_study_file(path: str | Path) -> bool:
    """A YAML file with `study:` or `variants:` at the top (anything unreadable is left to the spec
    loader, which says why)."""
    try:
        data, _ = read_yaml(Path(path))
    except SpecError:
        return False
    return "study" in data or "variants" in data


def load_study(path: str | Path, overrides: Sequence[str] = (), site: str | None = None) -> Study:
    path = Path(path)
    top = str(path)
    data, lines = read_yaml(path)
    origin = {key: (top, line) for key, line in lines.items()}

    def where(key: str):
        return origin.get(key, (top, 1))

    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise SpecError(f"unknown key; a study file has {', '.join(KEYS)}", *where(unknown[0]), unknown[0])
    name = data.get("study")
    if not isinstance(name, str) or not RUN_ID.match(name) or ".." in name:
        raise SpecError("the study's name is required: letters, digits, '.', '-', '_' (first a letter or digit)",
                        *where("study"), "study")
    base = data.get("base")
    if not isinstance(base, str) or not (path.parent / base).is_file():
        raise SpecError(f"the base spec every variant starts from, relative to this file"
                        f"{'' if not isinstance(base, str) else f'; no such file: {path.parent / base}'}",
                        *where("base"), "base")
    variants = data.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise SpecError("expected a mapping: variant name -> overrides ({} for the base as is)", *where("variants"),
                        "variants")
    for key in ("set", "decodings"):
        if not isinstance(data.get(key) or {}, dict):
            raise SpecError("expected a mapping of overrides" if key == "set" else
                            "expected a mapping: decoding name -> sample.* overrides", *where(key), key)
    decode = data.get("decode_checkpoints", "last")
    if decode not in DECODE_CHECKPOINTS:
        raise SpecError(f"must be one of {', '.join(DECODE_CHECKPOINTS)}, got {decode!r}", *where("decode_checkpoints"),
                        "decode_checkpoints")
    at_once = data.get("concurrent_train", 1)
    if isinstance(at_once, bool) or not isinstance(at_once, int) or at_once < 1:
        raise SpecError(f"expected a whole number of at least 1, got {at_once!r}", *where("concurrent_train"),
                        "concurrent_train")
    command_line = [parse_override(item) for item in overrides]
    runs = {}
    for variant, changes in variants.items():
        key = f"variants.{variant}"
        if not DECODING_NAME.match(str(variant)):
            raise SpecError("invalid variant name: letters, digits, '-' and '_' (first a letter or digit)", *where(key), key)
        if not isinstance(changes, dict):
            raise SpecError("expected a mapping of overrides, e.g. {diffusion.noising: full} ({} for the base as is)",
                            *where(key), key)
        try:
            runs[str(variant)] = _variant_spec(path.parent / base, site, top, f"{name}-{variant}", data, origin,
                                               changes, key, decode, command_line)
        except SpecError as err:
            raise SpecError(f"{err} (variant {variant})") from None
    return Study(name, str(path.resolve()), runs, at_once)


def _variant_spec(base: Path, site, top, run_name, data, origin, changes, key, decode, command_line) -> JobSpec:
    spec, spec_origin = load_with_bases(Path(base).resolve())
    spec, spec_origin = apply_site(spec, spec_origin, site, top)
    for sub, value in (data.get("set") or {}).items():
        set_value(spec, spec_origin, str(sub), value, origin.get(f"set.{sub}", (top, None)))
    for sub, value in changes.items():
        set_value(spec, spec_origin, str(sub), value, origin.get(f"{key}.{sub}", (top, None)))
    spec["name"], spec_origin["name"] = run_name, origin.get(key, (top, None))
    if data.get("decodings"):
        spec["decodings"] = copy.deepcopy(data["decodings"])
        spec_origin.update({k: w for k, w in origin.items() if k == "decodings" or k.startswith("decodings.")})
    spec["decode_checkpoints"] = decode
    for sub, value in command_line:
        set_value(spec, spec_origin, sub, value)
    return resolve(spec, spec_origin, top)
