"""Scheduler backends and the scheduler-state logic of advance, with the scheduler's answers written out."""

import pytest

from pipeline.advance import _arrays, _stale
from pipeline.backends import NAMES, backend, is_live
from pipeline.plan import Task
from pipeline.spec import SiteSpec, StageResources


def test_every_named_backend_loads_and_says_what_it_can():
    assert set(NAMES) == {"local", "slurm", "pjm"}
    local, slurm, pjm = backend("local"), backend("slurm"), backend("pjm")
    assert (local.drives_itself, slurm.drives_itself, pjm.drives_itself) == (True, False, False)
    assert (local.jobs_can_wait, slurm.jobs_can_wait, pjm.jobs_can_wait) == (False, True, False)
    with pytest.raises(ValueError, match="choose one of: local, slurm, pjm"):
        backend("lsf")


def test_only_slurm_jobs_wait_and_a_failed_dependency_cancels_them(tmp_path):
    res = StageResources(cpus=1, time_min=5)
    executor = backend("slurm").make_executor(tmp_path, SiteSpec(executor="slurm", account="acct"), res, "x")
    backend("slurm").wait_for(executor, ["11", "12"])
    extra = executor.parameters["additional_parameters"]
    assert extra == {"account": "acct", "dependency": "afterok:11:12", "kill_on_invalid_dep": "yes"}
    backend("slurm").wait_for(executor, [], correspond="40")
    assert executor.parameters["additional_parameters"]["dependency"] == "aftercorr:40"
    with pytest.raises(ValueError, match="cannot wait"):
        backend("local").wait_for(backend("local").make_executor(tmp_path, SiteSpec(), res), ["1"])


def test_local_jobs_are_live_while_their_process_is():
    import os

    states = backend("local").query([str(os.getpid()), "999999999"])
    assert states == {str(os.getpid()): "RUNNING", "999999999": "FINISHED"}
    assert is_live("PENDING") and is_live("UNKNOWN") and not is_live("COMPLETED") and not is_live("FINISHED")


def test_a_local_job_holds_neither_the_submitters_terminal_nor_its_pipes(tmp_path):
    """A job outliving `pipeline submit --wait` (Ctrl-C hands the run to a background loop) must
    not keep the submitter's stdin/stdout/stderr open: whoever reads that output would wait for
    the study to end. Its controller writes to a log in the run's submitit folder instead."""
    import os
    import sys
    import time

    local = backend("local")
    executor = local.make_executor(tmp_path, SiteSpec(python=sys.executable), StageResources(cpus=1, time_min=5))
    job = executor.submit(time.sleep, 60)
    log = str(tmp_path / "controllers.log")

    def streams(pid):
        return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)]

    try:
        shell = int(job.job_id)  # the shell that runs the setup, then the controller
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (children := open(f"/proc/{shell}/task/{shell}/children").read().split()):
            time.sleep(0.1)
        assert children, "the job's controller never started"
        assert streams(shell) == streams(int(children[0])) == ["/dev/null", log, log]
    finally:
        local.cancel([job.job_id])


def samples(n):
    return [Task("sample", step) for step in range(n)]


def test_arrays_group_tasks_waiting_for_the_same_jobs_or_task_by_task_for_one_array():
    same = [("run", t, ["7"]) for t in samples(3)]
    assert _arrays(same) == [(same, ["7"], None)]
    corresponding = [(f"run{i}", t, [f"40_{i}"]) for i, t in enumerate(samples(3))]
    assert _arrays(corresponding) == [(corresponding, [], "40")]
    # two runs' sampling, each waiting for its own training: an array a run
    mixed = [("a", samples(2)[0], ["7"]), ("b", samples(2)[0], ["8"]), ("a", samples(2)[1], ["7"])]
    assert _arrays(mixed) == [([mixed[0], mixed[2]], ["7"], None), ([mixed[1]], ["8"], None)]


def test_a_pending_job_is_stale_when_it_waits_for_a_job_it_no_longer_needs():
    entry = {"job_id": "20", "after": ["10"]}
    # its prerequisite is done (inputs ready) while the job it waits for still runs: replace it
    assert _stale(entry, [], {}, {"20": "PENDING", "10": "RUNNING"})
    # a running job is never replaced; nor one the scheduler did not answer for
    assert not _stale(entry, [], {}, {"20": "RUNNING", "10": "RUNNING"})
    assert not _stale(entry, [], {}, {"20": "PENDING", "10": "UNKNOWN"})
    # it waits for the job that now carries its prerequisite: keep; for another one: replace
    assert not _stale(entry, ["train"], {"train": "10"}, {"20": "PENDING", "10": "RUNNING"})
    assert _stale(entry, ["train"], {"train": "11"}, {"20": "PENDING", "11": "PENDING"})


def slurm_run(tmp_path):
    """A demo run on Slurm with its jobs recorded: preprocess done, train running (job 101), the
    samples of steps 100 and 200 as array 102, evaluate of step 100 as job 103."""
    from pipeline.jobs import Registry
    from pipeline.layout import RunLayout
    from pipeline.spec import freeze, load_spec
    from pipeline.stages import write_run_inputs
    from helpers import REPO

    spec = load_spec(REPO / "jobs/demo_target.yaml", ["site.executor=slurm", "train.steps=200", "train.save_every=100"])
    layout = RunLayout(tmp_path, spec.name)
    write_run_inputs(layout, spec, freeze(spec))
    layout.mark_done("preprocess")
    registry = Registry(layout)
    for task, job in [("train", "101"), ("sample-0000100", "102_0"), ("sample-0000200", "102_1"),
                      ("evaluate-0000100", "103")]:
        registry.record(task, "slurm", job, [])
    registry.save()
    return layout


def states_of(st):
    return {task["task"]: task["state"] for stage in st["stages"] for task in stage["tasks"]}


def test_status_reads_the_task_states_from_the_one_query_it_is_given(tmp_path):
    from pipeline.status import run_status

    layout = slurm_run(tmp_path)
    answer = {"101": "RUNNING", "102_0": "PENDING", "102_1": "PENDING", "103": "PENDING"}
    st = run_status(layout, {"executor": "slurm", "states": answer})
    states = states_of(st)
    assert states["preprocess"] == "done" and states["train"] == "running"
    assert states["sample-0000100"] == states["evaluate-0000100"] == "queued"  # live jobs, waiting in Slurm
    assert states["aggregate"] == "waiting-for-input"
    assert st["state"] == "running" and st["scheduler_queries"] == 1


def test_a_job_that_ended_without_its_output_is_queued_again_and_an_own_error_fails(tmp_path):
    from pipeline.status import run_status

    layout = slurm_run(tmp_path)
    layout.mark_failed("sample", 200, "a bad checkpoint")  # its own error: not retried by itself
    answer = {"101": "COMPLETED", "102_0": "CANCELLED", "102_1": "FAILED", "103": "UNKNOWN"}
    layout.mark_done("train")
    st = run_status(layout, {"executor": "slurm", "states": answer})
    states = states_of(st)
    assert states["sample-0000100"] == "queued"  # killed (cancelled) without its output: submitted again
    assert states["sample-0000200"] == "failed" and st["failures"][0]["error"] == "a bad checkpoint"
    assert states["evaluate-0000100"] == "queued"  # the scheduler did not answer: live, never resubmitted
    assert states["evaluate-0000200"] == "blocked"  # its sample failed
