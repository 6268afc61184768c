"""Job specs: the YAML a user submits, as frozen typed dataclasses.

A spec holds the library's config sections (data, model, diffusion, train, sample: see
diffusion/config.py) plus what the pipeline needs: the run's name, evaluation settings, the
site profile and per-stage resources. `load_spec` resolves `base:` files, merges the site
profile from env/sites/ underneath, applies `--set key.sub=value` overrides and validates,
naming file, line and key in every error.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from diffusion.config import (Config, ConfigError, DataConfig, DiffusionConfig, ModelConfig, SampleConfig,
                              TrainConfig, from_dict, to_dict)


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
    results_root: str = "runs"  # relative paths are relative to the repo root (the folder holding jobs/)
    account: str | None = None  # Slurm account / PJM group (-g)
    qos: str | None = None
    partition: str | None = None  # default partition / resource group of every stage
    gpu_partition: str | None = None  # default for stages that ask for GPUs
    modules: tuple[str, ...] = ()  # `module load` lines in every job
    setup: tuple[str, ...] = ()  # shell lines run before each job (e.g. activate a venv)
    python: str = "python3"  # the interpreter jobs run


@dataclass(frozen=True)
class EvaluateSpec:
    split: str = "valid"  # the split sampled and scored: valid (DiffuSeq's) or test
    bertscore_model: str | None = "microsoft/deberta-xlarge-mnli"  # name, local path, or null to skip
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
        """The steps at which training leaves a checkpoint: every save_every, and the last step."""
        every, last = self.train.save_every, self.train.steps
        return sorted({*range(every, last + 1, every), last})


# --- loading ---------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SITES_DIR = REPO / "env" / "sites"
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DATA_PATH_KEYS = ("data.train", "data.valid", "data.test")


class SpecError(ValueError):
    """A job spec problem, located: 'FILE:LINE: KEY: what is wrong'."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, key: str = ""):
        self.file, self.line, self.key = file, line, key
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(f"{where}{key + ': ' if key else ''}{message}")


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that records the line of every mapping key, as {dotted.key: line}."""


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(f"cannot read ({err.strerror})", str(path)) from None
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise SpecError(f"not valid YAML: {getattr(err, 'problem', err)}", str(path), mark.line + 1 if mark else None) from None
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise SpecError("expected a mapping at the top level", str(path), node.start_mark.line + 1)
    lines: dict[str, int] = {}

    def walk(n, prefix):
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)

    walk(node, "")
    return _LineLoader(text).get_single_data() or {}, lines


def _merge(base: dict, over: dict, base_origin: dict, over_origin: dict, prefix: str = "") -> tuple[dict, dict]:
    """Deep-merge `over` onto `base`; origins map dotted keys to (file, line)."""
    merged, origin = dict(base), {k: v for k, v in base_origin.items()}
    for key, value in over.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key], sub_origin = _merge(merged[key], value, origin, over_origin, dotted)
            origin.update(sub_origin)
        else:
            merged[key] = value
            for k in [k for k in origin if k == dotted or k.startswith(dotted + ".")]:
                del origin[k]
        origin.update({k: v for k, v in over_origin.items() if k == dotted or k.startswith(dotted + ".")})
    return merged, origin


def _load_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, dict]:
    path = path.resolve()
    if path in seen:
        raise SpecError("`base:` files include each other: " + " -> ".join(map(str, (*seen, path))), str(path))
    data, lines = _read_yaml(path)
    origin = {key: (str(path), line) for key, line in lines.items()}
    base = data.pop("base", None)
    origin.pop("base", None)
    if base is None:
        return data, origin
    if not isinstance(base, str):
        raise SpecError("expected a file name", str(path), lines.get("base"), "base")
    base_path = path.parent / base
    if not base_path.is_file():
        raise SpecError(f"no such file {base_path}", str(path), lines.get("base"), "base")
    base_data, base_origin = _load_with_bases(base_path, (*seen, path))
    return _merge(base_data, data, base_origin, origin)


def _site_profile(name: str) -> tuple[dict, dict]:
    path = SITES_DIR / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in SITES_DIR.glob("*.yaml"))
        raise SpecError(f"unknown site {name!r}; available: {', '.join(available)}", key="site")
    data, lines = _read_yaml(path)
    return data, {key: (str(path), line) for key, line in lines.items()}


def _schema_keys(cls, path: list[str]) -> tuple[bool, list[str]]:
    """Whether the dotted path exists in the JobSpec schema, and the valid keys where it stops."""
    for i, part in enumerate(path):
        names = {f.name: f for f in dataclasses.fields(cls)}
        if part not in names:
            return False, list(names)
        hint = typing.get_type_hints(cls)[part]
        if dataclasses.is_dataclass(hint):
            cls = hint
        elif i < len(path) - 1:
            return False, []
    return True, []


def _apply_override(data: dict, origin: dict, item: str) -> None:
    if "=" not in item:
        raise SpecError(f"expected KEY=VALUE, got {item!r}", "--set")
    key, raw = item.split("=", 1)
    key = key.strip()
    ok, valid = _schema_keys(JobSpec, key.split("."))
    if not ok:
        raise SpecError(f"unknown key; valid keys here: {', '.join(valid)}" if valid else "unknown key", "--set", None, key)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise SpecError(f"value {raw!r} is not valid YAML ({err})", "--set", None, key) from None
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    for k in [k for k in origin if k == key or k.startswith(key + ".")]:
        del origin[k]
    origin[key] = ("--set", None)


def _locate(origin: dict, key: str, top: str) -> tuple[str, int | None]:
    """(file, line) of a dotted key, or of its nearest parent that has one."""
    parts = key.replace("[", ".[").split(".")
    while parts:
        dotted = ".".join(parts).replace(".[", "[")
        if dotted in origin:
            return origin[dotted]
        parts.pop()
    return top, None


def _resolve_data_paths(data: dict, origin: dict) -> None:
    for key in DATA_PATH_KEYS:
        section, name = key.split(".")
        value = data.get(section, {}).get(name) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and not Path(value).is_absolute():
            file, _ = origin.get(key, ("--set", None))
            base = Path(file).parent if file != "--set" else Path.cwd()
            data[section][name] = str((base / value).resolve())


def load_spec(path: str | Path, overrides: Sequence[str] = (), site: str | None = None) -> JobSpec:
    """The resolved, validated JobSpec of a spec file (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("no such file", str(path))
    data, origin = _load_with_bases(path)
    site_value = data.get("site")
    site_name = site or (site_value if isinstance(site_value, str) else None)
    if site_name is not None or site_value is None:
        site_data, site_origin = _site_profile(site_name or "local")
        defaults = site_data.pop("defaults", {}) or {}
        defaults_origin = {k[len("defaults."):]: v for k, v in site_origin.items() if k.startswith("defaults.")}
        site_origin = {f"site.{k}": v for k, v in site_origin.items() if not k.startswith("defaults")}
        site_data.setdefault("name", site_name or "local")
        spec_site = data.pop("site", None)
        data, origin = _merge(defaults, data, defaults_origin, {k: v for k, v in origin.items() if k != "site"})
        data["site"] = site_data if not isinstance(spec_site, dict) else {**site_data, **spec_site}
        origin.update(site_origin)
    for item in overrides:
        _apply_override(data, origin, item)
    _resolve_data_paths(data, origin)
    return _build(data, origin, str(path))


def _build(data: dict, origin: dict, top: str) -> JobSpec:
    try:
        spec = from_dict(JobSpec, data)
    except ConfigError as err:
        file, line = _locate(origin, err.key, top)
        message = str(err)[len(err.key) + 2:] if err.key else str(err)
        raise SpecError(message, file, line, err.key) from None
    _validate(spec, origin, top)
    return spec


def _validate(spec: JobSpec, origin: dict, top: str) -> None:
    def fail(key, message):
        file, line = _locate(origin, key, top)
        raise SpecError(message, file, line, key)

    if not RUN_NAME.match(spec.name) or ".." in spec.name:
        fail("name", f"invalid run name {spec.name!r}: letters, digits, '.', '-', '_'; no '/' or '..'")
    if spec.train.batch_size % spec.train.micro_batch_size:
        fail("train.batch_size", f"{spec.train.batch_size} is not a multiple of train.micro_batch_size "
                                 f"{spec.train.micro_batch_size}")
    if not 1 <= spec.train.save_every <= spec.train.steps:
        fail("train.save_every", f"must be between 1 and train.steps ({spec.train.steps})")
    if not (spec.data.train or spec.data.hub_dataset or spec.data.synthetic_pairs):
        fail("data", "name a source: data.train, data.hub_dataset or data.synthetic_pairs")
    if spec.site.executor not in ("local", "slurm", "pjm"):
        fail("site.executor", f"must be local, slurm or pjm, got {spec.site.executor!r}")
    if spec.evaluate.split not in ("valid", "test"):
        fail("evaluate.split", f"must be valid or test, got {spec.evaluate.split!r}")
    if spec.sample.steps is not None and spec.sample.steps < 1 or not spec.sample.seeds:
        fail("sample", "sample.steps must be positive and sample.seeds non-empty")


def freeze(spec: JobSpec) -> str:
    """YAML of the fully resolved spec, as stored in the run folder."""
    return yaml.safe_dump(to_dict(spec), sort_keys=False)


def load_frozen(path: str | Path) -> JobSpec:
    """A spec frozen by `freeze` (no base, site or overrides to resolve)."""
    path = Path(path)
    data, lines = _read_yaml(path)
    return _build(data, {k: (str(path), line) for k, line in lines.items()}, str(path))
