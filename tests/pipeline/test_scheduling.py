"""The scheduler logic of advance and status, in process and in a second, against a fake Slurm and
a fake PJM that answer as their commands do and run nothing (fake_slurm/, fake_pjm/): what is
submitted when, waiting for which jobs, as which arrays; one query a pass; jobs superseded,
resubmitted, given up; retry. The real-Slurm tests (test_slurm.py, test_pjm_study.py) run the
same study for real."""

import json
import os
from pathlib import Path

import pytest

from diffusion import atomic
from pipeline.advance import MAX_ATTEMPTS, advance
from pipeline.jobs import Registry
from pipeline.layout import RunLayout
from pipeline.spec import freeze, load_spec
from pipeline.stages import write_run_inputs
from pipeline.states import RunState, TaskState
from pipeline.status import run_status
from tests.helpers import REPO

FAKE = Path(__file__).parent / "fake_slurm"
FAKE_PJM = Path(__file__).parent / "fake_pjm"


class FakeSlurm:
    def __init__(self, path: Path):
        self.path = path

    def data(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {"next": 1000, "jobs": {}, "calls": []}

    def job(self, job_id: str) -> dict:
        return self.data()["jobs"][job_id.split("_")[0]]

    def set(self, job_id: str, state: str) -> None:
        data = self.data()
        main, _, index = job_id.partition("_")
        data["jobs"][main]["state"][index] = state
        self.path.write_text(json.dumps(data))

    def calls(self, command: str) -> int:
        return sum(call == command for call in self.data().get("calls", []))


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(tmp_path / "slurm.json"))
    return FakeSlurm(tmp_path / "slurm.json")


@pytest.fixture
def pjm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE_PJM}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PJM", str(tmp_path / "pjm.json"))
    return FakeSlurm(tmp_path / "pjm.json")  # the same JSON shape: jobs, states by index, calls


def study(tmp_path, executor: str) -> RunLayout:
    spec = load_spec(REPO / "jobs/demo_target.yaml", [f"site.executor={executor}", "train.steps=40", "train.save_every=20"])
    layout = RunLayout(tmp_path / "runs", spec.name)
    write_run_inputs(layout, spec, freeze(spec))
    return layout


@pytest.fixture
def run(tmp_path) -> RunLayout:
    return study(tmp_path, "slurm")


def jobs_of(layout: RunLayout) -> dict[str, str]:
    return {task: entry["job_id"] for task, entry in Registry(layout).data["tasks"].items()}


def done(layout: RunLayout, stage: str, step=None) -> None:
    layout.mark_done(stage, step)


def complete_checkpoint(layout: RunLayout, step: int) -> None:
    folder = layout.checkpoint(step)
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"x")
    atomic.write_json(folder / "meta.json", {"step": step, "world_size": 1, "files": {"model.pt": 1}})


def test_the_whole_study_is_queued_at_submit_waiting_for_the_right_jobs_as_arrays(slurm, run):
    report = advance(run)
    assert report["submitted"] == ["preprocess", "train", "sample-0000020", "sample-0000040", "evaluate-0000020",
                                   "evaluate-0000040", "aggregate"]
    ids = jobs_of(run)
    sample, evaluate = ids["sample-0000020"].split("_")[0], ids["evaluate-0000020"].split("_")[0]
    assert ids["sample-0000040"] == f"{sample}_1" and ids["evaluate-0000040"] == f"{evaluate}_1"  # one array a stage
    assert slurm.job(ids["preprocess"])["dependency"] is None
    assert slurm.job(ids["train"])["dependency"] == f"afterok:{ids['preprocess']}"
    assert slurm.job(sample)["dependency"] == f"afterok:{ids['train']}" and slurm.job(sample)["array"] == 2
    assert slurm.job(evaluate)["dependency"] == f"aftercorr:{sample}"  # task i after sampling task i
    assert slurm.job(ids["aggregate"])["dependency"] == f"afterok:{evaluate}_0:{evaluate}_1"
    assert slurm.job(ids["train"])["name"] == "demo-target-train" and slurm.job(sample)["name"] == "demo-target-sample"
    # a second pass submits nothing and asks sacct once
    before = slurm.calls("sacct")
    assert advance(run)["submitted"] == [] and slurm.calls("sacct") == before + 1


def test_status_reads_the_jobs_states_from_one_query(slurm, run):
    advance(run)
    ids = jobs_of(run)
    slurm.set(ids["preprocess"], "COMPLETED")
    done(run, "preprocess")
    slurm.set(ids["train"], "RUNNING")
    st = run_status(run, advance(run, submit=False))
    tasks = {t["task"]: t for stage in st["stages"] for t in stage["tasks"]}
    assert st["state"] == RunState.RUNNING and st["scheduler_queries"] == 1
    assert tasks["train"]["state"] == TaskState.RUNNING and tasks["train"]["job"] == ids["train"]
    assert tasks["sample-0000020"]["state"] == TaskState.QUEUED and tasks["sample-0000020"]["job_state"] == "PENDING"


def test_a_checkpoint_ready_while_training_goes_on_gets_its_own_job_and_the_waiting_one_is_cancelled(slurm, run):
    advance(run)
    ids = jobs_of(run)
    done(run, "preprocess")
    slurm.set(ids["preprocess"], "COMPLETED")
    slurm.set(ids["train"], "RUNNING")
    complete_checkpoint(run, 20)
    report = advance(run)
    # its sampling goes out now, and what waited for the old job waits for the new one
    assert report["submitted"] == ["sample-0000020", "evaluate-0000020", "aggregate"]
    assert report["superseded"] == [ids["sample-0000020"], ids["evaluate-0000020"], ids["aggregate"]]
    fresh = jobs_of(run)
    assert slurm.job(fresh["sample-0000020"])["dependency"] is None  # its input is there: no wait
    assert slurm.job(fresh["evaluate-0000020"])["dependency"] == f"afterok:{fresh['sample-0000020']}"
    assert slurm.job(fresh["aggregate"])["dependency"] == f"afterok:{fresh['evaluate-0000020']}:{ids['evaluate-0000040']}"
    assert slurm.job(ids["sample-0000020"])["state"]["0"] == "CANCELLED"  # the array task that waited for training
    assert slurm.job(ids["sample-0000020"])["state"]["1"] == "PENDING"  # its sibling still waits for step 40
    assert Registry(run).current("sample-0000020")["earlier"] == [ids["sample-0000020"]]


def test_a_killed_job_is_submitted_again_until_it_has_started_max_attempts_times(slurm, run):
    advance(run)
    done(run, "preprocess")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        train = jobs_of(run)["train"]
        atomic.write_json(run.started("train", train), {"started": attempt})
        slurm.set(train, "NODE_FAIL")  # it started, then its node died: no failure marker
        report = advance(run)
        if attempt < MAX_ATTEMPTS:
            assert "train" in report["submitted"] and jobs_of(run)["train"] != train
    assert report["given_up"] == {"train": MAX_ATTEMPTS} and "train" not in report["submitted"]
    st = run_status(run, report)
    assert st["state"] == RunState.FAILED and "started 3 times" in st["failures"][0]["error"]


def test_a_task_that_failed_by_its_own_error_waits_for_retry_and_what_needs_it_is_blocked(slurm, run):
    from pipeline.runs import retry

    advance(run)
    ids = jobs_of(run)
    slurm.set(ids["preprocess"], "FAILED")
    run.mark_failed("preprocess", None, "DataError: train.jsonl:3: not valid JSON")
    slurm.set(ids["train"], "CANCELLED")  # Slurm's --kill-on-invalid-dep
    report = advance(run)
    assert report["submitted"] == []
    st = run_status(run, report)
    tasks = {t["task"]: t for stage in st["stages"] for t in stage["tasks"]}
    assert tasks["preprocess"]["state"] == TaskState.FAILED and tasks["train"]["state"] == TaskState.BLOCKED
    assert retry(run, wait=False) == 0
    assert jobs_of(run)["preprocess"] != ids["preprocess"] and run.failure("preprocess") is None


def test_a_job_the_scheduler_does_not_answer_for_is_never_replaced_on_a_guess(slurm, run):
    advance(run)
    ids = jobs_of(run)
    data = slurm.data()
    del data["jobs"][ids["train"]]  # sacct says nothing of it: UNKNOWN, counted as live
    slurm.path.write_text(json.dumps(data))
    done(run, "preprocess")
    complete_checkpoint(run, 20)
    report = advance(run)
    assert report["states"][ids["train"]] == "UNKNOWN"
    assert "train" not in report["submitted"] and jobs_of(run)["train"] == ids["train"]


# --- PJM: jobs cannot wait for each other, so each pass submits what has become ready -----------

def test_pjm_tasks_go_out_as_their_inputs_become_ready_with_one_pjstat_a_pass(pjm, tmp_path):
    run = study(tmp_path, "pjm")
    assert advance(run)["submitted"] == ["preprocess"]  # nothing else is ready, and nothing can wait
    assert advance(run)["submitted"] == [] and pjm.calls("pjstat") == 1
    preprocess = jobs_of(run)["preprocess"]
    pjm.set(preprocess, "EXT")
    done(run, "preprocess")
    assert advance(run)["submitted"] == ["train"] and pjm.calls("pjstat") == 1  # no job unfinished: no query
    pjm.set(jobs_of(run)["train"], "RUN")  # not listed by pjstat -H: active
    complete_checkpoint(run, 20)
    complete_checkpoint(run, 40)
    report = advance(run)
    assert pjm.calls("pjstat") == 2
    assert report["submitted"] == ["sample-0000020", "sample-0000040"]  # one bulk job, while training goes on
    ids = jobs_of(run)
    assert ids["sample-0000040"] == ids["sample-0000020"].split("_")[0] + "_1"
    assert pjm.job(ids["sample-0000020"])["bulk"] == 2 and pjm.job(ids["sample-0000020"])["name"] == "demo-target-sample"
    st = run_status(run, report)
    assert {t["task"]: t["state"] for s in st["stages"] for t in s["tasks"]}["train"] == TaskState.QUEUED  # PJM's -H
    # cannot tell queued from running; the job's own start marker can
    atomic.write_json(run.started("train", ids["train"]), {"started": 1})
    st = run_status(run, advance(run, submit=False))
    assert {t["task"]: t["state"] for s in st["stages"] for t in s["tasks"]}["train"] == TaskState.RUNNING


def test_pjm_a_job_killed_by_pjm_is_resubmitted_and_cancel_goes_through_pjdel(pjm, tmp_path):
    from pipeline.runs import cancel

    run = study(tmp_path, "pjm")
    advance(run)
    preprocess = jobs_of(run)["preprocess"]
    atomic.write_json(run.started("preprocess", preprocess), {"started": 1})
    pjm.set(preprocess, "EXT:137")  # ended by a signal, without its marker
    report = advance(run)
    assert report["submitted"] == ["preprocess"] and jobs_of(run)["preprocess"] != preprocess
    assert cancel(run) == 0
    assert pjm.calls("pjdel") == 1 and pjm.job(jobs_of(run)["preprocess"])["state"][""] == "CCL"
    assert run_status(run, advance(run, submit=False))["state"] == RunState.CANCELLED
