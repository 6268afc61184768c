"""Reading job spec YAML with the file and line of every key, so that each error can say where.

`read_yaml` gives a file's mapping and {dotted.key: line}; `load_with_bases` follows `base:`
files, merging each spec over its base (mappings key by key, anything else replaces) and keeping
where every value was written (`Origin`). Numbers like 1e-4 read as floats (PyYAML alone reads a
string), and `Dumper` writes them back so that a frozen spec reads back exactly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from .errors import UserError

Where = tuple[str, "int | None"]  # (file, line) a value came from
Origin = dict[str, Where]  # dotted key -> where it was written
CLI_SET, CLI_SITE = "--set", "--site"  # the `file` of errors about command-line values


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


class LineLoader(yaml.SafeLoader):
    """SafeLoader plus exponent floats; `read_yaml` records the line of every mapping key."""


class Dumper(yaml.SafeDumper):
    pass


for _cls in (LineLoader, Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789"))


def join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """A YAML file's top-level mapping and {dotted.key: line}; duplicate or non-name keys are errors."""
    file = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read ({getattr(err, 'strerror', None) or err})", file) from None
    loader = LineLoader(text)
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
        key = join(prefix, key_node.value)
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


def merge(base: dict, over: dict, base_origin: Origin, over_origin: Origin) -> tuple[dict, Origin]:
    """Deep-merge `over` onto `base` (mappings merge, anything else replaces), with origins."""
    origin = dict(base_origin)

    def merge(b: dict, o: dict, prefix: str) -> dict:
        out = dict(b)
        for key, value in o.items():
            dotted = join(prefix, str(key))
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value, dotted)
            else:
                out[key] = value
                drop(origin, dotted)
        return out

    merged = merge(base, over, "")
    origin.update(over_origin)
    return merged, origin


def drop(origin: Origin, key: str) -> None:
    """Forget where `key` and everything under it came from."""
    for k in [k for k in origin if k == key or k.startswith(key + ".")]:
        del origin[k]


def load_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, Origin]:
    data, lines = read_yaml(path)
    file = str(path)
    origin = {key: (file, line) for key, line in lines.items()}
    if "base" not in data:
        return data, origin
    base, base_line = data.pop("base"), lines.get("base")
    drop(origin, "base")
    if not isinstance(base, str) or not base.strip():
        raise SpecError("expected the file name of a base spec (relative to this file)", file, base_line, "base")
    base_path = path.parent / os.path.expanduser(base)
    here = (*chain, path.resolve())
    if base_path.resolve() in here:
        cycle = " -> ".join(str(p) for p in (*here, base_path.resolve()))
        raise SpecError(f"`base:` files include each other: {cycle}", file, base_line, "base")
    if not base_path.is_file():
        raise SpecError(f"no such file: {base_path}", file, base_line, "base")
    base_data, base_origin = load_with_bases(base_path, here)
    return merge(base_data, data, base_origin, origin)
