"""The demo study through PJM: the pipeline's PJM plugin talking to the stand-in pjsub/pjstat/pjdel
(tests/pipeline/pjm_standins), which run every job for real on the local Slurm. PJM jobs cannot wait for one
another, so `pipeline status` submits each stage when it becomes ready, with one pjstat a call."""

import json
import os
import time
from pathlib import Path


from pipeline.layout import RunLayout
from tests.helpers import integration, needs_slurm
from tests.pipeline.test_pipeline import SMALL, pipeline

pytestmark = [*needs_slurm, integration]


def pjm_calls(log, command: str) -> int:
    if not log.exists():
        return 0
    return sum(json.loads(line)[0].endswith(command) for line in log.read_text().splitlines() if line.strip())


def test_demo_study_runs_through_pjm_standins(tmp_path, monkeypatch):
    log = tmp_path / "pjm.calls"
    monkeypatch.setenv("PATH", f"{Path(__file__).parent / 'pjm_standins'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PJM_STANDIN_LOG", str(log))
    root = tmp_path / "runs"
    proc = pipeline("submit", "jobs/demo_target.yaml", *SMALL, "--executor", "pjm", root=root)
    assert "submitted: preprocess" in proc.stdout and "pipeline watch" in proc.stdout
    assert pjm_calls(log, "pjsub") == 1  # only what is ready: PJM cannot chain jobs
    run = RunLayout(root, "demo-target")
    deadline = time.monotonic() + 900
    while True:
        before = pjm_calls(log, "pjstat")
        st = json.loads(pipeline("status", "demo-target", "--json", root=root).stdout)
        assert pjm_calls(log, "pjstat") - before <= 1, "a status call made more than one pjstat query"
        assert st["state"] not in ("failed", "cancelled"), st["failures"]
        if st["state"] == "done":
            break
        assert time.monotonic() < deadline, st
        if pjm_calls(log, "pjsub") == 2 and not run.is_done("train"):
            # Train is queued. Early sampling would submit each checkpoint's sampling as soon as a
            # status call sees it (tested on Slurm); to see the array go as one bulk job, let
            # training finish unobserved so that every checkpoint is ready at the next call.
            while not run.is_done("train"):
                assert not list(run.state.glob("*.failed")) and time.monotonic() < deadline
                time.sleep(1)
        time.sleep(1)
    assert (run.results / "table.md").read_text().count("DiffuSeq") == 4
    scripts = "".join(p.read_text() for p in (run.dir / "logs" / "submitit").glob("*_submission.sh"))
    assert "#PJM -L" in scripts and "--bulk" not in scripts  # bulk options go on pjsub's command line
    pjsubs = [json.loads(line) for line in log.read_text().splitlines() if json.loads(line)[0].endswith("pjsub")]
    assert any("--bulk" in call for call in pjsubs), "the sampling array was not one bulk job"
    assert not list(run.state.glob("*.failed"))
