"""Job specs: the YAML a user submits, as frozen typed dataclasses.

A spec holds the library's config sections (data, model, diffusion, train, sample: see
diffusion/config.py) plus what the pipeline needs: the run's name, evaluation settings, the
site profile and per-stage resources. `load_spec` resolves `base:` files, merges the site
profile underneath (pipeline/sites.py says where profiles are found), applies `--set key.sub=value` overrides and validates,
naming file, line and key in every error ("jobs/x.yaml:12: train.stpes: unknown key; ...").

How a spec is resolved, lowest precedence first:
  1. the site profile's `defaults:` (any job spec sections, e.g. resources.train.partition);
  2. the `base:` chain, base first (a path relative to the file naming it; bases may chain);
  3. the spec file itself;
  4. `--set key.sub=value` (value read as YAML: 100, [1, 2], null; a mapping merges).
Mappings merge key by key; any other value (lists included) replaces. `site:` is a profile name
(a profile NAME, pipeline/sites.py; `--site NAME` wins; default "local") or an inline mapping of the same
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
from diffusion.config import (Config, ConfigError, DataConfig, DiffusionConfig, ModelConfig, SampleConfig,
                              TrainConfig, at_least, from_dict, require, to_dict)
from diffusion.manifest import checkpoint_steps

from .backends import NAMES as EXECUTORS  # names only: no scheduler module is imported
from .layout import RUN_ID
from .sites import apply_site
from .spec_yaml import CLI_SET, CLI_SITE, Dumper, LineLoader, Origin, SpecError, Where, drop, join, load_with_bases, \
    merge, read_yaml


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

    def check(self) -> None:
        for name, low in (("gpus", 0), ("ranks", 1), ("cpus", 1), ("mem_gb", 1), ("time_min", 1),
                          ("array_parallelism", 1)):
            at_least(self, name, low)


@dataclass(frozen=True)
class Resources:
    preprocess: StageResources = field(default_factory=lambda: StageResources(cpus=4, mem_gb=16, time_min=60))
    train: StageResources = field(default_factory=lambda: StageResources(gpus=4, cpus=16, mem_gb=64, time_min=1440))
    sample: StageResources = field(default_factory=lambda: StageResources(gpus=1, cpus=4, mem_gb=32, time_min=720))
    evaluate: StageResources = field(default_factory=lambda: StageResources(gpus=1, cpus=4, mem_gb=32, time_min=120))
    aggregate: StageResources = field(default_factory=lambda: StageResources(cpus=1, mem_gb=4, time_min=30))

    def check(self) -> None:
        for stage in (f.name for f in dataclasses.fields(self)):
            nodes = getattr(self, stage).nodes
            # a job's task runs once per node: N nodes would run it N times on the same run folder
            require(nodes == 1, f"{stage}.nodes", f"must be 1, got {nodes}: " + (
                "training across nodes is not supported yet (each node would start its own torchrun on the same run "
                "folder); train on one node with up to one rank per GPU" if stage == "train" else
                f"a {stage} task runs on one node, and each further node would run it again"))


@dataclass(frozen=True)
class SiteSpec:
    """A cluster's profile (pipeline/sites.py), merged under the job spec."""

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

    def check(self) -> None:
        require(self.executor in EXECUTORS, "executor", f"must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")


@dataclass(frozen=True)
class EvaluateSpec:
    split: str = "valid"  # the split sampled and scored: valid (DiffuSeq's) or test
    bertscore_model: str | None = DEFAULT_BERTSCORE_MODEL  # name, local path, or null to skip
    bertscore_batch_size: int = 64
    label: str | None = None  # row label in tables, e.g. "Full-Noised"; default from the noising mode

    def check(self) -> None:
        require(self.split in EVAL_SPLITS, "split", f"must be one of {', '.join(EVAL_SPLITS)}, got {self.split!r}")
        at_least(self, "bertscore_batch_size", 1)


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

    def check(self) -> None:
        """What crosses sections (each has checked its own values): the library's rules, then the
        pipeline's."""
        require(bool(RUN_ID.match(self.name)) and ".." not in self.name, "name",
                f"invalid run name {self.name!r}: letters, digits, '.', '-', '_' (first a letter or digit); no '/' or '..'")
        self.library_config().check()
        d, split = self.data, self.evaluate.split
        # the synthetic corpus and the hub dataset bring every split; local files only those named
        has_split = d.synthetic_pairs or (d.hub_dataset and not d.train) or getattr(d, split)
        require(bool(has_split), f"data.{split}", f"not set, but evaluate.split is {split!r}: name the {split} jsonl file")


# --- loading ---------------------------------------------------------------------------------

DATA_PATH_KEYS = ("data.train", "data.valid", "data.test")
EVAL_SPLITS = ("valid", "test")

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
        return yaml.load(raw, Loader=LineLoader)
    except yaml.YAMLError as err:
        raise SpecError(f"value {raw!r} is not valid YAML ({getattr(err, 'problem', None) or err})",
                        CLI_SET, None, key) from None


def _dotted_keys(value: dict, prefix: str) -> list[str]:
    keys = []
    for k, v in value.items():
        keys.append(join(prefix, str(k)))
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
            drop(origin, ".".join(parts[:i + 1]))
        node = node[part]
    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):  # a mapping merges, as a base does
        node[last], _ = merge(node[last], value, {}, {})
    else:
        node[last] = value
        drop(origin, key)
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
    data, origin = load_with_bases(path)
    data, origin = apply_site(data, origin, site, top)
    for item in overrides:
        _apply_override(data, origin, item)
    _resolve_paths(data, origin, top)
    return _build(data, origin, top)


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
    """The JobSpec, its types and rules checked (the library's sections by the library); an error
    located where its key was written."""
    try:
        return from_dict(JobSpec, data)
    except ConfigError as err:
        file, line = _locate(origin, err.key, top, err.missing)
        raise SpecError(err.message, file, line, err.key) from None


def freeze(spec: JobSpec) -> str:
    """YAML of the fully resolved spec, as stored in the run folder."""
    return yaml.dump(to_dict(spec), Dumper=Dumper, sort_keys=False)


def load_frozen(path: str | Path) -> JobSpec:
    """A spec frozen by `freeze`, read back as is: no base, site, overrides or path resolution."""
    path = Path(path)
    data, lines = read_yaml(path)
    return _build(data, {k: (str(path), n) for k, n in lines.items()}, str(path))
