"""The pipeline end to end on the local executor, as a user drives it: submit, status, results, score."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffusion import locks
from pipeline.layout import LayoutError, RunLayout
from tests.helpers import REPO, integration

pytestmark = integration  # each test spawns the CLI or a trainer

# the demo, shrunk so that a whole study takes well under a minute on 2 cores
SMALL = ["--set", "train.steps=40", "--set", "train.save_every=20", "--set", "train.log_every=10",
         "--set", "diffusion.steps=20", "--set", "data.synthetic_pairs=1500", "--set", "sample.seeds=[101,102]"]


def pipeline(*args, root: Path, check=True, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(root), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"pipeline {' '.join(map(str, args))}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def status(root: Path, run: str) -> dict:
    return json.loads(pipeline("status", run, "--json", root=root).stdout)


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Both demo runs submitted and waited for, once for the module."""
    root = tmp_path_factory.mktemp("runs")
    pipeline("submit", "jobs/demo_target.yaml", *SMALL, "--wait", root=root)
    pipeline("submit", "jobs/demo_full.yaml", *SMALL, "--wait", root=root)
    return root


def test_demo_runs_end_to_end_with_every_checkpoint(finished_runs):
    st = status(finished_runs, "demo-target")
    assert st["state"] == "done" and not st["failures"]
    assert [s["stage"] for s in st["stages"]] == ["preprocess", "train", "sample", "evaluate", "aggregate"]
    assert [t["step"] for t in st["stages"][2]["tasks"]] == [20, 40]
    run = RunLayout(finished_runs, "demo-target")
    metrics = json.loads(run.metrics(40).read_text())
    assert set(metrics["rows"]) == {"single", "mbr-2"} and metrics["copy_source"]["bleu"] > 0
    assert metrics["rows"]["single"]["bertscore"] is not None  # the offline MiniLM model
    table = (run.results / "table.md").read_text()
    assert "DiffuSeq (20 interval)" in table and "DiffuSeq (40 interval)" in table and "Copy source" in table
    assert (run.results / "metrics.png").stat().st_size > 10_000


def test_resubmitting_a_finished_run_skips_everything(finished_runs):
    run = RunLayout(finished_runs, "demo-target")
    before = {p: p.stat().st_mtime_ns for p in run.dir.rglob("*") if p.is_file() and "logs" not in p.parts}
    started = time.monotonic()
    proc = pipeline("submit", "jobs/demo_target.yaml", *SMALL, "--wait", root=finished_runs)
    assert "finished tasks are skipped" in proc.stdout
    assert time.monotonic() - started < 60
    after = {p: p.stat().st_mtime_ns for p in before}
    changed = [p for p in before if after[p] != before[p] and p.name != "driver.json"]
    assert changed == [p for p in changed if p.name in ("spec.yaml", "config.yaml")]


def test_resubmitting_with_another_spec_is_refused(finished_runs):
    proc = pipeline("submit", "jobs/demo_target.yaml", *SMALL, "--set", "train.lr=0.5", root=finished_runs, check=False)
    assert proc.returncode == 2 and "different spec" in proc.stderr and "Traceback" not in proc.stderr


def test_resubmitting_with_an_added_decoding_decodes_it_without_training_again(finished_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(finished_runs, root, symlinks=True)  # the module's runs stay as they were
    run = RunLayout(root, "demo-target")
    kept = {path: path.read_bytes() for path in (run.marker("train"), run.samples_file(40), run.metrics(40))}
    added = ["--set", "decodings={dpm-5: {sample.steps: 5}}"]
    # while an aggregate runs (it will want the run's lock to mark itself done) it is not waited for
    with locks.exclusive(run.task_lock("aggregate")):
        proc = pipeline("submit", "jobs/demo_target.yaml", *SMALL, *added, root=root, check=False)
    assert proc.returncode == 2 and "gathering its results right now" in proc.stderr
    assert "dpm-5" not in run.spec.read_text()
    proc = pipeline("submit", "jobs/demo_target.yaml", *SMALL, *added, "--wait", root=root)
    assert "gains the decodings dpm-5" in proc.stdout
    assert all(path.read_bytes() == before for path, before in kept.items())  # nothing trained or decoded again
    assert status(root, "demo-target")["state"] == "done"
    rows = json.loads((run.results / "table.json").read_text())
    assert {row["decoded_with"] for row in rows if row["decoding"] != "copy"} == {"", "dpm-5"}
    # a decoding it has, changed, is another spec
    proc = pipeline("submit", "jobs/demo_target.yaml", *SMALL, "--set", "decodings={dpm-5: {sample.steps: 6}}",
                    root=root, check=False)
    assert proc.returncode == 2 and "different spec" in proc.stderr and "Traceback" not in proc.stderr


def test_an_aggregate_started_before_its_evaluations_are_done_leaves_the_run_alone(finished_runs, tmp_path):
    # as an aggregate job queued before the run gained a decoding would, started by the scheduler early
    from pipeline.stages import run_task

    root = tmp_path / "runs"
    shutil.copytree(finished_runs, root, symlinks=True)
    run = RunLayout(root, "demo-target")
    run.undo("evaluate", 40)
    run.undo("aggregate")
    assert "waiting for evaluate-0000040" in run_task(str(run.dir), "aggregate")
    assert not run.is_done("aggregate") and run.failure("aggregate") is None


def test_combined_results_table_for_both_modes(finished_runs, tmp_path):
    proc = pipeline("results", "demo-target", "demo-full", "--out", tmp_path, root=finished_runs)
    assert "Full-Noised (40 interval)" in proc.stdout and "DiffuSeq (40 interval)" in proc.stdout
    rows = json.loads((tmp_path / "table.json").read_text())
    models = [r["model"] for r in rows]
    assert "Full-Noised (20 interval)" in models and "DiffuSeq (20 interval) MBR-2" in models
    for suffix in ("md", "csv", "tex", "png"):
        assert (tmp_path / f"table.{suffix}" if suffix != "png" else tmp_path / "metrics.png").is_file()


def test_score_command_prints_the_protocol_metrics(finished_runs, tmp_path):
    samples = RunLayout(finished_runs, "demo-full").samples(40) / "samples.jsonl"
    proc = pipeline("score", samples, "--no-bertscore", "--json", root=finished_runs)
    result = json.loads(proc.stdout)
    # every figure the text output shows (issue 15): BLEU against the source and empty outputs too
    assert set(result) == {"bleu", "rouge_l", "bertscore", "dist1", "len", "sacrebleu", "self_bleu_src", "empty"}
    assert result["bertscore"] is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hyp": "a", "ref": "b"}\n{"hyp": 1}\n')
    proc = pipeline("score", bad, "--no-bertscore", root=finished_runs, check=False)
    assert proc.returncode == 2 and f"{bad}:2" in proc.stderr and "Traceback" not in proc.stderr


def test_a_training_job_killed_mid_write_leaves_no_completion_marker(tmp_path):
    root = tmp_path / "runs"
    # long enough to be killed mid-training (a checkpoint every 20 steps, so maybe mid-write), short
    # enough that the resumed run has few checkpoints to sample and score: each is a task of its own
    slow = ["--set", "train.steps=120", "--set", "train.save_every=20", "--set", "train.log_every=5"]
    pipeline("submit", "jobs/demo_target.yaml", *SMALL, *slow, root=root)  # the detached local loop
    run = RunLayout(root, "demo-target")
    deadline = time.monotonic() + 240
    while not list(run.checkpoints.glob("step_*")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert list(run.checkpoints.glob("step_*")), "training never wrote a checkpoint"
    driver = json.loads((run.state / "driver.json").read_text())
    os.killpg(driver["pgid"], signal.SIGKILL)  # the whole job, mid-training, maybe mid-checkpoint
    time.sleep(1)
    assert not run.is_done("train")
    st = status(root, "demo-target")
    assert st["state"] == "stopped" and st["stages"][1]["state"] != "done"
    from diffusion import checkpoint

    for step, folder in checkpoint.complete_steps(run.checkpoints):
        checkpoint.verify(folder)  # whatever carries a final name is complete
    # submitting again resumes from the last complete checkpoint and finishes the study
    pipeline("submit", "jobs/demo_target.yaml", *SMALL, *slow, "--wait", root=root, timeout=1200)
    assert status(root, "demo-target")["state"] == "done"
    assert "resumed from" in run.log("train").read_text()


def test_run_ids_are_validated():
    for bad in ("../x", "a/b", "", ".hidden", "a..b"):
        with pytest.raises(LayoutError):
            RunLayout("/tmp", bad)


def test_watch_and_retry_on_a_finished_run_do_nothing(finished_runs):
    run = RunLayout(finished_runs, "demo-full")
    jobs = (run.state / "jobs.json").read_text()
    proc = pipeline("watch", "demo-full", "--interval", "1", root=finished_runs, timeout=120)
    assert "demo-full: done" in proc.stdout
    proc = pipeline("retry", "demo-full", root=finished_runs)
    assert "no failed task to retry" in proc.stdout
    assert (run.state / "jobs.json").read_text() == jobs  # nothing was submitted
