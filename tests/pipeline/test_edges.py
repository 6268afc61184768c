"""At the edges (issue 15): bad data refused at submit, Ctrl-C that loses nothing, offline scoring
that fails fast, a status that says what to do, output that fits its reader."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffusion import atomic
from tests.helpers import REPO, integration
from tests.pipeline.test_pipeline import SMALL, pipeline, status

GOOD = '{"src": "how do i learn python ?", "trg": "what is the best way to learn python ?"}'


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def submit_with_data(tmp_path: Path, train: Path, *extra: str) -> subprocess.CompletedProcess:
    valid = write(tmp_path / "valid.jsonl", [GOOD] * 3)
    return pipeline("submit", "jobs/demo_target.yaml", "--set", "data.synthetic_pairs=null", "--set", f"data.train={train}",
                    "--set", f"data.valid={valid}", "--set", "train.micro_batch_size=4", "--set", "train.batch_size=4",
                    *extra, root=tmp_path / "runs", check=False)


@pytest.mark.parametrize("lines, expected", [
    (None, r"data.train: .*train.jsonl: cannot read: No such file"),
    ([GOOD, GOOD, '{"src": "a", "trg": '], r"train.jsonl:3: not valid JSON: Expecting value \(column 21\)$"),
    ([GOOD, '{"src": "a"}', GOOD], r"train.jsonl:2: field 'trg' is missing"),
    ([GOOD, '["a", "b"]'], r"train.jsonl:2: expected a JSON object"),
    ([], r"train.jsonl: no pairs in the file"),
    ([GOOD] * 3, r"3 training pairs are fewer than one micro-batch \(train.micro_batch_size 4\)"),
])
@integration
def test_bad_data_is_refused_at_submit_with_file_and_line_and_nothing_written(tmp_path, lines, expected):
    import re

    train = tmp_path / "train.jsonl"
    if lines is not None:
        write(train, lines)
    proc = submit_with_data(tmp_path, train)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = proc.stderr.strip()
    assert "\n" not in error and re.search(expected, error), error  # one line, named, even when piped
    assert not (tmp_path / "runs").exists()  # nothing written, nothing queued


@integration
def test_a_train_file_that_is_a_folder_or_not_utf8_is_named(tmp_path):
    (tmp_path / "folder.jsonl").mkdir()
    assert "folder.jsonl: is a folder" in submit_with_data(tmp_path, tmp_path / "folder.jsonl").stderr
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(GOOD.encode() + b"\n\xff\xfe\x00garbage\n")
    assert "binary.jsonl:2: not UTF-8 text" in submit_with_data(tmp_path, binary).stderr


def test_preprocess_checks_the_data_again_and_records_the_reason(tmp_path):
    from pipeline.layout import RunLayout
    from pipeline.spec import freeze, load_spec
    from pipeline.stages import StageError, run_task, write_run_inputs

    train = write(tmp_path / "train.jsonl", [GOOD] * 8)
    valid = write(tmp_path / "valid.jsonl", [GOOD] * 3)
    spec = load_spec(REPO / "jobs/demo_target.yaml", ["data.synthetic_pairs=null", f"data.train={train}",
                                                     f"data.valid={valid}", "train.micro_batch_size=4",
                                                     "train.batch_size=4"])
    layout = RunLayout(tmp_path / "runs", spec.name)
    write_run_inputs(layout, spec, freeze(spec))
    write(train, [GOOD, '{"src": "a", "trg": 3}'])  # changed after submit
    with pytest.raises(StageError, match="train.jsonl:2: field 'trg' is not a string"):
        run_task(str(layout.dir), "preprocess")
    assert "train.jsonl:2" in layout.failure("preprocess")["error"]  # what `status` shows
    write(train, [GOOD] * 3)  # parses, but fewer pairs than one micro-batch
    with pytest.raises(StageError, match="3 training pairs are fewer than one micro-batch"):
        run_task(str(layout.dir), "preprocess")


def wait_for(root: Path, run: str, done, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = status(root, run)
        if done(st) or time.monotonic() > deadline:
            return st
        time.sleep(1)


# --- Ctrl-C, stopped ---

@integration
def test_ctrl_c_during_wait_stops_the_following_not_the_study(tmp_path):
    root = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    args = ["submit", "jobs/demo_target.yaml", *SMALL, "--set", "train.steps=200", "--set", "train.save_every=100", "--wait"]
    # Ctrl-C as at a terminal: a suite started in the background of a shell without job control
    # (make test &) inherits SIGINT ignored, and Python keeps an ignored SIGINT ignored
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--root", str(root), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    heartbeat = root / "demo-target" / "heartbeat.json"
    deadline = time.monotonic() + 240
    while not heartbeat.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert heartbeat.is_file(), "training never started"
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: the whole foreground group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "goes on in the background" in err and "pipeline cancel demo-target" in err
    st = wait_for(root, "demo-target", lambda st: st["state"] in ("done", "failed", "stopped"), 400)
    assert st["state"] == "done", st
    train_task = st["stages"][1]["tasks"][0]
    assert train_task["starts"] <= 1  # the trainer was not interrupted and restarted
    log = (root / "demo-target" / "logs" / "train.log").read_text()
    assert "KeyboardInterrupt" not in log and "resumed from" not in log
    # submitting it again says so
    again = pipeline("submit", "jobs/demo_target.yaml", *SMALL, "--set", "train.steps=200", "--set", "train.save_every=100",
                     root=root)
    assert "already done" in again.stdout


@integration
def test_a_stopped_run_names_the_command_that_continues_it(tmp_path):
    root = tmp_path / "runs"
    pipeline("submit", "jobs/demo_target.yaml", *SMALL, root=root)
    driver = json.loads((root / "demo-target" / "state" / "driver.json").read_text())
    os.killpg(driver["pgid"], signal.SIGKILL)  # the background loop dies (its jobs may go on)
    st = wait_for(root, "demo-target", lambda st: st["state"] == "stopped", 120)
    assert st["state"] == "stopped" and "pipeline retry demo-target" in st["next"]
    waiting = [t for s in st["stages"] for t in s["tasks"] if t["state"] == "stopped"]
    assert waiting and all(t["reason"] for t in waiting)
    assert "progress" not in st["stages"][1]  # no speed or ETA for training that does not run
    text = pipeline("status", "demo-target", root=root).stdout
    assert "pipeline retry demo-target" in text


# --- scoring ---

def samples(tmp_path: Path) -> Path:
    return write(tmp_path / "s.jsonl", ['{"src": "how do i learn python ?", "ref": "how to learn python ?", "hyp": "how do i learn python"}',
                                        '{"src": "what is ai ?", "ref": "what is artificial intelligence ?", "hyp": ""}'])


@integration
def test_offline_scoring_with_a_hub_model_fails_fast_and_names_the_fix(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "score", str(samples(tmp_path)), "--bertscore-model",
                           "microsoft/deberta-xlarge-mnli"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert time.monotonic() - started < 30  # the imports; no minute of hub retries
    error = proc.stderr.strip()
    assert "\n" not in error and "microsoft/deberta-xlarge-mnli" in error
    assert "--bertscore-model PATH" in error and "--no-bertscore" in error and "Retrying" not in proc.stderr


@integration
def test_score_json_carries_every_figure_of_the_text_output(tmp_path):
    path = samples(tmp_path)
    text = pipeline("score", path, "--no-bertscore", root=tmp_path).stdout
    figures = json.loads(pipeline("score", path, "--no-bertscore", "--json", root=tmp_path).stdout)
    assert {"bleu", "rouge_l", "dist1", "len", "sacrebleu", "self_bleu_src", "empty"} <= set(figures)
    assert figures["empty"] == 0.5
    for key in ("bleu", "self_bleu_src"):
        assert f"{figures[key]:.4f}" in text


@integration
def test_score_names_a_folder_or_a_binary_file(tmp_path):
    proc = pipeline("score", tmp_path, "--no-bertscore", root=tmp_path, check=False)
    assert proc.returncode == 2 and "is a folder" in proc.stderr and str(tmp_path) in proc.stderr
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    proc = pipeline("score", binary, "--no-bertscore", root=tmp_path, check=False)
    assert proc.returncode == 2 and "b.jsonl: not UTF-8 text" in proc.stderr


# --- output ---

def test_files_written_atomically_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "a.txt", "x")
        atomic.write_json(tmp_path / "b.json", {})
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        os.umask(0o002)
        atomic.write_jsonl(tmp_path / "c.jsonl", [{}])
        assert stat.S_IMODE((tmp_path / "c.jsonl").stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_a_table_of_two_runs_has_a_run_column():
    from pipeline.results import latex, markdown, render_console, table_rows

    def metric(run):
        scores = {"bleu": 0.1, "rouge_l": 0.2, "bertscore": None, "dist1": 0.9, "len": 10.0, "sacrebleu": 5.0,
                  "self_bleu_src": 0.3, "empty": 0.0}
        return {"run": run, "label": "DiffuSeq", "step": 100, "split": "valid", "n": 2, "rows": {"single": scores},
                "copy_source": {**scores, "self_bleu_src": 1.0}}

    rows = table_rows([metric("seed-1"), metric("seed-2")])
    md = markdown(rows)
    assert md.splitlines()[0].startswith("| Model | Run |") and "| seed-1 |" in md and "| seed-2 |" in md
    assert "Model & Run &" in latex(rows)
    assert "seed-2" in render_console(rows, width=None)
    assert "| Run |" not in markdown(table_rows([metric("seed-1")]))  # one run: no column


@integration
def test_piped_errors_are_one_line(tmp_path):
    run = "a-run-with-a-name-long-enough-to-wrap-an-eighty-column-terminal-line-twice-over-" + "x" * 40
    proc = pipeline("status", run, root=tmp_path / "no-such-root", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and run in proc.stderr
