"""The `pipeline` command.

    pipeline submit SPEC|STUDY [--set key=value ...] [--site NAME] [--executor local] [--wait]
    pipeline status [RUN|STUDY] [--json]  one scheduler query; submits whatever has become ready
    pipeline watch RUN|STUDY [--interval S]  the same in a loop, for a login-node session (tmux)
    pipeline retry RUN|STUDY [--wait]   resubmit failed tasks only
    pipeline results RUN|STUDY [RUN ...] [--out DIR]
    pipeline score SAMPLES.jsonl [--bertscore-model NAME_OR_PATH | --no-bertscore] [--json]
    pipeline cancel RUN|STUDY
    pipeline repair RUN                 rebuild a damaged job registry (state/jobs.json), then go on

A STUDY is a study file (pipeline/study_spec.py: a base spec, its variants, decodings), submitted
as one run a variant (<study>-<variant>) and then named by its `study:` name.

`submit` puts a run under its results root: --root or $PIPELINE_ROOT, else the site profile's
`results_root` (default `runs/`); a relative one is taken from the current directory. The other
commands find a run where it was submitted (pipeline.run_index) unless --root says where.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.table import Table

from diffusion.bertscore_model import DEFAULT_BERTSCORE_MODEL, OFFLINE_PACKAGE_MODEL

from . import run_index, runs
from .console import console, err_console
from .errors import UserError, write_problem
from .layout import RunLayout
from .spec import EXECUTORS, load_spec
from .states import RunState, TaskState


def given_root(args) -> Path | None:
    """The results root named by --root or $PIPELINE_ROOT, from the current directory; else None."""
    root = args.root or os.environ.get("PIPELINE_ROOT")
    return Path(root).resolve() if root else None


def find_run(args, run_id: str) -> RunLayout:
    return run_index.find(run_id, given_root(args))


def find_study(args, name: str):
    """The StudyLayout of that name, or None (then it is a run's)."""
    return run_index.find_study(name, given_root(args))


# --- submit ---
def cmd_submit(args) -> int:
    from . import study
    from .study_spec import is_study_file, load_study

    if is_study_file(args.spec):
        found = load_study(args.spec, args.set or (), site=args.site)
        first = next(iter(found.runs.values()))
        root = given_root(args) or Path(first.site.results_root or run_index.DEFAULT_ROOT).resolve()
        return study.submit(found, root, args.executor, args.wait, args.only.split(",") if args.only else None)
    if args.only:
        raise UserError(f"{args.spec}: --only chooses variants of a study file, and this is a job spec")
    spec = load_spec(args.spec, args.set or (), site=args.site)
    root = given_root(args) or Path(spec.site.results_root or run_index.DEFAULT_ROOT).resolve()
    return runs.submit(spec, root, args.executor, args.wait)


# --- status, watch ---
STATE_STYLE = {TaskState.DONE: "green", TaskState.FAILED: "red", TaskState.BLOCKED: "red", TaskState.RUNNING: "yellow",
               TaskState.QUEUED: "cyan", TaskState.WAITING_FOR_INPUT: "dim", TaskState.WAITING_FOR_RESOURCES: "dim",
               TaskState.CANCELLED: "magenta", TaskState.STOPPED: "red", RunState.ERROR: "red"}


def cmd_status(args) -> int:
    if not args.run:
        statuses = []
        for layout in run_index.every_run(given_root(args)):
            try:
                statuses.append(runs.advance_and_status(layout))
            except UserError as err:  # one damaged run does not hide the others
                statuses.append({"run": layout.run_id, "state": RunState.ERROR, "error": str(err), "executor": None,
                                 "stages": [], "dir": str(layout.dir)})
        if args.json:
            print(json.dumps(statuses, indent=2))
            return 0
        table = Table("run", "executor", "state", "stages done", "folder")
        for column in table.columns[:3]:
            column.no_wrap = True
        for st in statuses:
            done = sum(s["state"] == TaskState.DONE for s in st["stages"])
            state = f"[{STATE_STYLE[st['state']]}]{st['state']}[/]"
            table.add_row(st["run"], st["executor"] or "", state, f"{done}/{len(st['stages'])}",
                          st.get("error") or st["dir"])
        console.print(table if statuses else f"no runs (under {given_root(args) or './' + run_index.DEFAULT_ROOT}, "
                                             "nor submitted from this account)")
        return 0
    found = find_study(args, args.run)
    if found is not None:
        from . import study

        st = study.status(found)
        if args.json:
            print(json.dumps(st, indent=2))
            return 0
        print_study_status(st)
        return 0
    st = runs.advance_and_status(find_run(args, args.run))
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print_status(st)
    return 0


def print_study_status(st: dict) -> None:
    """A row a run: its state and where each stage is; the failures and what to do under it."""
    from .study import summary

    table = Table(title=f"{st['study']}: {st['state']} ({st['executor']}, {len(st['runs'])} runs, "
                        f"{st['scheduler_queries']} scheduler query)")
    table.add_column("run", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("stages")
    for run in st["runs"]:
        table.add_row(run["run"], f"[{STATE_STYLE[run['state']]}]{run['state']}[/]", summary(run))
    console.print(table)
    for run in st["runs"]:
        runs.print_failures(run)
        if run.get("next") and run["state"] != RunState.DONE:
            console.print(f"{run['run']} is {run['state']}: {run['next']}", highlight=False)
    if st.get("not_submitted"):
        console.print(f"nothing was submitted ({st['not_submitted']})", highlight=False)


def print_status(st: dict) -> None:
    from .status import format_eta

    rows = []
    for stage in st["stages"]:
        progress = f"{stage['done']}/{stage['total']}"
        beat = stage.get("progress")
        if stage["stage"] == "sample" and beat:  # the solver's work, and its measured speed once known
            progress += f"  {beat['seeds']} seed(s) x {beat['steps']} {beat['solver']} steps"
            if beat.get("decodings"):
                progress += f", then {beat['decodings']} more decoding(s)"
            if "eta_s" in beat:
                progress += (f"\n{beat['decoded']}/{beat['total']} sentences  {beat['sentences_per_s']:,.1f} sent/s  "
                             f"ETA {format_eta(beat['eta_s'])}")
        elif beat and stage["state"] != TaskState.DONE:
            progress = (f"step {beat['step']}/{beat['total_steps']}  loss {beat['loss']:.4f}  "
                        f"{beat['tokens_per_s']:,.0f} tok/s  ETA {format_eta(beat['eta_s'])}")
            if beat["real_tokens_per_s"] is not None:
                progress += f"  {beat['real_tokens_per_s']:,.0f} real tok/s"
            if beat["terms"]:  # where the loss goes: mse on source and target positions, nll, tT, anchor
                progress += "\n" + "  ".join(f"{k} {v:.4f}" for k, v in beat["terms"].items())
        for i, task in enumerate(stage["tasks"]):
            job = task["job"] or ""
            if task["job_state"] and task["state"] != TaskState.DONE:
                job += f" ({task['job_state'].lower()})"
            note = progress if i == 0 else ""
            if task.get("reason"):  # why a task that is not running waits
                note = f"{note}  {task['reason']}" if note else task["reason"]
            rows.append((stage["stage"] if i == 0 else "", task["task"] if len(stage["tasks"]) > 1 else "", job,
                         task["state"], note))
    table = Table(title=f"{st['run']}: {st['state']} ({st['executor']}, site {st['site']})")
    for j, name in enumerate(("stage", "task", "job", "state")):  # what tells the rows apart is never cut
        table.add_column(name, no_wrap=True, min_width=max([len(name), *(len(row[j]) for row in rows)]))
    table.add_column("progress")  # wraps, on a narrow terminal
    for stage, task, job, state, note in rows:
        table.add_row(stage, task, job, f"[{STATE_STYLE[state]}]{state}[/]", note)
    console.print(table)
    for stage in st["stages"]:
        for task in stage["tasks"]:
            if task.get("log") and task["state"] == TaskState.RUNNING:
                console.print(f"log of {task['task']} ({task['state']}): {task['log']}", highlight=False)
    if st["submitted"]:
        console.print("submitted now: " + ", ".join(st["submitted"]))
    runs.print_failures(st)
    if st.get("next"):
        console.print(f"{st['run']} is {st['state']}: {st['next']}", highlight=False)


def cmd_watch(args) -> int:
    from .advance import watch

    found = find_study(args, args.run)
    if found is not None:
        from . import study

        st = study.watch(found, interval=args.interval, submit=None, on_pass=lambda st: (
            console.clear() if console.is_terminal else None, print_study_status(st)))
        return 0 if st["state"] == RunState.DONE else 1
    layout = find_run(args, args.run)
    st = watch(layout, interval=args.interval, on_pass=lambda st: (console.clear() if console.is_terminal else None, print_status(st)))
    return 0 if st["state"] == RunState.DONE else 1


# --- retry ---
def cmd_retry(args) -> int:
    found = find_study(args, args.run)
    if found is not None:
        from . import study

        return study.retry(found, args.wait)
    return runs.retry(find_run(args, args.run), args.wait)


# --- results ---
def cmd_results(args) -> int:
    from .results import (checkpoint_markdown, checkpoint_rows, every_run_scored, load_runs, render_console, table_rows,
                          write_results)

    studies = [find_study(args, name) for name in args.runs]
    if len(args.runs) == 1 and studies[0] is not None:  # a study: its runs with metrics so far, its results folder
        from .study import metric_runs

        layouts = metric_runs(studies[0])
        out = Path(args.out) if args.out else studies[0].results
    else:
        layouts = [find_run(args, run) for run in args.runs]
        out = Path(args.out) if args.out else (layouts[0].results if len(layouts) == 1
                                               else layouts[0].root / ("results-" + "+".join(args.runs)))
    loaded = load_runs([layout.dir for layout in layouts])
    metric_files = [m for found in loaded.values() for m in found]
    print(render_console(table_rows(metric_files), width=console.width if console.is_terminal else None))
    checkpoints = checkpoint_rows(metric_files)
    if checkpoints:
        print("Checkpoints: the training loss and its terms last logged, the decoder's token accuracy at a few "
              "noise levels, embedding norms\n" + checkpoint_markdown(checkpoints))
    try:
        paths = write_results(every_run_scored(loaded), out)
    except OSError as err:  # the table is printed all the same
        if write_problem(err) is None:
            raise
        raise UserError(f"{write_problem(err)}; the table above was not saved (give another folder with --out)") from None
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
    try:
        model = None if args.no_bertscore else metrics.resolve_bertscore_model(args.bertscore_model)
    except ValueError as err:  # the offline package is not installed
        raise UserError(str(err)) from None
    if model is not None:
        problem = metrics.bertscore_model_unavailable(model)
        if problem:
            raise UserError(f"BERTScore model {model!r} {problem}; pass --bertscore-model PATH (a local model folder, "
                            f"or {OFFLINE_PACKAGE_MODEL}) or --no-bertscore")
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


# --- cancel, repair ---
def cmd_cancel(args) -> int:
    found = find_study(args, args.run)
    if found is not None:
        from . import study

        return study.cancel(found)
    return runs.cancel(find_run(args, args.run))


def cmd_repair(args) -> int:
    return runs.repair(find_run(args, args.run))


ROOT_HELP = ("results root, from the current directory (default: $PIPELINE_ROOT; for submit, else the site's "
             "results_root; for the others, else where the run was submitted)")


def build_parser() -> argparse.ArgumentParser:
    # --root before or after the subcommand: each subparser takes it too, without overwriting
    # a value given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=argparse.SUPPRESS, help=ROOT_HELP)
    parser = argparse.ArgumentParser(prog="pipeline", description="DiffuSeq-style text diffusion studies on clusters",
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    p = add("submit", help="submit a run from a job spec, or every run of a study file")
    p.add_argument("spec")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a spec value, e.g. train.steps=100 (repeat --set for each)")
    p.add_argument("--site", help="site profile (yours in $PIPELINE_SITES or ~/.config/textdiffusion-pipeline/sites, or "
                   "one shipped: local, slurm-generic, wisteria-aquarius); default: the spec's, else local")
    p.add_argument("--executor", choices=list(EXECUTORS))
    p.add_argument("--wait", action="store_true", help="stay in the foreground with progress bars until the study ends")
    p.add_argument("--only", metavar="VARIANT[,VARIANT]", help="a study file: submit these variants now (the others "
                   "can follow later, into the same study)")
    p.set_defaults(func=cmd_submit)
    p = add("status", help="state of a run (or of all runs); submits what has become ready")
    p.add_argument("run", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = add("watch", help="status in a loop until the run (or study) ends (keep it in tmux on a login node)")
    p.add_argument("run")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between scheduler queries")
    p.set_defaults(func=cmd_watch)
    p = add("retry", help="resubmit a run's failed tasks (and what waits for them)")
    p.add_argument("run")
    p.add_argument("--wait", action="store_true")
    p.set_defaults(func=cmd_retry)
    p = add("results", help="Table 1 and plots for one or more runs")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", help="folder for the combined table (default: the run's results/, or results-A+B/)")
    p.set_defaults(func=cmd_results)
    p = add("score", help="score a jsonl of {hyp, ref[, src]} with DiffuSeq's metrics")
    p.add_argument("file")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--bertscore-model", default=DEFAULT_BERTSCORE_MODEL,
                       help=f"hub name or local path ({OFFLINE_PACKAGE_MODEL}: the offline model of that package)")
    group.add_argument("--no-bertscore", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score)
    p = add("cancel", help="stop a run's jobs and every process of them")
    p.add_argument("run")
    p.set_defaults(func=cmd_cancel)
    p = add("repair", help="rebuild a damaged job registry (state/jobs.json) from the jobs' start markers, then go on")
    p.add_argument("run")
    p.set_defaults(func=cmd_repair)
    return parser


def parse(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "set", None) and all("=" in item for item in extra):
            parser.error(f"--set takes one KEY=VALUE: repeat it for each ({' '.join('--set ' + e for e in extra)})")
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.root = getattr(args, "root", None)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    try:
        return args.func(args)
    except UserError as err:
        err_console.print(f"[red]error:[/] {err}", highlight=False)
        return 2
    except OSError as err:  # a disk that refuses a write (full, read-only, over quota): one line
        if write_problem(err) is None:
            raise
        err_console.print(f"[red]error:[/] {write_problem(err)}", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
