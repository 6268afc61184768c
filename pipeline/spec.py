"""Job specs: the YAML a user submits, as frozen typed dataclasses.

A spec holds the library's config sections (data, model, diffusion, train, sample: see
diffusion/config.py) plus what the pipeline needs: the run's name, evaluation settings, the
site profile and per-stage resources. `load_spec` resolves `base:` files, merges the site
profile from env/sites/ underneath, applies `--set key.sub=value` overrides and validates,
naming file, line and key in every error ("jobs/x.yaml:12: train.stpes: unknown key; ...").

How a spec is resolved, lowest precedence first:
  1. the site profile's `defaults:` (any job spec sections, e.g. resources.train.partition);
  2. the `base:` chain, base first (a path relative to the file naming it; bases may chain);
  3. the spec file itself;
  4. `--set key.sub=value` (value read as YAML: 100, [1, 2], null; a mapping merges).
Mappings merge key by key; any other value (lists included) replaces. `site:` is a profile name
(env/sites/NAME.yaml; `--site NAME` wins; default "local") or an inline mapping of the same
content. Relative data paths (data.train/valid/test) are taken relative to the folder of the
file that wrote them (cwd for --set) and become absolute; `~` and $VARS are expanded in data
paths and site.results_root. Numbers like 1e-4 read as floats (PyYAML alone reads a string).
The frozen spec (`freeze`) is the resolved spec as plain YAML; `load_frozen` reads it back as is.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from diffusion.bertscore_model import DEFAULT_BERTSCORE_MODEL
from diffusion.config import (MIN_SEQ_LEN, Config, ConfigError, DataConfig, DiffusionConfig, ModelConfig,
                              SampleConfig, TrainConfig, from_dict, to_dict)
from diffusion.manifest import checkpoint_steps

from .backends import NAMES as EXECUTORS  # names only: no scheduler module is imported
from .errors import UserError
from .layout import RUN_ID


@dataclass(frozen=True)
class StageResources:
    """What one job (or one array task) of a stage asks the scheduler for."""

    nodes: int = 1
    gpus: int = 0  # per node; the train stage starts one rank per GPU (or `ranks` on CPU)
    ranks: int = 1  # processes per node when gpus == 0
    cpus: int = 2  # per task
    mem_gb: int = 8
    time_min: int = 60
    partition: str | None = None  # Slurm partition / PJM resource group; default: the site's
    array_parallelism: int = 64


@dataclass(frozen=True)
class Resources:
    preprocess: StageResources = field(default_factory=lambda: StageResources(cpus=4, mem_gb=16, time_min=60))
    train: StageResources = field(default_factory=lambda: StageResources(gpus=4, cpus=16, mem_gb=64, time_min=1440))
    sample: StageResources = field(default_factory=lambda: StageResources(gpus=1, cpus=4, mem_gb=32, time_min=720))
    evaluate: StageResources = field(default_factory=lambda: StageResources(gpus=1, cpus=4, mem_gb=32, time_min=120))
    aggregate: StageResources = field(default_factory=lambda: StageResources(cpus=1, mem_gb=4, time_min=30))


@dataclass(frozen=True)
class SiteSpec:
    """A cluster's profile (env/sites/NAME.yaml), merged under the job spec."""

    name: str = "local"
    executor: str = "local"  # local | slurm | pjm
    results_root: str = "runs"  # a relative path is taken from the directory `pipeline submit` runs in
    account: str | None = None  # Slurm account / PJM group (-g)
    qos: str | None = None
    partition: str | None = None  # default partition / resource group of every stage
    gpu_partition: str | None = None  # default for stages that ask for GPUs
    modules: tuple[str, ...] = ()  # `module load` lines in every job
    setup: tuple[str, ...] = ()  # shell lines run before each job (e.g. activate a venv)
    python: str | None = None  # the interpreter jobs run (default: the one running `pipeline`)


@dataclass(frozen=True)
class EvaluateSpec:
    split: str = "valid"  # the split sampled and scored: valid (DiffuSeq's) or test
    bertscore_model: str | None = DEFAULT_BERTSCORE_MODEL  # name, local path, or null to skip
    bertscore_batch_size: int = 64
    label: str | None = None  # row label in tables, e.g. "Full-Noised"; default from the noising mode


@dataclass(frozen=True)
class JobSpec:
    name: str  # the run ID: letters, digits, '-', '_' and '.'; no path separators
    site: SiteSpec = field(default_factory=SiteSpec)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)
    resources: Resources = field(default_factory=Resources)

    def library_config(self) -> Config:
        """The part of the spec the `diffusion` library takes."""
        return Config(data=self.data, model=self.model, diffusion=self.diffusion, train=self.train, sample=self.sample)

    def checkpoint_steps(self) -> list[int]:
        """The steps at which training leaves a checkpoint (the library's rule)."""
        return checkpoint_steps(self.train.steps, self.train.save_every)


# --- loading ---------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SITES_DIR = REPO / "env" / "sites"
DATA_PATH_KEYS = ("data.train", "data.valid", "data.test")
EVAL_SPLITS = ("valid", "test")
CLI_SET, CLI_SITE = "--set", "--site"  # the `file` of errors about command-line values

Where = tuple[str, int | None]  # (file, line) a value came from
Origin = dict[str, Where]  # dotted key -> where it was written


class SpecError(UserError, ValueError):
    """A job spec problem, located: 'FILE:LINE: KEY: what is wrong'."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, key: str = ""):
        self.file, self.line, self.key = file, line, key
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(f"{where}{key + ': ' if key else ''}{message}")


# PyYAML follows YAML 1.1, where 1e-4 (no dot) and 1.0e4 (unsigned exponent) are strings; a job
# spec reads them as the numbers they look like. The dumper quotes strings of that shape, so a
# frozen spec reads back exactly.
_EXP_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_STR_TAG, _MERGE_TAG = "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"


class _LineLoader(yaml.SafeLoader):
    """SafeLoader plus exponent floats; `_read_yaml` records the line of every mapping key."""


class _Dumper(yaml.SafeDumper):
    pass


for _cls in (_LineLoader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789"))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """A YAML file's top-level mapping and {dotted.key: line}; duplicate or non-name keys are errors."""
    file = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read ({getattr(err, 'strerror', None) or err})", file) from None
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        if not isinstance(node, yaml.MappingNode):
            raise SpecError("expected a mapping (key: value lines) at the top level", file, node.start_mark.line + 1)
        lines: dict[str, int] = {}
        _walk(node, "", lines, file)
        data = loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or err
        raise SpecError(f"not valid YAML: {problem}", file, mark.line + 1 if mark else None) from None
    finally:
        loader.dispose()
    return data, lines


def _walk(node: yaml.MappingNode, prefix: str, lines: dict[str, int], file: str) -> None:
    merged = []
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == _MERGE_TAG:  # `<<: *anchor`: its keys, unless written here too
            merged += value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            continue
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
            shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a collection"
            raise SpecError(f"keys must be names, got {shown!r}", file, line, prefix)
        key = _join(prefix, key_node.value)
        if key in lines:
            raise SpecError(f"duplicate key (first written on line {lines[key]})", file, line, key)
        lines[key] = line
        if isinstance(value_node, yaml.MappingNode):
            _walk(value_node, key, lines, file)
    for sub in merged:
        if isinstance(sub, yaml.MappingNode):
            sub_lines: dict[str, int] = {}
            _walk(sub, prefix, sub_lines, file)
            for key, line in sub_lines.items():
                lines.setdefault(key, line)


def _merge(base: dict, over: dict, base_origin: Origin, over_origin: Origin) -> tuple[dict, Origin]:
    """Deep-merge `over` onto `base` (mappings merge, anything else replaces), with origins."""
    origin = dict(base_origin)

    def merge(b: dict, o: dict, prefix: str) -> dict:
        out = dict(b)
        for key, value in o.items():
            dotted = _join(prefix, str(key))
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value, dotted)
            else:
                out[key] = value
                _drop(origin, dotted)
        return out

    merged = merge(base, over, "")
    origin.update(over_origin)
    return merged, origin


def _drop(origin: Origin, key: str) -> None:
    """Forget where `key` and everything under it came from."""
    for k in [k for k in origin if k == key or k.startswith(key + ".")]:
        del origin[k]


def _load_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, Origin]:
    data, lines = _read_yaml(path)
    file = str(path)
    origin = {key: (file, line) for key, line in lines.items()}
    if "base" not in data:
        return data, origin
    base, base_line = data.pop("base"), lines.get("base")
    _drop(origin, "base")
    if not isinstance(base, str) or not base.strip():
        raise SpecError("expected the file name of a base spec (relative to this file)", file, base_line, "base")
    base_path = path.parent / os.path.expanduser(base)
    here = (*chain, path.resolve())
    if base_path.resolve() in here:
        cycle = " -> ".join(str(p) for p in (*here, base_path.resolve()))
        raise SpecError(f"`base:` files include each other: {cycle}", file, base_line, "base")
    if not base_path.is_file():
        raise SpecError(f"no such file: {base_path}", file, base_line, "base")
    base_data, base_origin = _load_with_bases(base_path, here)
    return _merge(base_data, data, base_origin, origin)


# --- site profiles ---

def site_names() -> list[str]:
    """The profiles in env/sites/."""
    return sorted(p.stem for p in SITES_DIR.glob("*.yaml"))


def _site_content(site: dict, origin: Origin, prefix: str) -> tuple[dict, Origin]:
    """A site mapping (a file's, or an inline one) as spec data {"site": fields, **defaults}.

    `origin` is keyed relative to the mapping; `prefix` ("" or "site.") names its keys in errors.
    """
    site = dict(site)
    defaults = site.pop("defaults", None)
    if defaults is None:
        defaults = {}
    if not isinstance(defaults, dict):
        file, line = origin.get("defaults", (None, None))
        raise SpecError("expected a mapping of job spec sections (resources, evaluate, ...)", file, line,
                        prefix + "defaults")
    for key in ("name", "site", "base"):
        if key in defaults:
            file, line = origin.get(f"defaults.{key}", (None, None))
            raise SpecError("a site's defaults may not set this (only job spec sections)", file, line,
                            f"{prefix}defaults.{key}")
    out: Origin = {}
    for key, where in origin.items():
        if key.startswith("defaults."):
            out[key[len("defaults."):]] = where
        elif key != "defaults":
            out[f"site.{key}"] = where
    return {**defaults, "site": site}, out


def _site_profile(name, file: str | None, line: int | None) -> tuple[dict, Origin]:
    """env/sites/NAME.yaml as spec data (see _site_content); `file`/`line`: where NAME was given."""
    if not isinstance(name, str) or not RUN_ID.match(name) or ".." in name:
        raise SpecError(f"expected the name of a site profile ({', '.join(site_names())}) or a mapping, got {name!r}",
                        file, line, "site")
    path = SITES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SpecError(f"unknown site {name!r}; available: {', '.join(site_names())} (the files in {SITES_DIR})",
                        file, line, "site")
    data, lines = _read_yaml(path)
    content, origin = _site_content(data, {k: (str(path), n) for k, n in lines.items()}, "")
    content["site"].setdefault("name", name)
    return content, origin


def _apply_site(data: dict, origin: Origin, cli_site: str | None, top: str) -> tuple[dict, Origin]:
    """Put the site (profile, then the spec's inline fields) into data, its defaults under the spec."""
    value = data.pop("site", None)
    spec_where = origin.get("site", (top, None))
    inline_origin = {k[len("site."):]: w for k, w in origin.items() if k.startswith("site.")}
    _drop(origin, "site")
    if cli_site is not None:
        content, content_origin = _site_profile(cli_site, CLI_SITE, None)
    elif value is None or isinstance(value, str):
        content, content_origin = _site_profile(value or "local", *spec_where)
    elif isinstance(value, dict):
        content, content_origin = {"site": {}}, {}
    else:
        raise SpecError(f"expected a site name or a mapping of site fields, got {value!r}", *spec_where, "site")
    if isinstance(value, dict):
        inline, inline_origin = _site_content(value, inline_origin, "site.")
        content, content_origin = _merge(content, inline, content_origin, inline_origin)
    data, origin = _merge(content, data, content_origin, origin)
    if value is not None:
        origin["site"] = spec_where
    return data, origin


# --- overrides ---

def _schema_check(key: str) -> None:
    """Refuse a --set key that is not in the JobSpec schema, naming the valid keys where it stops."""
    parts = key.split(".")
    if not all(parts):
        raise SpecError("expected a dotted key such as train.steps", CLI_SET, None, key)
    cls = JobSpec
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise SpecError(f"unknown key; valid keys here: {', '.join(names)}", CLI_SET, None, key)
        tp = typing.get_type_hints(cls)[part]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(tp):
                raise SpecError(f"{'.'.join(parts[:i + 1])} is a value, not a section", CLI_SET, None, key)
            cls = tp


def _parse_value(raw: str, key: str):
    try:
        return yaml.load(raw, Loader=_LineLoader)
    except yaml.YAMLError as err:
        raise SpecError(f"value {raw!r} is not valid YAML ({getattr(err, 'problem', None) or err})",
                        CLI_SET, None, key) from None


def _dotted_keys(value: dict, prefix: str) -> list[str]:
    keys = []
    for k, v in value.items():
        keys.append(_join(prefix, str(k)))
        if isinstance(v, dict):
            keys += _dotted_keys(v, keys[-1])
    return keys


def _apply_override(data: dict, origin: Origin, item: str) -> None:
    if not isinstance(item, str) or "=" not in item:
        raise SpecError(f"expected KEY=VALUE (e.g. train.steps=100), got {item!r}", CLI_SET)
    key, raw = item.split("=", 1)
    key = key.strip()
    _schema_check(key)
    value = _parse_value(raw, key)
    if key == "site" and not isinstance(value, dict):
        raise SpecError("choose a site profile with --site NAME; --set site.FIELD=VALUE changes one field",
                        CLI_SET, None, key)
    node, parts = data, key.split(".")
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            node[part] = {}
            _drop(origin, ".".join(parts[:i + 1]))
        node = node[part]
    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):  # a mapping merges, as a base does
        node[last], _ = _merge(node[last], value, {}, {})
    else:
        node[last] = value
        _drop(origin, key)
    origin[key] = (CLI_SET, None)
    if isinstance(value, dict):
        origin.update({k: (CLI_SET, None) for k in _dotted_keys(value, key)})


# --- paths ---

_VAR = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})")


def _expand(value: str, key: str, origin: Origin, top: str) -> str:
    """`~` and $VAR / ${VAR} expanded; an unset variable is an error ($USER falls back to the login name)."""

    def var(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name in os.environ:
            return os.environ[name]
        if name == "USER":
            try:
                return getpass.getuser()
            except (KeyError, OSError):
                pass
        raise SpecError(f"environment variable {name} is not set (in {value!r})", *_locate(origin, key, top), key)

    return os.path.expanduser(_VAR.sub(var, value))


def _resolve_paths(data: dict, origin: Origin, top: str) -> None:
    """Data paths: expanded, and absolute against the folder of the file that wrote them."""
    for key in DATA_PATH_KEYS:
        section, name = key.split(".")
        value = data[section].get(name) if isinstance(data.get(section), dict) else None
        if not isinstance(value, str) or not value:
            continue
        path = Path(_expand(value, key, origin, top))
        if not path.is_absolute():
            file = origin.get(key, (CLI_SET, None))[0]
            path = (Path.cwd() if file in (CLI_SET, CLI_SITE) else Path(file).parent) / path
        data[section][name] = str(path.resolve())
    site = data.get("site")
    if isinstance(site, dict) and isinstance(site.get("results_root"), str):
        site["results_root"] = _expand(site["results_root"], "site.results_root", origin, top)


# --- building and checking ---

def load_spec(path: str | Path, overrides: Sequence[str] = (), site: str | None = None) -> JobSpec:
    """The resolved, validated JobSpec of a spec file (see the module doc)."""
    path = Path(path)
    top = str(path)
    if path.is_dir():
        raise SpecError("is a folder, not a job spec (a YAML file such as jobs/qqp_target.yaml)", top)
    if not path.is_file():
        raise SpecError("no such file", top)
    data, origin = _load_with_bases(path)
    data, origin = _apply_site(data, origin, site, top)
    for item in overrides:
        _apply_override(data, origin, item)
    _resolve_paths(data, origin, top)
    return _build(data, origin, top)


def _has(data, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _locate(origin: Origin, key: str, top: str, missing: bool = False) -> Where:
    """Where a dotted key (maybe with [i] list indices) was written, else where its nearest parent
    was; for a key missing everywhere, the top of the spec file."""
    parts = re.sub(r"\[\d+\]", "", key).split(".")
    while parts:
        dotted = ".".join(parts)
        if dotted in origin:
            return origin[dotted]
        parts.pop()
    return top, 1 if missing else None


def _build(data: dict, origin: Origin, top: str) -> JobSpec:
    try:
        spec = from_dict(JobSpec, data)
    except ConfigError as err:
        missing = not _has(data, re.sub(r"\[\d+\]", "", err.key))
        file, line = _locate(origin, err.key, top, missing)
        message = str(err)[len(err.key) + 2:] if err.key else str(err)
        raise SpecError(message, file, line, err.key) from None
    _validate(spec, origin, top)
    return spec


def _validate(spec: JobSpec, origin: Origin, top: str) -> None:
    """Checks beyond types: what would otherwise fail hours later on a cluster node."""

    def check(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise SpecError(message, *_locate(origin, key, top), key)

    def at_least(key: str, low: float, optional: bool = False) -> None:
        value = _value(spec, key)
        check((optional and value is None) or value >= low, key, f"must be at least {low}, got {value!r}")

    check(bool(RUN_ID.match(spec.name)) and ".." not in spec.name, "name",
          f"invalid run name {spec.name!r}: letters, digits, '.', '-', '_' (first a letter or digit); no '/' or '..'")
    check(spec.site.executor in EXECUTORS, "site.executor",
          f"must be one of {', '.join(EXECUTORS)}, got {spec.site.executor!r}")

    d, m, t, s = spec.data, spec.model, spec.train, spec.sample
    check(bool(d.train or d.hub_dataset or d.synthetic_pairs), "data",
          "name a source: data.train, data.hub_dataset or data.synthetic_pairs")
    at_least("data.synthetic_pairs", 1, optional=True)
    at_least("data.max_train_pairs", 1, optional=True)
    at_least("data.vocab_size", 1)
    check(d.seq_len >= MIN_SEQ_LEN, "data.seq_len", f"must be at least {MIN_SEQ_LEN} ([CLS] x [SEP] [SEP] [CLS] y [SEP] "
          f"with one source and one target token), got {d.seq_len}")
    check(d.target_ratio >= 0, "data.target_ratio", f"must be at least 0, got {d.target_ratio}")
    at_least("data.target_margin", 3)  # [CLS], one token and [SEP]
    check(d.seq_len <= m.max_positions, "data.seq_len",
          f"{d.seq_len} is longer than model.max_positions ({m.max_positions})")
    split = spec.evaluate.split
    check(split in EVAL_SPLITS, "evaluate.split", f"must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    # the synthetic corpus and the hub dataset bring every split; local files only those named
    has_split = d.synthetic_pairs or (d.hub_dataset and not d.train) or getattr(d, split)
    check(bool(has_split), f"data.{split}", f"not set, but evaluate.split is {split!r}: name the {split} jsonl file")

    for key in ("embed_dim", "hidden_size", "num_layers", "num_heads", "ffn_size", "time_embed_dim", "max_positions"):
        at_least(f"model.{key}", 1)
    at_least("model.vocab_size", 0)
    check(m.hidden_size % m.num_heads == 0, "model.num_heads",
          f"model.hidden_size ({m.hidden_size}) is not a multiple of num_heads ({m.num_heads})")
    check(0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    at_least("diffusion.steps", 1)
    at_least("diffusion.anchor_loss", 0)

    for key in ("steps", "batch_size", "micro_batch_size", "log_every"):
        at_least(f"train.{key}", 1)
    check(t.batch_size % t.micro_batch_size == 0, "train.batch_size",
          f"{t.batch_size} is not a multiple of train.micro_batch_size ({t.micro_batch_size})")
    check(1 <= t.save_every <= t.steps, "train.save_every",
          f"must be between 1 and train.steps ({t.steps}), got {t.save_every}")
    check(t.lr > 0, "train.lr", f"must be positive, got {t.lr}")
    check(0 <= t.ema_rate <= 1, "train.ema_rate", f"must be in [0, 1], got {t.ema_rate}")
    check(t.zero_stage in (0, 1, 2, 3), "train.zero_stage", f"must be 0, 1, 2 or 3, got {t.zero_stage}")
    at_least("train.weight_decay", 0)
    check(0 < t.adam_beta2 < 1, "train.adam_beta2", f"must be in (0, 1), got {t.adam_beta2}")
    at_least("train.grad_clip", 0)
    at_least("train.warmup_steps", 0)
    check(t.time_limit_s is None or t.time_limit_s > 0, "train.time_limit_s", f"must be positive, got {t.time_limit_s}")

    at_least("sample.steps", 1, optional=True)
    at_least("sample.clamp_step", 0)
    check(0 <= s.eta <= 1, "sample.eta", f"must be in [0, 1], got {s.eta}")
    check(s.eta == 0 or s.solver == "ddim", "sample.eta", f"is read by the ddim solver only, not {s.solver!r}")
    check(s.solver == "ddpm" or (s.steps or spec.diffusion.steps) >= 2, "sample.steps", f"{s.solver} needs at least 2 steps")
    at_least("sample.batch_size", 1)
    at_least("sample.pad_penalty", 0)
    at_least("sample.min_target_tokens", 0)
    check(not s.min_target_tokens or s.rounding != "soft", "sample.min_target_tokens",
          "needs a rounding that picks tokens (l2 or logits), not soft")
    # a trimmed target has target_margin positions at least: [CLS], the tokens, [SEP]
    check(not spec.data.trim or s.min_target_tokens <= spec.data.target_margin - 2, "sample.min_target_tokens",
          f"{s.min_target_tokens} do not fit a trimmed target of data.target_margin {spec.data.target_margin} "
          f"positions with its [CLS] and [SEP]")
    check(s.soft_temperature > 0, "sample.soft_temperature", f"must be positive, got {s.soft_temperature}")
    check(s.soft_temperature == 1 or s.rounding == "soft", "sample.soft_temperature",
          f"is read by rounding soft only (sample.rounding is {s.rounding!r})")
    diffusion = spec.diffusion
    check(0 <= diffusion.source_noise <= 1, "diffusion.source_noise", f"must be in [0, 1], got {diffusion.source_noise}")
    check(diffusion.source_noise == 1 or diffusion.noising == "full", "diffusion.source_noise",
          f"is read by full noising only (diffusion.noising is {diffusion.noising!r})")
    check(diffusion.source_noise == 1 or s.full_mode == "conditional", "diffusion.source_noise",
          f"{diffusion.source_noise} needs sample.full_mode conditional: joint sampling denoises source and target "
          f"at one level")
    check(not spec.model.width_mask or spec.data.trim, "model.width_mask",
          "needs data.trim: untrimmed, every sequence is seq_len wide and there is no padding past it to mask")
    check(s.use_ema, "sample.use_ema", "false is not supported: a checkpoint exports only its EMA weights for sampling "
          "(the raw ones stay in the DeepSpeed state)")
    at_least("sample.max_examples", 1, optional=True)
    check(len(s.seeds) > 0, "sample.seeds", "needs at least one seed")
    at_least("evaluate.bertscore_batch_size", 1)

    for stage in (f.name for f in dataclasses.fields(Resources)):
        for key, low in (("gpus", 0), ("ranks", 1), ("cpus", 1), ("mem_gb", 1), ("time_min", 1),
                         ("array_parallelism", 1)):
            at_least(f"resources.{stage}.{key}", low)
        nodes = getattr(spec.resources, stage).nodes
        # a job's task runs once per node: N nodes would run it N times on the same run folder
        check(nodes == 1, f"resources.{stage}.nodes", f"must be 1, got {nodes}: " + (
            "training across nodes is not supported yet (each node would start its own torchrun on the same run "
            "folder); train on one node with up to one rank per GPU" if stage == "train" else
            f"a {stage} task runs on one node, and each further node would run it again"))


def _value(spec, key: str):
    for part in key.split("."):
        spec = getattr(spec, part)
    return spec


def freeze(spec: JobSpec) -> str:
    """YAML of the fully resolved spec, as stored in the run folder."""
    return yaml.dump(to_dict(spec), Dumper=_Dumper, sort_keys=False)


def load_frozen(path: str | Path) -> JobSpec:
    """A spec frozen by `freeze`, read back as is: no base, site, overrides or path resolution."""
    path = Path(path)
    data, lines = _read_yaml(path)
    return _build(data, {k: (str(path), n) for k, n in lines.items()}, str(path))
