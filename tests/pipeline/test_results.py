"""Table 1 and the metrics plot, from real metric files scored with diffusion.metrics (no BERT model)."""

import csv
import io
import json
from pathlib import Path

import pytest

from diffusion import atomic
from diffusion.metrics import score
from pipeline import results as R

SRCS = ["how do i learn python fast", "what is the best way to lose weight", "why is the sky blue",
        "is it safe to eat raw eggs ?"]
REFS = ["how can i learn python quickly", "how can i lose weight fast", "what makes the sky blue",
        "is eating raw eggs safe ?"]
HYPS = {  # a model getting better with training
    100: ["what what what", "how to the weight", "sky sky", "eggs"],
    200: ["how can i learn python", "how do i lose weight fast", "why is sky blue", "is eating raw eggs safe"],
}
MBR = {100: ["how learn python", "weight lose", "the sky", "raw eggs ?"],
       200: ["how can i learn python quickly", "how can i lose weight", "why is the sky blue", "are raw eggs safe ?"]}


def _scores(hyps, srcs=SRCS):
    return score(hyps, REFS, srcs, bertscore_model=None)


COPY = _scores(SRCS)  # the source copied as the paraphrase


def make_run(root: Path, run: str, label: str, noising: str, mbr: bool) -> Path:
    run_dir = root / run
    for step in (100, 200):
        rows = {"single": _scores(HYPS[step])}
        if mbr:
            rows["mbr-2"] = _scores(MBR[step])
        # as the evaluate stage writes them (atomically, keys sorted)
        atomic.write_json(run_dir / "metrics" / f"step_{step:07d}.json",
                          {"run": run, "label": label, "noising": noising, "step": step, "split": "valid",
                           "n": len(SRCS), "rows": rows, "copy_source": COPY})
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    full = make_run(root, "demo_full", "Full-Noised", "full", mbr=False)
    target = make_run(root, "demo_target", "DiffuSeq", "target", mbr=True)
    # a write killed mid-way leaves its temp file behind: never read
    (full / "metrics" / ".step_0000300.json.tmp").write_text('{"run": "demo_full", "st')
    return full, target


@pytest.fixture(scope="module")
def written(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    return out, R.aggregate(list(runs), out)


MODELS = ["Full-Noised (100 interval)", "Full-Noised (200 interval)",
          "DiffuSeq (100 interval)", "DiffuSeq (100 interval) MBR-2",
          "DiffuSeq (200 interval)", "DiffuSeq (200 interval) MBR-2",
          "Copy source (valid)"]


def test_rows_follow_table_1(runs):
    full, target = runs
    loaded = R.load_run_metrics(full)
    assert [m["step"] for m in loaded] == [100, 200]  # the .tmp file is ignored
    rows = R.table_rows(loaded + R.load_run_metrics(target))
    assert [r["model"] for r in rows] == MODELS
    assert [(r["run"], r["step"], r["decoding"]) for r in rows[:3]] == [
        ("demo_full", 100, "single"), ("demo_full", 200, "single"), ("demo_target", 100, "single")]
    assert rows[3]["decoding"] == "mbr-2" and rows[-1]["decoding"] == "copy" and rows[-1]["step"] is None
    assert rows[-1]["run"] == "demo_full+demo_target"  # one baseline shared by both runs
    expected = _scores(HYPS[200])
    assert {k: rows[1][k] for k in expected} == expected
    assert all(r["bertscore"] is None for r in rows)
    assert rows[-1]["self_bleu_src"] == 1.0 and rows[-1]["bleu"] == COPY["bleu"]


def test_different_baselines_on_one_split_are_told_apart(runs):
    full, _ = runs
    other = [dict(m, run="other", copy_source=dict(m["copy_source"], bleu=0.5)) for m in R.load_run_metrics(full)]
    rows = R.table_rows(R.load_run_metrics(full) + other)
    assert [r["model"] for r in rows if r["decoding"] == "copy"] == [
        "Copy source (valid, demo_full)", "Copy source (valid, other)"]


def test_mbr_rows_order_by_k_as_a_number(runs):
    _, target = runs
    m = R.load_run_metrics(target)[0]
    m["rows"] = {"mbr-10": m["rows"]["mbr-2"], "mbr-2": m["rows"]["mbr-2"], "single": m["rows"]["single"]}
    assert [r["decoding"] for r in R.table_rows([m])][:3] == ["single", "mbr-2", "mbr-10"]


def test_markdown_table(written):
    out, paths = written
    assert set(paths) == {"md", "csv", "tex", "json", "png"} and paths["md"] == out / "table.md"
    lines = paths["md"].read_text().splitlines()
    # two runs: a Run column (issue 15); the share of empty outputs last (issue 12)
    assert lines[0] == "| Model | Run | BLEU | ROUGE-L | BERTScore | Dist-1 | len | copy BLEU | sacreBLEU | empty |"
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [c[0] for c in cells] == MODELS
    row = dict(zip(["model", "run", *R.COLUMNS], cells[1]))  # Full-Noised at step 200
    s = _scores(HYPS[200])
    assert row["bleu"] == f"{s['bleu']:.4f}" and row["rouge_l"] == f"{s['rouge_l']:.4f}"
    assert row["bertscore"] == "–" and row["len"] == f"{s['len']:.2f}" and row["sacrebleu"] == f"{s['sacrebleu']:.2f}"
    assert cells[-1][R.COLUMNS.index("self_bleu_src") + 2] == "1.0000"
    assert not list(out.glob(".*"))  # no temp files left behind


def test_csv_and_json_tables(written):
    _, paths = written
    table = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [r["model"] for r in table] == MODELS
    assert table[0]["bertscore"] == "" and table[-1]["step"] == ""
    assert float(table[1]["bleu"]) == pytest.approx(_scores(HYPS[200])["bleu"], rel=1e-12)  # full precision
    rows = json.loads(paths["json"].read_text())
    assert [r["model"] for r in rows] == MODELS
    assert rows[0]["bertscore"] is None and rows[-1]["step"] is None
    assert rows[3]["decoding"] == "mbr-2" and rows[3]["bleu"] == _scores(MBR[100])["bleu"]


def test_latex_table(written):
    _, paths = written
    tex = paths["tex"].read_text()
    for part in (r"\begin{tabular}{llrrrrrrrr}", r"\toprule", r"\midrule", r"\bottomrule", r"\end{tabular}"):
        assert part in tex
    assert "Model & Run & BLEU & ROUGE-L & BERTScore & Dist-1 & len & copy BLEU & sacreBLEU & empty \\\\" in tex
    assert r"DiffuSeq (200 interval) MBR-2 & " in tex and "--" in tex and "–" not in tex
    assert R.tex_escape("run_a & 5% {x}") == r"run\_a \& 5\% \{x\}"


def test_latex_escapes_labels_from_job_specs(runs, tmp_path):
    metrics = [dict(m, label="full_noise #2") for m in R.load_run_metrics(runs[0])]
    tex = R.write_tables(R.table_rows(metrics), tmp_path)["tex"].read_text()
    assert r"\toprule" in tex and r"full\_noise \#2 (100 interval) & " in tex and "full_noise" not in tex


def test_plot_is_a_real_png(written):
    import matplotlib.image

    _, paths = written
    png = paths["png"]
    assert png.name == "metrics.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 200 and image.shape[1] > 200


def test_console_table(runs):
    rows = R.table_rows([m for run in runs for m in R.load_run_metrics(run)])
    text = R.render_console(rows)
    assert "Full-Noised (100 interval)" in text and "Copy source (valid)" in text and "copy BLEU" in text
    assert max(len(line) for line in text.splitlines()) <= 140


def test_corrupt_metrics_file_is_named(tmp_path):
    run = make_run(tmp_path, "broken", "Full-Noised", "full", mbr=False)
    bad = run / "metrics" / "step_0000200.json"
    bad.write_text('{"run": "broken", "step": 2')
    with pytest.raises(ValueError, match="step_0000200.json"):
        R.load_run_metrics(run)
    bad.write_text('{"run": "broken"}')
    with pytest.raises(ValueError, match="step_0000200.json.*not a metrics file"):
        R.load_run_metrics(run)


def test_aggregate_names_a_run_without_metrics(runs, tmp_path):
    empty = tmp_path / "demo_empty"
    (empty / "metrics").mkdir(parents=True)
    (empty / "metrics" / ".step_0000100.json.abc.tmp").write_text("{")  # only a write in progress
    with pytest.raises(ValueError, match="demo_empty.*no metrics yet"):
        R.aggregate([runs[0], empty], tmp_path / "out")
    assert not (tmp_path / "out" / "table.md").exists()
