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

import copy
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
class Decoding:
    """A further way to decode checkpoints: its name (in task names, folders and tables) and the
    whole sample section it decodes with. A spec or study writes it as name -> sample.* overrides
    of the spec's own sample section (`decodings: {dpm-20: {sample.steps: 20}}`)."""

    name: str
    sample: SampleConfig

    def check(self) -> None:
        require(bool(DECODING_NAME.match(self.name)), "name",
                f"invalid decoding name {self.name!r}: letters, digits, '-' and '_' (first a letter or digit)")


DECODING_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
DECODE_CHECKPOINTS = ("last", "all")


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
    # each checkpoint is decoded with `sample`; these decode again (the last checkpoint, or all)
    decodings: tuple[Decoding, ...] = ()
    decode_checkpoints: str = "last"

    def library_config(self, decoding: str = "") -> Config:
        """The part of the spec the `diffusion` library takes (sampling as `decoding` says)."""
        return Config(data=self.data, model=self.model, diffusion=self.diffusion, train=self.train,
                      sample=self.decoding(decoding).sample if decoding else self.sample)

    def decoding(self, name: str) -> Decoding:
        return next(d for d in self.decodings if d.name == name)

    def checkpoint_steps(self) -> list[int]:
        """The steps at which training leaves a checkpoint (the library's rule)."""
        return checkpoint_steps(self.train.steps, self.train.save_every)

    def decoded_points(self) -> list[tuple[int, str]]:
        """(checkpoint step, decoding name) of every sample task: each checkpoint with the spec's
        own decoding (""), then each named decoding of the last checkpoint or of all."""
        steps = self.checkpoint_steps()
        again = steps if self.decode_checkpoints == "all" else steps[-1:]
        return [(step, "") for step in steps] + [(step, d.name) for step in again for d in self.decodings]

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
        require(self.decode_checkpoints in DECODE_CHECKPOINTS, "decode_checkpoints",
                f"must be one of {', '.join(DECODE_CHECKPOINTS)}, got {self.decode_checkpoints!r}")
        names = [d.name for d in self.decodings]
        for i, decoding in enumerate(self.decodings):
            require(decoding.name not in names[:i], f"decodings.{decoding.name}", "named twice")
            try:  # the library's rules between sections, with this decoding's sample section
                self.library_config(decoding.name).check()
            except ConfigError as err:
                raise ConfigError(f"decodings.{decoding.name}.{err.key}", err.message) from None


# --- loading ---------------------------------------------------------------------------------

DATA_PATH_KEYS = ("data.train", "data.valid", "data.test")
EVAL_SPLITS = ("valid", "test")

# --- overrides ---

def _schema_check(key: str, where: Where = (CLI_SET, None)) -> None:
    """Refuse an override key that is not in the JobSpec schema, naming the valid keys where it stops."""
    parts = key.split(".")
    if not all(parts):
        raise SpecError("expected a dotted key such as train.steps", *where, key)
    cls = JobSpec
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise SpecError(f"unknown key; valid keys here: {', '.join(names)}", *where, key)
        tp = typing.get_type_hints(cls)[part]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(tp):
                raise SpecError(f"{'.'.join(parts[:i + 1])} is a value, not a section", *where, key)
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


def parse_override(item: str) -> tuple[str, object]:
    """(dotted key, value) of a `--set KEY=VALUE` (the value read as YAML)."""
    if not isinstance(item, str) or "=" not in item:
        raise SpecError(f"expected KEY=VALUE (e.g. train.steps=100), got {item!r}", CLI_SET)
    key, raw = item.split("=", 1)
    key = key.strip()
    return key, _parse_value(raw, key)


def set_value(data: dict, origin: Origin, key: str, value, where: Where = (CLI_SET, None)) -> None:
    """Override one dotted key (a mapping merges, anything else replaces), as `--set` and a study's
    variants do; `where`: the file and line that asked for it."""
    _schema_check(key, where)
    if key == "site" and not isinstance(value, dict):
        raise SpecError("choose a site profile with --site NAME; --set site.FIELD=VALUE changes one field", *where, key)
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
    origin[key] = where
    if isinstance(value, dict):
        origin.update({k: where for k in _dotted_keys(value, key)})


def _resolve_decodings(data: dict, origin: Origin, top: str) -> None:
    """`decodings: {NAME: {sample.KEY: VALUE, ...}}` as the frozen form, a list of {name, sample}
    whose sample section is the spec's own with those overrides (after --set, so that
    `--set sample.max_examples=200` decodes the same pairs every way)."""
    given = data.get("decodings")
    if given is None or isinstance(given, list):  # none, or already resolved (a frozen spec)
        return
    if not isinstance(given, dict):
        raise SpecError("expected a mapping: decoding name -> sample.* overrides, e.g. dpm-20: {sample.steps: 20}",
                        *_locate(origin, "decodings", top), "decodings")
    resolved = []
    for name, overrides in given.items():
        key = f"decodings.{name}"
        where = _locate(origin, key, top)
        if not DECODING_NAME.match(str(name)):
            raise SpecError("invalid decoding name: letters, digits, '-' and '_' (first a letter or digit)", *where, key)
        if not isinstance(overrides, dict):
            raise SpecError("expected sample.* overrides, e.g. {sample.steps: 20} ({} decodes as the spec does)",
                            *where, key)
        section, mine = {"sample": copy.deepcopy(data.get("sample") or {})}, {}
        for sub, value in overrides.items():
            sub_where = _locate(origin, f"{key}.{sub}", top)
            if sub != "sample" and not str(sub).startswith("sample."):
                raise SpecError("a decoding changes sample.* keys only", *sub_where, f"{key}.{sub}")
            set_value(section, mine, sub, value, sub_where)
        try:
            from_dict(SampleConfig, section["sample"], f"{key}.sample")
        except ConfigError as err:
            inner = err.key.removeprefix(f"{key}.")
            raise SpecError(err.message, *mine.get(inner, where), err.key) from None
        resolved.append({"name": str(name), "sample": section["sample"]})
    data["decodings"] = resolved


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
        set_value(data, origin, *parse_override(item))
    return resolve(data, origin, top)


def resolve(data: dict, origin: Origin, top: str) -> JobSpec:
    """The JobSpec of merged spec data: data paths made absolute, decodings resolved, checked."""
    _resolve_paths(data, origin, top)
    _resolve_decodings(data, origin, top)
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
