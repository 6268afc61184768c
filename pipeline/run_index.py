"""Where the user's runs are: a small index on the login node, written by `pipeline submit`, so
that `status`, `watch`, `retry`, `cancel`, `repair` and `results` find a run wherever its site
profile's results root put it, from any directory, without --root.

    $XDG_STATE_HOME/textdiffusion-pipeline/runs.json   (default ~/.local/state/...)
    {"runs": {"qqp-full": ["/work/gk77/u123/runs/qqp-full", ...]}}    most recent last

The run folders stay the truth: a folder that no longer holds a run is passed over. The current
directory's `runs/` comes first (two checkouts may each hold a run of one name); a run the index
knows in two other places is an error that names both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffusion import atomic, locks

from .errors import UserError, write_problem
from .layout import RUN_ID, RunLayout, validate_run_id

DEFAULT_ROOT = "runs"  # the results root when neither --root, $PIPELINE_ROOT nor a site names one


def index_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "textdiffusion-pipeline" / "runs.json"


def _read() -> dict[str, list[str]]:
    try:
        runs = json.loads(index_path().read_text()).get("runs")
    except (OSError, ValueError, AttributeError):
        return {}  # none yet, or unreadable: the runs themselves are where they are
    return runs if isinstance(runs, dict) else {}


def remember(name: str, folder: Path) -> str | None:
    """Record where a run (or a study) was submitted; what went wrong (a read-only home, say),
    else None. A run that cannot be remembered still runs: --root finds it."""
    path = index_path()
    try:
        with locks.exclusive(path.with_suffix(".lock"), what="pipeline submit", wait=True):
            runs = _read()
            folders = [f for f in runs.get(name, []) if f != str(folder)]
            runs[name] = folders + [str(folder)]
            atomic.write_json(path, {"runs": runs})
    except OSError as err:
        return f"the index of runs {path} was not updated ({write_problem(err) or err})"
    return None


def _is_run(folder: Path) -> bool:
    return (folder / "spec.yaml").is_file()


def find(run_id: str, root: Path | None) -> RunLayout:
    """The run's folder: under `root` when one is given, else under the current directory's
    default root, else where the index saw it submitted (an error naming them where that is more
    than one place)."""
    validate_run_id(run_id)
    if root is not None:
        layout = RunLayout(root, run_id)
        if not _is_run(layout.dir):
            raise UserError(f"no run {run_id!r} under {layout.root}")
        return layout
    here = Path(DEFAULT_ROOT).resolve() / run_id
    if _is_run(here):  # the folder one stands in first: two checkouts may each hold a run of one name
        return RunLayout(here.parent, run_id)
    found = list(dict.fromkeys(f.resolve() for f in map(Path, _read().get(run_id, [])) if _is_run(f)))
    if len(found) > 1:
        raise UserError(f"run {run_id!r} is in {len(found)} places ({', '.join(map(str, found))}); "
                        "choose one with --root")
    if not found:
        raise UserError(f"no run or study {run_id!r}: not under ./{DEFAULT_ROOT} and not submitted from this account "
                        f"(index {index_path()}); give its results root with --root")
    return RunLayout(found[0].parent, run_id)


def find_study(name: str, root: Path | None):
    """The StudyLayout of a study by that name (under `root`, the current directory's default root,
    or where the index saw it submitted), else None: the name is then looked for as a run."""
    from .layout import StudyLayout

    if not RUN_ID.match(name or ""):
        return None
    candidates = [Path(root) / name] if root is not None else \
        [Path(DEFAULT_ROOT).resolve() / name, *map(Path, reversed(_read().get(name, [])))]
    for folder in candidates:
        if StudyLayout(folder.parent, name).record.is_file():
            return StudyLayout(folder.parent, name)
    return None


def every_run(root: Path | None) -> list[RunLayout]:
    """The runs under `root`, or (none given) every run the index knows and those under the default root."""
    if root is not None:
        roots = [Path(root)]
        known: list[Path] = []
    else:
        roots = [Path(DEFAULT_ROOT)]
        known = [Path(f) for folders in _read().values() for f in folders]
    for base in roots:
        known += sorted(base.iterdir()) if base.is_dir() else []
    runs = {}
    for folder in known:
        if RUN_ID.match(folder.name) and _is_run(folder):
            runs.setdefault(folder.resolve(), RunLayout(folder.resolve().parent, folder.name))
    return list(runs.values())
