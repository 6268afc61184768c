"""Faults that must neither lose work nor mislead: one process a task and one trainer a run
whatever the state files say, a cancel that stops every process, outputs checked before they
count, full and read-only disks said in one line, runs found where submit put them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from diffusion import locks
from pipeline.layout import RunLayout
from tests.helpers import REPO, integration, tiny_config, write_config
from tests.pipeline.test_pipeline import SMALL, pipeline, status

SLOW = ["--set", "train.steps=2000", "--set", "train.save_every=20", "--set", "train.log_every=5"]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def processes_of(run_dir: Path) -> list[psutil.Process]:
    """Every process whose command line or working files name the run folder."""
    found = []
    for proc in psutil.process_iter(["cmdline", "pid"]):
        try:
            if any(str(run_dir) in part for part in proc.info["cmdline"] or []) and proc.pid != os.getpid():
                found.append(proc)
        except psutil.Error:
            continue
    return [p for p in found if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def trainers_of(run_dir: Path) -> list[psutil.Process]:
    return [p for p in processes_of(run_dir) if "diffusion.train" in " ".join(p.cmdline())]


# --- one trainer, one process a task ---

@integration
def test_a_second_trainer_of_one_folder_exits_at_once_naming_the_first(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"src": f"how do i learn topic {i} ?", "trg": f"ways to learn {i} ?"}) + "\n"
                             for i in range(64)))
    config = write_config(tmp_path / "c.yaml", tiny_config(train, steps=3000, save_every=1000, log_every=5))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "diffusion.train", str(config), str(out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (out / "heartbeat.json").is_file(), 240, "the first trainer's heartbeat")
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "diffusion.train", str(config), str(out)], env=env,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 75, second.stderr[-2000:]
        assert f"is being trained by pid {first.pid}" in second.stderr and "train.lock" in second.stderr
        assert time.monotonic() - started < 60  # at once: before building a model or touching a checkpoint
        assert first.poll() is None  # the first goes on
    finally:
        first.terminate()
        first.wait(timeout=120)
    assert "resumed from" not in first.stdout


def prepared_run(tmp_path: Path, *overrides: str) -> RunLayout:
    """A demo run folder whose preprocess is done, as a job would find it."""
    from pipeline.spec import freeze, load_spec
    from pipeline.stages import run_task, write_run_inputs

    spec = load_spec(REPO / "jobs/demo_target.yaml", [item for item in SMALL if item != "--set"] + list(overrides))
    layout = RunLayout(tmp_path / "runs", spec.name)
    write_run_inputs(layout, spec, freeze(spec))
    assert run_task(str(layout.dir), "preprocess") == "done"
    return layout


def task_in_subprocess(layout: RunLayout, stage: str, step=None) -> subprocess.Popen:
    code = f"from pipeline.stages import run_task; print(run_task({str(layout.dir)!r}, {stage!r}, {step!r}))"
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


@integration
def test_a_second_process_of_a_task_leaves_it_to_the_first(tmp_path):
    from pipeline.stages import run_task

    layout = prepared_run(tmp_path, "train.steps=300", "train.save_every=100", "train.log_every=5")
    first = task_in_subprocess(layout, "train")
    wait_until(lambda: layout.heartbeat.is_file(), 240, "training to start")
    second = task_in_subprocess(layout, "train")
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0 and f"train is run by pid {first.pid}" in out + err
    assert layout.failure("train") is None and first.poll() is None
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0 and out.strip().endswith("done"), err[-2000:]
    assert layout.is_done("train") and layout.log("train").read_text().count("] train started") == 1
    # sampling a checkpoint twice: the same lock, held here while a job tries
    with locks.exclusive(layout.task_lock("sample-0000100"), what="a sampler"):
        assert "is run by pid" in run_task(str(layout.dir), "sample", 100)
    assert not layout.samples(100).exists() and layout.failure("sample", 100) is None


@integration
def test_a_lost_or_damaged_registry_never_starts_a_second_trainer(tmp_path):
    root = tmp_path / "runs"
    pipeline("submit", "jobs/demo_target.yaml", *SMALL, *SLOW, root=root)
    run = RunLayout(root, "demo-target")
    wait_until(lambda: trainers_of(run.dir), 240, "the trainer")
    trainer = trainers_of(run.dir)[0].pid

    run.registry.unlink()  # deleted: read as empty, but the task's lock says who runs it
    for _ in range(3):  # several passes of the run's loop, each of which could start a trainer
        st = status(root, "demo-target")
        train = st["stages"][1]["tasks"][0]
        assert train["state"] == "running" and "run by pid" in train["reason"], train
        time.sleep(2.5)
    assert [p.pid for p in trainers_of(run.dir)] == [trainer]

    text = run.registry.read_text() if run.registry.is_file() else '{"executor": "local", "tasks": {}}'
    run.registry.write_text(text[: len(text) // 2])  # cut to half its size, as a full disk or an editor may
    proc = pipeline("status", "demo-target", root=root, check=False)
    error = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in error, proc.stdout + proc.stderr
    assert "jobs.json is damaged" in error and "pipeline repair demo-target" in error
    time.sleep(3)
    assert [p.pid for p in trainers_of(run.dir)] == [trainer]

    repaired = pipeline("repair", "demo-target", root=root)
    assert "rebuilt" in repaired.stdout
    st = status(root, "demo-target")
    assert st["stages"][1]["tasks"][0]["state"] == "running"
    pipeline("cancel", "demo-target", root=root)
    assert not trainers_of(run.dir)
    assert len(list(run.state.glob("train.started-*"))) == 1  # one trainer ever started


# --- cancel ---

@integration
def test_cancel_stops_every_process_of_the_run_and_nothing_is_marked_done_after(tmp_path):
    root = tmp_path / "runs"
    pipeline("submit", "jobs/demo_target.yaml", *SMALL, *SLOW, root=root)
    run = RunLayout(root, "demo-target")
    wait_until(lambda: run.heartbeat.is_file(), 240, "training to start")
    done_before = sorted(p.name for p in run.state.glob("*.done"))
    proc = pipeline("cancel", "demo-target", root=root)
    stopped = int(proc.stdout.split(" process(es) stopped")[0].rsplit(" ", 1)[-1])
    assert stopped >= 4, proc.stdout  # the loop, the job's shell, controller and task, the trainer
    assert not processes_of(run.dir), [p.cmdline() for p in processes_of(run.dir)]
    time.sleep(3)
    assert sorted(p.name for p in run.state.glob("*.done")) == done_before
    st = status(root, "demo-target")
    assert st["state"] == "cancelled"
    assert "resumes" in (run.failure("train") or {}).get("error", "")  # the trainer checkpointed on SIGTERM
    assert list(run.checkpoints.glob("step_*"))


def test_a_task_that_finishes_after_cancel_is_not_marked_done(tmp_path):
    from diffusion import atomic
    from pipeline.stages import run_task

    layout = prepared_run(tmp_path)
    atomic.write_json(layout.cancel_flag, {"time": time.time()})
    layout.undo("preprocess")
    assert run_task(str(layout.dir), "preprocess") == "cancelled before it was marked done"
    assert not layout.is_done("preprocess")


# --- training that cannot go on ---

@integration
def test_a_crashed_trainer_fails_its_task_at_once_and_is_not_started_again(tmp_path):
    root = tmp_path / "runs"
    pipeline("submit", "jobs/demo_target.yaml", *SMALL, *SLOW, root=root)
    run = RunLayout(root, "demo-target")
    wait_until(lambda: list(run.checkpoints.glob("step_*")), 240, "a checkpoint")
    (trainer,) = wait_until(lambda: trainers_of(run.dir), 60, "the trainer")
    trainer.send_signal(signal.SIGSEGV)  # how a device-side assert ends: it would meet the same one again
    wait_until(lambda: not processes_of(run.dir), 120, "the run's processes to end")
    assert status(root, "demo-target")["state"] == "failed"
    failure = run.failure("train")
    assert "training crashed (SIGSEGV" in failure["error"] and not failure["retryable"]
    assert run.log("train").read_text().count("] train started") == 1


@integration
def test_a_diverging_run_fails_saying_so_and_saves_no_checkpoint_of_the_nan_weights(tmp_path):
    root = tmp_path / "runs"
    # a learning rate of 1e30 makes the loss nan from the second step
    pipeline("submit", "jobs/demo_target.yaml", *SMALL, "--set", "train.lr=1e30", "--wait", root=root, check=False)
    run = RunLayout(root, "demo-target")
    failure = run.failure("train")
    assert "training diverged: the loss of steps" in failure["error"] and "no checkpoint was saved" in failure["error"]
    assert not failure["retryable"] and not list(run.checkpoints.glob("step_*"))
    assert "Traceback" not in pipeline("status", "demo-target", root=root, check=False).stdout


# --- outputs checked before they count ---

@integration
def test_a_done_task_whose_output_was_lost_is_named_and_retry_redoes_it(tmp_path):
    root = tmp_path / "runs"
    pipeline("submit", "jobs/demo_target.yaml", *SMALL, "--wait", root=root)
    run = RunLayout(root, "demo-target")
    table = (run.results / "table.md").read_text()
    (run.samples(40) / "samples.jsonl").unlink()
    metrics = run.metrics(20)
    metrics.write_text(metrics.read_text()[:100])

    st = status(root, "demo-target")
    failed = {f["task"]: f["error"] for f in st["failures"]}
    assert st["state"] == "failed" and set(failed) == {"sample-0000040", "evaluate-0000020"}
    assert "samples.jsonl is missing" in failed["sample-0000040"] and "pipeline retry demo-target" in failed["sample-0000040"]
    assert "step_0000020.json is damaged" in failed["evaluate-0000020"]
    proc = pipeline("results", "demo-target", root=root, check=False)
    assert proc.returncode == 2 and "step_0000020.json" in proc.stderr and "pipeline retry demo-target" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = pipeline("retry", "demo-target", "--wait", root=root)
    assert "sample-0000040" in proc.stdout and "evaluate-0000040" in proc.stdout and "aggregate" in proc.stdout
    assert "sample-0000020" not in proc.stdout  # what does not read a lost output is not done again
    assert status(root, "demo-target")["state"] == "done"
    assert (run.results / "table.md").read_text() == table  # the same seeds decode the same samples


# --- full and read-only disks ---

@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB filesystem of its own (root may mount one; elsewhere the test is skipped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({proc.stderr.strip() or 'not root'})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@integration
def test_a_full_disk_is_named_and_retry_goes_on_once_there_is_room_and_read_only_is_said_in_one_line(small_disk):
    root = small_disk
    proc = pipeline("submit", "jobs/demo_target.yaml", *SMALL, "--wait", root=root, check=False, timeout=900)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    st = status(root, "demo-target")
    assert st["state"] == "failed"
    errors = " ".join(f["error"] for f in st["failures"])
    assert "No space left on device" in errors or "no space left" in errors, st["failures"]
    assert "Traceback" not in proc.stderr

    subprocess.run(["mount", "-o", "remount,size=200m", str(root)], check=True)  # room is made
    pipeline("retry", "demo-target", "--wait", root=root, timeout=900)
    st = status(root, "demo-target")
    assert st["state"] == "done" and all(t["starts"] <= 2 for s in st["stages"] for t in s["tasks"])

    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    proc = pipeline("status", "demo-target", root=root)  # reads, no lock needed
    assert "demo-target: done" in proc.stdout
    for args, needs in ((("results", "demo-target"), "the table above was not saved"),
                        (("retry", "demo-target"), "read-only file system"),
                        (("submit", "jobs/demo_full.yaml", *SMALL), "read-only file system")):
        proc = pipeline(*args, root=root, check=False)
        error = proc.stderr.strip()
        assert proc.returncode in (1, 2) and "\n" not in error and needs in error and "Traceback" not in error, error
    assert "Model" in pipeline("results", "demo-target", root=root, check=False).stdout  # the table is printed
