"""The PJM plugin for submitit (pipeline/pjm.py) and the stand-in PJM commands (tests/pipeline/pjm_standins).

Rendering is compared with golden scripts, parsing with outputs in PJM's documented formats; the
end-to-end tests run real jobs on the local Slurm through the stand-ins (which call sbatch, sacct
and scancel). Jobs run functions of the standard library (pickled by reference), so the job's
Python needs nothing from this test module.
"""

import json
import math
import operator
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
from submitit.core import job_environment, plugins, utils

from pipeline import pjm
from tests.helpers import slurm_test

STANDINS = Path(__file__).parent / "pjm_standins"
GOLDEN = Path(__file__).parent / "golden"




@pytest.fixture
def standins(monkeypatch, tmp_path):
    """The stand-ins first on PATH; returns a function giving the PJM calls made so far."""
    log = tmp_path / "pjm-calls.jsonl"
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PJM_STANDIN_LOG", str(log))
    return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def script_of(executor, folder: Path) -> str:
    text = executor._make_submission_file_text(executor._submitit_command_str, "uid")
    return text.replace(str(folder), "{FOLDER}").replace(shlex.quote(sys.executable), "{PYTHON}")


def check_golden(name: str, text: str) -> None:
    golden = GOLDEN / name
    assert golden.exists(), f"missing {golden}: review this script and save it there\n{text}"
    assert text == golden.read_text(), f"{name} changed; if on purpose, update the golden file to:\n{text}"


# --- rendering ------------------------------------------------------------------------------------

def test_single_gpu_job_script_matches_golden(standins, tmp_path):
    executor = submitit.AutoExecutor(tmp_path, cluster="pjm")
    executor.update_parameters(name="demo-full-train", timeout_min=90, nodes=1, gpus_per_node=4, cpus_per_task=36,
                               mem_gb=64, tasks_per_node=1, pjm_rscgrp="share-short", pjm_group="gz00",
                               pjm_setup=["module load cuda/12.2", "source $HOME/venv/bin/activate"],
                               pjm_env={"OMP_NUM_THREADS": "9"}, pjm_restart=False)
    check_golden("pjm_single.sh", script_of(executor._executor, tmp_path))


def test_bulk_job_script_matches_golden_and_is_submitted_as_one_bulk_job(standins, tmp_path):
    executor = pjm.PjmExecutor(tmp_path)
    executor.update_parameters(job_name="demo full/sample", timeout_min=30, nodes=2, rscgrp="regular-a",
                               group="gz00", stderr_to_stdout=True)
    executor.parameters["map_count"] = 3  # what an array of 3 sets on its copy of the executor
    check_golden("pjm_bulk.sh", script_of(executor, tmp_path))
    assert executor._make_submission_command(Path("s.sh")) == ["pjsub", "--bulk", "--sparam", "0-2", "s.sh"]


def test_nodes_and_gpus_follow_the_site_rule(standins, tmp_path):
    def resources(**params):
        executor = pjm.PjmExecutor(tmp_path)
        executor.update_parameters(**params)
        return [line for line in script_of(executor, tmp_path).splitlines() if line.startswith("#PJM -L")]

    assert "#PJM -L gpu=2" in resources(gpus_per_node=2)  # shared-GPU group
    assert "#PJM -L node=1" in resources(gpus_per_node=8, whole_node=True)  # whole node, its GPUs with it
    assert "#PJM -L node=4" in resources(nodes=4, gpus_per_node=8)
    assert "#PJM -L elapse=48:00:00" in resources(timeout_min=2880)


def test_bad_parameters_are_refused_when_set(standins, tmp_path):
    executor = submitit.AutoExecutor(tmp_path, cluster="pjm")
    with pytest.raises(ValueError, match="tasks_per_node must be 1"):
        executor.update_parameters(tasks_per_node=4)
    with pytest.raises(ValueError, match="no comma"):
        executor.update_parameters(pjm_env={"LIST": "a,b"})
    with pytest.raises(NameError, match="rsc_group"):
        executor.update_parameters(pjm_rsc_group="x")


def test_pipeline_stages_get_the_site_resource_group_group_and_modules(standins, tmp_path):
    from pipeline.backends import backend
    from pipeline.spec import SiteSpec, StageResources

    site = SiteSpec(name="wisteria-aquarius", executor="pjm", account="gz00", modules=("cuda/12.2",),
                    setup=("source $HOME/venv/bin/activate",))
    executor = backend("pjm").make_executor(tmp_path, site, StageResources(gpus=4, cpus=36, time_min=120, partition="share"),
                             name="qqp-full-train")
    lines = script_of(executor._executor, tmp_path).splitlines()
    for line in ["#PJM -L rscgrp=share", "#PJM -L gpu=4", "#PJM -L elapse=02:00:00", "#PJM -g gz00",
                 "#PJM -N qqp-full-train", "module load cuda/12.2", "source $HOME/venv/bin/activate"]:
        assert line in lines


# --- parsing --------------------------------------------------------------------------------------

@pytest.mark.parametrize("output, job_id", [
    ("[INFO] PJM 0000 pjsub Job 12345 submitted.", "12345"),
    ("pjsub: [INFO] PJM 0000 pjsub Job 12345 submitted.\n", "12345"),
    ("[INFO.] PJM 0000 pjsub Job 64856_0 submitted.", "64856_0"),
    (b"[INFO] PJM 0000 pjsub Job 7 submitted.", "7"),
])
def test_job_id_is_read_from_pjsub_output(output, job_id):
    assert pjm.PjmExecutor._get_job_id_from_submission_command(output) == job_id


def test_pjsub_error_line_becomes_the_submission_error():
    line = "[ERR.] PJM 0020 pjsub Cannot open the file (rscgrp=fx-debug) : 2."
    with pytest.raises(utils.FailedSubmissionError, match=r"PJM 0020 pjsub Cannot open the file \(rscgrp=fx-debug\)"):
        pjm.PjmExecutor._get_job_id_from_submission_command(line)
    with pytest.raises(utils.FailedSubmissionError, match="Could not make sense"):
        pjm.PjmExecutor._get_job_id_from_submission_command("something else")


def test_pjstat_data_output_is_read_with_banner_sub_jobs_and_exit_codes():
    out = "\n".join([
        "Wisteria/BDEC-01 scheduled stop time: 2025/01/31(Fri) 09:00:00 (Remain: 3days 2:10:00)",
        "JOB_ID,JOB_NAME,ST,EC,PC,SN",
        ",100,train,EXT,0,0,0",
        ",101,train,EXT,1,0,0",  # the script failed
        ",102,train,EXT,0,2,0",  # PJM ended it (elapse limit)
        ",103,train,EXT,-,0,9",  # killed by a signal
        ",104,train,CCL,-,0,15",
        ",105,train,ERR,-,0,0",
        ",106,sample,EXT,0,0,0",
        ",106[0],sample,EXT,0,0,0",
        ",106[1],sample,EXT,3,0,0",
        ",107,x,RUN,-,-,-",
        ",108,x,RNO,-,-,-",
        ",109,x,HLD,-,-,-",
        ",110,x,XYZ,-,-,-",
    ])
    info = pjm.PjmInfoWatcher().read_info(out.encode())
    states = {job_id: row["State"] for job_id, row in info.items()}
    assert states == {"100": "COMPLETED", "101": "FAILED", "102": "FAILED", "103": "FAILED", "104": "CANCELLED",
                      "105": "FAILED", "106": "COMPLETED", "106_0": "COMPLETED", "106_1": "FAILED",
                      "107": "RUNNING", "108": "COMPLETING", "109": "PENDING", "110": "UNKNOWN"}
    assert info["106_1"] == {"State": "FAILED", "PJMState": "EXT", "ExitCode": "3", "PJMCode": "0", "Signal": "0",
                             "JobName": "sample"}


def test_pjstat_data_output_without_header_or_with_quotes_and_other_column_order():
    watcher = pjm.PjmInfoWatcher()
    # no header: the --choose order (jid,jnam,st,ec,pc,sn)
    assert watcher.read_info(",5,a,EXT,0,0,0\n")["5"]["State"] == "COMPLETED"
    # a header in another order, quoted cells, no leading empty cell
    out = 'st,jid,ec,pc\n"QUE","6","-","-"\n"EXT","7[2]","0","0"\n'
    assert {k: v["State"] for k, v in watcher.read_info(out).items()} == {"6": "PENDING", "7_2": "COMPLETED"}
    assert watcher.read_info("") == {}


def test_ids_translate_between_submitit_and_pjm():
    assert pjm.pjm_job_id("123_4") == "123[4]" and pjm.pjm_job_id("123") == "123"
    assert pjm.submitit_job_id("123[4]") == "123_4" and pjm.submitit_job_id("123") == "123"


def test_watcher_asks_one_pjstat_for_all_unfinished_jobs_by_base_id():
    watcher = pjm.PjmInfoWatcher()
    assert watcher._make_command() is None
    for job_id in ("12", "13_0", "13_1", "14"):
        watcher.register_job(job_id)
    watcher._finished.add("14")
    assert watcher._make_command() == ["pjstat", "-H", "-E", "--data", "--choose", "jid,jnam,st,ec,pc,sn",
                                       "--filter", "jid=12+13"]


# --- plugin discovery and the job's side -------------------------------------------------------------

def test_autoexecutor_finds_the_pjm_plugin(standins, tmp_path):
    assert isinstance(submitit.AutoExecutor(tmp_path, cluster="pjm")._executor, pjm.PjmExecutor)
    env = plugins.get_job_environments()["pjm"]
    assert isinstance(env, pjm.PjmJobEnvironment) and not env.activated()
    assert type(env)._requeue is not job_environment.JobEnvironment._requeue  # submitit's plugin rule
    assert pjm.PjmExecutor.affinity() == 2


def test_without_pjsub_the_executor_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert pjm.PjmExecutor.affinity() == -1
    with pytest.raises(RuntimeError, match="pjsub"):
        pjm.PjmExecutor(tmp_path)


@pytest.mark.parametrize("pjm_jobid, bulknum, job_id", [("240", None, "240"), ("239", "1", "239_1"),
                                                        ("239[1]", "1", "239_1")])
def test_job_environment_reads_pjm_variables(monkeypatch, pjm_jobid, bulknum, job_id):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "pjm")
    monkeypatch.setenv("PJM_JOBID", pjm_jobid)
    monkeypatch.delenv("PJM_BULKNUM", raising=False)
    if bulknum is not None:
        monkeypatch.setenv("PJM_BULKNUM", bulknum)
    env = job_environment.JobEnvironment()
    assert isinstance(env, pjm.PjmJobEnvironment)
    assert (env.job_id, env.global_rank, env.num_tasks) == (job_id, 0, 1)


def test_requeue_leaves_a_marker_and_exits_with_the_documented_code(monkeypatch, tmp_path):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "pjm")
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path))
    monkeypatch.setenv("PJM_JOBID", "55")
    monkeypatch.setenv("PJM_BULKNUM", "2")
    with pytest.raises(SystemExit) as exit_:
        job_environment.JobEnvironment()._requeue(countdown=2)
    assert exit_.value.code == pjm.REQUEUE_EXIT_CODE
    assert json.loads((tmp_path / "55_2_requeue.json").read_text())["timeouts_left"] == 2


# --- the stand-ins themselves ---------------------------------------------------------------------

def test_standin_pjsub_rejects_bad_input_in_pjm_format(standins, tmp_path):
    def pjsub(*args, script="#!/bin/bash\ntrue\n"):
        (tmp_path / "job.sh").write_text(script)
        return subprocess.run(["pjsub", *args], capture_output=True, text=True, cwd=tmp_path)

    missing = pjsub("nope.sh")
    assert missing.returncode != 0 and "[ERR.] PJM 0020 pjsub Cannot open the file (nope.sh)" in missing.stderr
    unknown = pjsub("--frobnicate", "job.sh")
    assert unknown.returncode != 0 and unknown.stderr.startswith("[ERR.] PJM") and "--frobnicate" in unknown.stderr
    directive = pjsub("job.sh", script="#!/bin/bash\n#PJM -L warp=9\ntrue\n")
    assert directive.returncode != 0 and "warp=9" in directive.stderr
    assert [call[0] for call in standins()] == ["pjsub"] * 3


def test_a_refused_submission_raises_failed_submission_error(standins, tmp_path):
    executor = submitit.AutoExecutor(tmp_path, cluster="pjm")
    executor.update_parameters(pjm_directives=["--no-such-option"])
    with pytest.raises(utils.FailedSubmissionError, match=r"\[ERR\.\] PJM .*--no-such-option"):
        executor.submit(operator.add, 1, 2)


# --- end to end on the local Slurm ----------------------------------------------------------------

def executor_for(folder: Path):
    executor = submitit.AutoExecutor(folder, cluster="pjm")
    executor.update_parameters(name="pjm-e2e", timeout_min=3, cpus_per_task=1, mem_gb=1, pjm_rscgrp="debug")
    return executor


def wait_for_state(job, states, timeout_s=60):
    deadline = time.time() + timeout_s
    while (state := job.get_info(mode="force").get("State")) not in states and time.time() < deadline:
        time.sleep(1)
    return state


@slurm_test
def test_e2e_a_function_runs_through_pjsub_and_returns_its_value(standins, tmp_path):
    job = executor_for(tmp_path).submit(operator.add, 2, 3)
    assert job.result() == 5
    assert (tmp_path / f"{job.job_id}_submission.sh").read_text().startswith("#!/bin/bash\n\n# Parameters\n#PJM")
    assert wait_for_state(job, {"COMPLETED"}) == "COMPLETED"
    assert [call[0] for call in standins()][:1] == ["pjsub"]


@slurm_test
def test_e2e_a_bulk_job_of_three_and_one_pjstat_call_for_all(standins, tmp_path):
    jobs = executor_for(tmp_path).map_array(os.getenv, ["PJM_BULKNUM"] * 3)
    base = jobs[0].job_id.split("_")[0]
    assert [job.job_id for job in jobs] == [f"{base}_{i}" for i in range(3)]
    assert [job.result() for job in jobs] == ["0", "1", "2"]  # each sub-job saw its own PJM_BULKNUM
    pjsub_calls = [call for call in standins() if call[0] == "pjsub"]
    assert len(pjsub_calls) == 1 and pjsub_calls[0][1:4] == ["--bulk", "--sparam", "0-2"]

    single = executor_for(tmp_path).submit(operator.mul, 6, 7)
    assert single.result() == 42
    watcher = pjm.PjmInfoWatcher()  # a fresh one, with nothing cached
    for job in [*jobs, single]:
        watcher.register_job(job.job_id)
    before = len(standins())
    watcher.update()
    calls = standins()[before:]
    assert len(calls) == 1 and calls[0][0] == "pjstat"  # one call for the bulk job and the single one
    assert calls[0][-1] == f"jid={'+'.join(sorted([base, single.job_id]))}"
    # the answer covers all four (a sub-job's row can lag behind its result file for a moment)
    deadline = time.time() + 30
    while {watcher.get_state(j.job_id, mode="cache") for j in [*jobs, single]} != {"COMPLETED"}:
        assert time.time() < deadline, watcher._info_dict
        time.sleep(1)
        watcher.update()


@slurm_test
def test_e2e_a_failing_function_shows_as_failed_with_its_exception(standins, tmp_path, monkeypatch):
    monkeypatch.setenv("PJM_STANDIN_BANNER", "Wisteria/BDEC-01 scheduled stop time: 2099/01/01(Thu) 09:00:00")
    job = executor_for(tmp_path).submit(math.sqrt, -1)
    error = job.exception()
    assert isinstance(error, utils.FailedJobError) and "math domain error" in str(error)
    assert wait_for_state(job, {"COMPLETED", "FAILED"}) == "FAILED"
    assert job.get_info(mode="cache")["PJMState"] == "EXT" and job.get_info(mode="cache")["ExitCode"] == "1"


@slurm_test
def test_e2e_cancel_goes_through_pjdel_with_pjm_sub_job_ids(standins, tmp_path):
    jobs = executor_for(tmp_path).map_array(time.sleep, [120, 120])
    base = jobs[0].job_id.split("_")[0]
    for job in jobs:
        job.cancel()
    assert [call for call in standins() if call[0] == "pjdel"] == [["pjdel", f"{base}[0]"], ["pjdel", f"{base}[1]"]]
    assert [wait_for_state(job, {"CANCELLED", "COMPLETED", "FAILED"}) for job in jobs] == ["CANCELLED"] * 2


@slurm_test
def test_e2e_the_elapse_warning_checkpoints_and_asks_for_a_resubmission(standins, tmp_path):
    sequence = submitit.helpers.FunctionSequence()  # a Checkpointable of the library: no import of this file
    sequence.add(operator.add, 1, 2)
    sequence.add(time.sleep, 120)
    job = executor_for(tmp_path).submit(sequence)
    deadline = time.time() + 60
    while "Loading pickle" not in (job.stdout() or ""):  # the signal handlers are set right after
        assert time.time() < deadline, "the job did not start"
        time.sleep(0.5)
    time.sleep(1)
    # what PJM does at the elapse limit (ASSUMED): SIGXCPU to every process of the job
    subprocess.run(["scancel", "--full", "--signal=XCPU", job.job_id], check=True)
    assert wait_for_state(job, {"COMPLETED", "FAILED", "CANCELLED"}) == "FAILED"
    assert job.get_info(mode="cache")["ExitCode"] == str(pjm.REQUEUE_EXIT_CODE)
    assert pjm.requeue_requested(job)
    # the checkpoint replaced the submitted pickle: the first result kept, the sleep still to do
    assert [delayed.done() for delayed in job.submission().function] == [True, False]
