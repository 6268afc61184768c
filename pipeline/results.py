"""The report's Table 1 and plots, from the metric files the evaluate stage wrote.

One row per run, checkpoint and decoding ("Full-Noised (10000 interval)", "... MBR-10", and a named
decoding of the spec's `decodings`: "DiffuSeq (7000 interval) dpm-20"), plus a
"Copy source" baseline row per split: QQP rewards copying, so every table shows what the source
itself scores as a paraphrase, and a "copy BLEU" column (output against its own source).

Plain Python and matplotlib only: the pipeline never imports torch.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from diffusion import atomic

from .errors import UserError
from .layout import RunLayout

METRICS = ("bleu", "rouge_l", "bertscore", "dist1", "len")  # Table 1 columns, in order
HEADERS = {"bleu": "BLEU", "rouge_l": "ROUGE-L", "bertscore": "BERTScore", "dist1": "Dist-1", "len": "len",
           "self_bleu_src": "copy BLEU", "sacrebleu": "sacreBLEU", "empty": "empty"}
# the five of the report, then our extras: BLEU against the source, corpus BLEU, share of empty outputs
COLUMNS = METRICS + ("self_bleu_src", "sacrebleu", "empty")
_REQUIRED = ("run", "label", "step", "split", "rows", "copy_source")


class ResultsError(UserError, ValueError):
    """A run without metrics yet, or a metrics file that is not one."""


# --- loading ---
def load_run_metrics(run_dir: Path) -> list[dict]:
    """The run's metrics/step_*.json, by step.

    Writes still in progress are skipped, never half-read (RunLayout.metrics_files).
    """
    layout = RunLayout(Path(run_dir).parent, Path(run_dir).name)
    files = layout.metrics_files()
    again = f"`pipeline retry {layout.run_id}` evaluates that checkpoint again"
    result = []
    for path in files:
        try:
            m = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ResultsError(f"{path}: damaged, not valid JSON ({getattr(err, 'msg', err)}); {again}") from None
        missing = [k for k in _REQUIRED if not isinstance(m, dict) or k not in m]
        if missing or not isinstance(m["rows"], dict) or not m["rows"]:
            raise ResultsError(f"{path}: not a metrics file (missing {', '.join(missing) or 'rows'}); {again}")
        result.append(m)
    return sorted(result, key=point_order)


def point_order(m: dict) -> tuple:
    """A metrics file's place among a run's: by step, the spec's own decoding before the named ones."""
    return m["step"], bool(m.get("decoding")), m.get("decoding", "")


# --- rows ---
def _decoding_order(decoding: str):
    # "single" first, then MBR by K as a number (file keys are sorted as text: "mbr-10" < "mbr-2")
    if decoding == "single":
        return (0, 0)
    k = decoding.rsplit("-", 1)[-1]
    return (1, int(k)) if k.isdigit() else (2, decoding)


def _same_scores(a: dict, b: dict) -> bool:
    # Identical sources and references give identical scores, except BERTScore which may move in
    # the last float bits between GPUs; a tolerance keeps those runs on one baseline row.
    def close(x, y):
        return x == y or (x is not None and y is not None and math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9))
    return all(close(a.get(k), b.get(k)) for k in COLUMNS)


def table_rows(metric_files: list[dict]) -> list[dict]:
    """Table 1 rows: runs in the order given, each by step, single then MBR-K; then copy-source rows."""
    run_order = {}
    for m in metric_files:
        run_order.setdefault(m["run"], len(run_order))
    ordered = sorted(metric_files, key=lambda m: (run_order[m["run"]], *point_order(m)))

    rows = []
    for m in ordered:
        named = m.get("decoding") or ""  # a named decoding of the spec's; "" its own sample section
        for decoding in sorted(m["rows"], key=_decoding_order):
            suffix = "" if decoding == "single" else " " + decoding.upper()
            point = f"{m['step']} interval" + (f", {named}" if named else "")
            rows.append({"model": f"{m['label']} ({point}){suffix}", "run": m["run"], "step": m["step"],
                         "decoding": decoding, "decoded_with": named, "split": m["split"], "n": m.get("n"),
                         **{k: m["rows"][decoding].get(k) for k in COLUMNS}})

    # The baseline of each run: its last checkpoint's (the same pairs every checkpoint, so any would
    # do; the last is the one the final samples were scored against). Runs on one split that share
    # the baseline get a single row; if a split has several different baselines (other n, other
    # data) each names its runs, so no two rows carry the same model name.
    last = {}
    for m in ordered:  # the spec's own decoding's (a named one may decode other pairs)
        if not m.get("decoding") or m["run"] not in last:
            last[m["run"]] = m
    groups: list[dict] = []  # {"split", "n", "scores", "runs"}
    for run, m in last.items():
        for g in groups:
            if g["split"] == m["split"] and g["n"] == m.get("n") and _same_scores(g["scores"], m["copy_source"]):
                g["runs"].append(run)
                break
        else:
            groups.append({"split": m["split"], "n": m.get("n"), "scores": m["copy_source"], "runs": [run]})
    for g in groups:
        shared = sum(other["split"] == g["split"] for other in groups) == 1
        name = f"Copy source ({g['split']})" if shared else f"Copy source ({g['split']}, {'+'.join(g['runs'])})"
        rows.append({"model": name, "run": "+".join(g["runs"]), "step": None, "decoding": "copy",
                     "split": g["split"], "n": g["n"], **{k: g["scores"].get(k) for k in COLUMNS}})
    return rows


def checkpoint_rows(metric_files: list[dict]) -> list[dict]:
    """A row per run and checkpoint: the training loss and its terms last logged by then, and the
    checkpoint's diagnostics (token accuracy of the decoder's argmax at a few noise levels,
    embedding norms), which show learning or a collapse where BLEU alone does not say why."""
    rows = []
    for m in metric_files:
        if m.get("decoding") or not (m.get("loss_terms") or m.get("diagnostics")):
            continue
        d = m.get("diagnostics") or {}
        accuracy = sorted((d.get("token_accuracy") or {}).items(), key=lambda item: int(item[0].partition("=")[2] or 0))
        rows.append({"run": m["run"], "step": m["step"], **(m.get("loss_terms") or {}),
                     **{f"acc {t}": v for t, v in accuracy},
                     **{k: d[k] for k in ("embedding_norm", "pad_norm") if k in d}})
    return rows


def checkpoint_markdown(rows: list[dict]) -> str:
    # the loss and its terms, then the accuracies by noise level, then the norms (a first
    # checkpoint logged before any loss line has none)
    found = list(dict.fromkeys(k for r in rows for k in r))
    late = [k for k in found if k.startswith("acc ") or k.endswith("_norm")]
    columns = [k for k in found if k not in late] + late
    lines = ["| " + " | ".join(columns) + " |", "| --- | ---: " + "| ---: " * (len(columns) - 2) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt("", r.get(k)) if isinstance(r.get(k), float) else str(r.get(k, "–"))
                                       for k in columns) + " |")
    return "\n".join(lines) + "\n"


# --- tables ---
def _fmt(key: str, value, missing: str = "–") -> str:
    if value is None:
        return missing
    # len is a token count and sacreBLEU is on the 0-100 scale: 2 decimals; the 0-1 scores: 4
    return f"{value:.2f}" if key in ("len", "sacrebleu") else f"{value:.4f}"


def several_runs(rows: list[dict]) -> bool:
    """Rows of more than one run get a Run column: two runs with one label must not look alike."""
    return len({r["run"] for r in rows if r["decoding"] != "copy"}) > 1


def markdown(rows: list[dict]) -> str:
    run = several_runs(rows)
    lines = ["| Model | " + ("Run | " if run else "") + " | ".join(HEADERS[k] for k in COLUMNS) + " |",
             "| --- " + ("| --- " if run else "") + "| ---: " * len(COLUMNS) + "|"]
    for r in rows:
        name = r["model"].replace("|", r"\|")  # labels come from job specs: keep the table intact
        lines.append(f"| {name} | " + (f"{r['run']} | " if run else "") + " | ".join(_fmt(k, r[k]) for k in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(c, c) for c in text)  # one pass, so replacements are not re-escaped


def latex(rows: list[dict]) -> str:
    # "--" is LaTeX's en dash: the same "–" as the other tables, without relying on UTF-8 input
    run = several_runs(rows)
    body = [tex_escape(r["model"]) + " & " + (tex_escape(r["run"]) + " & " if run else "")
            + " & ".join(_fmt(k, r[k], "--") for k in COLUMNS) + r" \\" for r in rows]
    return "\n".join([r"% needs \usepackage{booktabs}",
                      r"\begin{tabular}{l" + ("l" if run else "") + "r" * len(COLUMNS) + "}", r"\toprule",
                      "Model & " + ("Run & " if run else "") + " & ".join(tex_escape(HEADERS[k]) for k in COLUMNS)
                      + r" \\", r"\midrule",
                      *body, r"\bottomrule", r"\end{tabular}"]) + "\n"


def csv_text(rows: list[dict]) -> str:
    # Machine-readable: full-precision numbers (tiny BLEUs such as 4e-05 would print as 0.0000),
    # empty cells for missing values, the same keys as table.json.
    out = io.StringIO()
    fields = ["model", "run", "step", "decoding", "split", "n", *COLUMNS]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for r in rows:
        writer.writerow(["" if r.get(f) is None else r[f] for f in fields])
    return out.getvalue()


def write_tables(rows: list[dict], out_dir: Path) -> dict[str, Path]:
    """table.md, table.csv, table.tex, table.json in out_dir, each written atomically."""
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"table.{ext}" for ext in ("md", "csv", "tex", "json")}
    atomic.write_text(paths["md"], markdown(rows))
    atomic.write_text(paths["csv"], csv_text(rows))
    atomic.write_text(paths["tex"], latex(rows))
    # not atomic.write_json: it sorts keys, and the row order (model first) is the readable one
    atomic.write_text(paths["json"], json.dumps(rows, indent=2) + "\n")
    return paths


# --- plot ---
def plot_metrics(metric_files: list[dict], out_path: Path) -> Path:
    """One panel per metric (and copy BLEU) against training step; a line per run and decoding;
    each run's copy-source baseline dashed in the colour of its single-sample line."""
    # Figure + Agg canvas, not pyplot: no global backend switch, no display, safe inside the CLI.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = METRICS + ("self_bleu_src",)
    fig = Figure(figsize=(15, 8.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3).ravel()
    runs = list(dict.fromkeys(m["run"] for m in metric_files))
    palette = [f"C{i}" for i in range(10)]
    for ax, key in zip(axes, keys):
        drawn = False
        colour = iter(palette * 10)
        for run in runs:
            mine = sorted((m for m in metric_files if m["run"] == run), key=lambda m: m["step"])
            run_colour = None
            lines = dict.fromkeys((m.get("decoding") or "", d) for m in mine for d in sorted(m["rows"], key=_decoding_order))
            for named, decoding in lines:
                points = [(m["step"], m["rows"][decoding].get(key)) for m in mine
                          if (m.get("decoding") or "") == named and decoding in m["rows"]]
                points = [(s, v) for s, v in points if v is not None]
                c = next(colour)
                run_colour = run_colour or c
                if points:
                    ax.plot(*zip(*points), marker="o", color=c,
                            label=f"{mine[0]['label']} [{run}] {decoding}" + (f" [{named}]" if named else ""))
                    drawn = True
            baseline = mine[-1]["copy_source"].get(key)
            if baseline is not None:
                ax.axhline(baseline, linestyle="--", linewidth=1, color=run_colour, label=f"copy source [{run}]")
        if not drawn:  # e.g. BERTScore when evaluate ran without a BERT model
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(HEADERS[key] + (" (output vs its source)" if key == "self_bleu_src" else ""))
        ax.set_xlabel("training step")
        ax.set_ylabel(HEADERS[key])
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8)
    fig.suptitle("Scores by checkpoint (dashed: the source copied as the output)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    with atomic.atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)  # format given: the temp name ends in .tmp
    return Path(out_path)


# --- console ---
def render_console(rows: list[dict], width: int | None = 140) -> str:
    """The table as text, `width` columns at most (None: as wide as it needs). The columns that
    tell the rows apart (model, run) are never cut: where the scores do not fit beside them,
    they continue in a second table (and a third...) under the first, with the same rows."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    run = several_runs(rows)
    every = "+".join(dict.fromkeys(r["run"] for r in rows if r["decoding"] != "copy"))
    names = ["Model", *(["Run"] if run else [])]
    # a baseline shared by every run says "all" here (its full list is in the files)
    cells = [[escape(r["model"]), *([("all" if r["run"] == every else r["run"])] if run else [])] for r in rows]
    scores = [(HEADERS[k], [_fmt(k, r[k]) for r in rows]) for k in COLUMNS]

    def cell_width(header: str, values: list[str]) -> int:
        return max([len(header), *map(len, values)]) + 3  # padding and the border after it

    fixed = 1 + sum(cell_width(name, [c[i] for c in cells]) for i, name in enumerate(names))
    groups, room = [[]], (width or 100_000) - fixed
    for score in scores:
        if groups[-1] and sum(cell_width(*s) for s in groups[-1]) + cell_width(*score) > room:
            groups.append([])
        groups[-1].append(score)
    # names too long for the terminal even alone: wider lines (the terminal wraps them), never cut names
    width = max(width or 100_000, fixed + max(sum(cell_width(*s) for s in group) for group in groups))
    console = Console(file=io.StringIO(), width=width, record=True)
    for i, group in enumerate(groups):
        table = Table(title="Table 1" if i == 0 else None)
        for j, name in enumerate(names):
            table.add_column(name, no_wrap=True, min_width=cell_width(name, [c[j] for c in cells]) - 3)
        for header, _ in group:
            table.add_column(header, justify="right", no_wrap=True)
        for r, row_cells in enumerate(cells):
            table.add_row(*row_cells, *(values[r] for _, values in group))
        console.print(table)
    return console.export_text()


# --- all together ---
def aggregate(run_dirs: list[Path], out_dir: Path) -> dict[str, Path]:
    """Tables and metrics.png in out_dir for these runs; {"md","csv","tex","json","png"} paths."""
    return write_results(every_run_scored(load_runs(run_dirs)), out_dir)


def load_runs(run_dirs: list[Path]) -> dict[Path, list[dict]]:
    """Each run's metric files, by run folder (a run without any yet: an empty list)."""
    return {Path(run_dir): load_run_metrics(run_dir) for run_dir in run_dirs}


def every_run_scored(loaded: dict[Path, list[dict]]) -> list[dict]:
    """The metric files of all the runs, an error naming a run that has none yet."""
    for run_dir, found in loaded.items():
        if not found:
            raise ResultsError(f"{run_dir}: no metrics yet (no metrics/step_*.json: its evaluate stage "
                               "has not finished a checkpoint)")
    return [m for found in loaded.values() for m in found]


def write_results(metric_files: list[dict], out_dir: Path) -> dict[str, Path]:
    """Table 1 (md, csv, tex, json), checkpoints.md and metrics.png of these metric files in out_dir."""
    paths = write_tables(table_rows(metric_files), out_dir)
    checkpoints = checkpoint_rows(metric_files)
    if checkpoints:
        paths["checkpoints"] = Path(out_dir) / "checkpoints.md"
        atomic.write_text(paths["checkpoints"], checkpoint_markdown(checkpoints))
    paths["png"] = plot_metrics(metric_files, Path(out_dir) / "metrics.png")
    return paths
