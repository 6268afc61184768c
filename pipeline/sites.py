"""Site profiles: a cluster's scheduler, partitions, account, modules and results root, merged
under a job spec (`site: NAME` or `--site NAME`), or written inline in the spec.

A profile NAME is the file NAME.yaml in the first of these folders that has it:

    $PIPELINE_SITES                              the user's own folder(s), ':'-separated
    $XDG_CONFIG_HOME/textdiffusion-pipeline/sites (default ~/.config/...): the user's own
    pipeline/site_profiles/                      the profiles shipped with the package

so a user's profile wins over a shipped one of the same name, and an installed package (not a
checkout) finds both.
"""

from __future__ import annotations

import os
from pathlib import Path

from .layout import RUN_ID
from .spec_yaml import CLI_SITE, Origin, SpecError, drop, merge, read_yaml

SHIPPED = Path(__file__).resolve().parent / "site_profiles"  # package data


def site_dirs() -> list[Path]:
    """Where profiles are looked for, first wins."""
    own = [Path(os.path.expanduser(d)) for d in os.environ.get("PIPELINE_SITES", "").split(os.pathsep) if d]
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "textdiffusion-pipeline" / "sites"
    return [*own, config, SHIPPED]


def site_path(name: str) -> Path | None:
    return next((d / f"{name}.yaml" for d in site_dirs() if (d / f"{name}.yaml").is_file()), None)


def site_names() -> list[str]:
    """Every profile that can be named."""
    return sorted({p.stem for d in site_dirs() if d.is_dir() for p in d.glob("*.yaml")})


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
    """Profile NAME as spec data (see _site_content); `file`/`line`: where NAME was given."""
    if not isinstance(name, str) or not RUN_ID.match(name) or ".." in name:
        raise SpecError(f"expected the name of a site profile ({', '.join(site_names())}) or a mapping, got {name!r}",
                        file, line, "site")
    path = site_path(name)
    if path is None:
        raise SpecError(f"unknown site {name!r}; available: {', '.join(site_names())} (profiles are looked for in "
                        f"{', '.join(map(str, site_dirs()))})", file, line, "site")
    data, lines = read_yaml(path)
    content, origin = _site_content(data, {k: (str(path), n) for k, n in lines.items()}, "")
    content["site"].setdefault("name", name)
    return content, origin


def apply_site(data: dict, origin: Origin, cli_site: str | None, top: str) -> tuple[dict, Origin]:
    """Put the site (profile, then the spec's inline fields) into data, its defaults under the spec."""
    value = data.pop("site", None)
    spec_where = origin.get("site", (top, None))
    inline_origin = {k[len("site."):]: w for k, w in origin.items() if k.startswith("site.")}
    drop(origin, "site")
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
        content, content_origin = merge(content, inline, content_origin, inline_origin)
    data, origin = merge(content, data, content_origin, origin)
    if value is not None:
        origin["site"] = spec_where
    return data, origin
