"""Studies through a real Slurm (env/local-slurm.sh brings one up; .ci/run does in CI): the whole
study queued at submit, `pipeline status` advancing it with one sacct per call, and faults
injected for real (two submits at once, the trainer killed, a checkpoint corrupted, a sampling
task cancelled, a task failing by itself and retried alone)."""

import json
import os
import shutil
import subprocess
import time

import pytest

from pipeline.layout import RunLayout
from tests.helpers import REPO, integration, needs_slurm
from tests.pipeline.test_pipeline import SMALL, pipeline


pytestmark = [*needs_slurm, integration]

# one CPU a task, so that sampling a checkpoint can run beside training on the 2-CPU node
STUDY = [*SMALL, "--set", "train.steps=80", "--set", "train.save_every=40", "--executor", "slurm",
         *[x for stage in ("preprocess", "train", "sample", "evaluate") for x in ("--set", f"resources.{stage}.cpus=1")]]
NAMES = {"demo-full-preprocess", "demo-full-train", "demo-full-sample", "demo-full-evaluate", "demo-full-aggregate"}


@pytest.fixture
def counting_sacct(tmp_path):
    """A `sacct` first on PATH that logs each call and runs the real one."""
    bin_dir, log = tmp_path / "bin", tmp_path / "sacct.calls"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {shutil.which("sacct")} "$@"\n')
    (bin_dir / "sacct").chmod(0o755)
    os.environ["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    yield log
    os.environ["PATH"] = os.environ["PATH"].split(":", 1)[1]


def status(root, run="demo-full") -> dict:
    return json.loads(pipeline("status", run, "--json", root=root).stdout)


def tasks_by_name(st) -> dict:
    return {t["task"]: t for stage in st["stages"] for t in stage["tasks"]}


def advance_until(root, predicate, timeout=600, every=1.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status(root)
        if predicate(st):
            return st
        assert st["state"] not in ("failed", "cancelled"), json.dumps(st["failures"], indent=1)
        time.sleep(every)
    raise AssertionError(f"timed out; last status: {json.dumps(st, indent=1)[-3000:]}")


def sacct_names(job_ids) -> dict[str, str]:
    """{job id: name}; slurmdbd learns of new jobs a moment after sbatch returns."""
    job_ids = sorted(set(job_ids))
    for _ in range(30):
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,JobName", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, check=True).stdout
        names = {line.split("|")[0].split("_")[0]: line.split("|")[1] for line in out.splitlines() if line}
        if set(names) >= set(job_ids):
            return names
        time.sleep(1)
    raise AssertionError(f"sacct does not know jobs {set(job_ids) - set(names)}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The study without faults: submitted, then driven by `pipeline status` alone."""
    root = tmp_path_factory.mktemp("reference")
    proc = pipeline("submit", "jobs/demo_full.yaml", *STUDY, root=root)
    jobs = json.loads((root / "demo-full" / "state" / "jobs.json").read_text())["tasks"]
    yield root, proc, jobs
    pipeline("cancel", "demo-full", root=root)  # a failed test leaves no jobs behind


@pytest.fixture
def cancel_after(tmp_path):
    yield tmp_path / "runs"
    if (tmp_path / "runs" / "demo-full").is_dir():
        pipeline("cancel", "demo-full", root=tmp_path / "runs")


def test_the_whole_study_is_queued_at_submit_and_status_advances_it(reference, counting_sacct):
    root, proc, jobs = reference
    run = RunLayout(root, "demo-full")
    assert set(jobs) == {"preprocess", "train", "sample-0000040", "sample-0000080",
                         "evaluate-0000040", "evaluate-0000080", "aggregate"}
    scripts = {p.read_text() for p in (run.dir / "logs" / "submitit").glob("*_submission.sh")}
    assert sum("--dependency=afterok:" in s for s in scripts) >= 3 and any("aftercorr:" in s for s in scripts)
    assert all("--kill-on-invalid-dep=yes" in s for s in scripts if "--dependency" in s)
    assert set(sacct_names([j["job_id"].split("_")[0] for j in jobs.values()]).values()) == NAMES
    calls_before = 0
    st = None
    while st is None or st["state"] != "done":
        st = status(root)
        calls = len(counting_sacct.read_text().splitlines()) if counting_sacct.exists() else 0
        assert calls - calls_before <= 1, "a status call made more than one scheduler query"
        calls_before = calls
        assert st["state"] not in ("failed", "cancelled"), st["failures"]
        time.sleep(1)
    assert (run.results / "table.md").read_text().count("Full-Noised") == 4
    # the first checkpoint's sampling was released while training was still going (when it starts
    # then depends on free CPUs)
    train_finished = json.loads(run.marker("train").read_text())["finished"]
    sample = json.loads((run.state / "jobs.json").read_text())["tasks"]["sample-0000040"]
    assert sample["after"] == [] and sample["submitted"] < train_finished and sample["earlier"]


def test_faults_injected_for_real_leave_the_same_table(reference, cancel_after):
    ref_root, root = reference[0], cancel_after
    run = RunLayout(root, "demo-full")
    # a task that fails by its own error: sample-0000080 cannot write its output folder
    (run.dir / "samples").mkdir(parents=True)
    (run.dir / "samples" / "step_0000080").write_text("in the way")

    # two submits of the same run at once: exactly one study queued
    cmd = [os.sys.executable, "-m", "pipeline.cli", "--root", str(root), "submit", "jobs/demo_full.yaml", *STUDY]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    ids = [p.name.split("_submission")[0] for p in (run.dir / "logs" / "submitit").glob("*_submission.sh")]
    names = sacct_names({i.split("_")[0] for i in ids})
    assert sorted(names.values()) == sorted(NAMES), names

    # kill the trainer (SIGKILL) once it has left its first checkpoint, then corrupt that checkpoint
    deadline = time.monotonic() + 300
    while not (run.checkpoint(40) / "meta.json").is_file():
        assert time.monotonic() < deadline, "training never wrote its first checkpoint"
        time.sleep(0.2)
    killed = subprocess.run(["pkill", "-KILL", "-f", f"diffusion.train {run.config}"]).returncode == 0
    assert killed, "the trainer was not running"
    with open(run.checkpoint(40) / "model.pt", "r+b") as f:
        f.truncate(100)

    # status resubmits training, which sets the corrupt checkpoint aside and starts again
    st = advance_until(root, lambda st: tasks_by_name(st)["train"]["state"] in ("running", "done"))
    assert "train" in json.dumps(st["submitted"]) or tasks_by_name(st)["train"]["job"] != reference[2]["train"]["job_id"]
    # cancel a sampling task while it runs: status resubmits it
    st = advance_until(root, lambda st: tasks_by_name(st)["sample-0000040"]["state"] == "running", every=0.3)
    cancelled = tasks_by_name(st)["sample-0000040"]["job"]
    subprocess.run(["scancel", cancelled], check=True)
    # the task that failed by itself blocks what needs it until `pipeline retry`
    st = advance_until(root, lambda st: st["state"] == "failed" or st["state"] == "done")
    tasks = tasks_by_name(st)
    assert tasks["sample-0000080"]["state"] == "failed" and "step_0000080" in json.dumps(st["failures"])
    assert tasks["evaluate-0000080"]["state"] == "blocked" and tasks["evaluate-0000040"]["state"] == "done"
    done_jobs = {name: t["job"] for name, t in tasks.items() if t["state"] == "done"}
    (run.dir / "samples" / "step_0000080").unlink()
    pipeline("retry", "demo-full", root=root)
    st = advance_until(root, lambda st: st["state"] == "done")
    # only the failed task and what waited for it ran again
    assert {name: t["job"] for name, t in tasks_by_name(st).items() if name in done_jobs} == done_jobs
    assert tasks_by_name(st)["sample-0000080"]["starts"] == 1  # retry starts its count afresh

    # nothing lost: the corrupt checkpoint was set aside, training resumed, the table is the reference's
    assert list(run.checkpoints.glob(".step_0000040.corrupt-*")), "the corrupt checkpoint was not kept aside"
    log = run.log("train").read_text()
    assert "set aside" in log and "model.pt" in log
    assert subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", cancelled], capture_output=True,
                          text=True).stdout.startswith("CANCELLED")
    advance_until(ref_root, lambda st: st["state"] == "done")  # when this test runs alone
    ours = json.loads((run.results / "table.json").read_text())
    ref = json.loads((RunLayout(ref_root, "demo-full").results / "table.json").read_text())
    assert [r["model"] for r in ours] == [r["model"] for r in ref]
    # identical samples; BERTScore's float sums may differ in the last digits between processes
    for mine, theirs in zip(ours, ref):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            assert mine[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), (mine["model"], key)
