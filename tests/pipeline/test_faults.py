"""Faults that must neither lose work nor mislead: one process a task and one trainer a run
whatever the state files say, a cancel that stops every process, outputs checked before they
count, full and read-only disks said in one line, runs found where submit put them."""

import json
import os
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


# --- runs found where submit put them, paths from the current directory ---

def cli(*args, cwd: Path, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    env.pop("PIPELINE_ROOT", None)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@integration
def test_every_command_finds_a_run_where_its_site_put_it(tmp_path):
    elsewhere = tmp_path / "cluster-work" / "runs"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"base: {REPO / 'jobs/demo_target.yaml'}\nname: demo-site\n"
                    f"site: {{executor: local, results_root: {elsewhere}}}\n")
    home = tmp_path / "home"
    home.mkdir()
    cli("submit", spec, *SMALL, "--wait", cwd=home)
    assert (elsewhere / "demo-site" / "spec.yaml").is_file()
    other = tmp_path / "somewhere-else"
    other.mkdir()
    assert "demo-site: done" in cli("status", "demo-site", cwd=other).stdout
    assert "demo-site" in cli("status", cwd=other).stdout
    assert "Copy source" in cli("results", "demo-site", cwd=other).stdout
    assert "demo-site: done" in cli("watch", "demo-site", "--interval", "0", cwd=other).stdout
    assert "no failed task" in cli("retry", "demo-site", cwd=other).stdout
    assert "cancelled demo-site" in cli("cancel", "demo-site", cwd=other).stdout


@integration
def test_paths_typed_by_the_user_are_taken_from_the_current_directory_and_root_goes_anywhere(tmp_path):
    cli("submit", REPO / "jobs/demo_target.yaml", *SMALL, "--root", "runs2", cwd=tmp_path)  # --root after the command
    assert (tmp_path / "runs2" / "demo-target" / "spec.yaml").is_file()
    assert "demo-target" in cli("status", "demo-target", "--root", "runs2", "--json", cwd=tmp_path).stdout
    assert "cancelled demo-target" in cli("--root", "runs2", "cancel", "demo-target", cwd=tmp_path).stdout
    help_text = cli("status", "--help", cwd=tmp_path).stdout
    assert "--root" in help_text


@integration
def test_two_values_after_one_set_say_to_repeat_it(tmp_path):
    proc = cli("submit", REPO / "jobs/demo_target.yaml", "--set", "train.steps=10", "train.save_every=5",
               cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "repeat it for each" in proc.stderr
    assert "--set train.save_every=5" in proc.stderr


# --- refused at submit ---

@integration
def test_a_spec_path_that_is_a_folder_is_named_as_one(tmp_path):
    proc = cli("submit", REPO / "jobs", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "jobs: is a folder, not a job spec" in proc.stderr


@pytest.mark.parametrize("override, key, words", [
    ("data.seq_len=6", "data.seq_len", "must be at least 7"),
    ("resources.train.nodes=2", "resources.train.nodes", "training across nodes is not supported"),
    ("resources.sample.nodes=2", "resources.sample.nodes", "would run it again"),
])
def test_specs_that_cannot_run_are_refused_naming_the_key(override, key, words):
    from pipeline.spec import SpecError, load_spec

    with pytest.raises(SpecError, match=f"{key}: .*{words}"):
        load_spec(REPO / "jobs/demo_target.yaml", [override])


@integration
def test_the_local_executor_refuses_more_gpus_than_the_machine_has(tmp_path):
    env_before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # whatever this machine has: none visible
    try:
        proc = cli("submit", REPO / "jobs/qqp_target.yaml", "--executor", "local", "--root", "runs", cwd=tmp_path,
                   check=False)
    finally:
        if env_before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = env_before
    assert proc.returncode == 2
    assert "resources.train.gpus: 4 GPU(s) asked, but this machine has 0" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing written, no preprocessing started


@integration
def test_score_with_a_model_folder_that_is_not_there_is_one_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"hyp": "a b", "ref": "a c"}\n')
    proc = cli("score", path, "--bertscore-model", "/no/such-model", cwd=tmp_path, check=False)
    error = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in error and "/no/such-model" in error and "Traceback" not in error


@integration
def test_submitting_a_hub_dataset_spec_imports_no_torch(tmp_path):
    script = ("import sys\nfrom pipeline import cli\n"
              "rc = cli.main(['submit', 'jobs/demo_target.yaml', '--set', 'data.synthetic_pairs=null', '--set', "
              "'data.hub_dataset=AlekseyKorshuk/quora-question-pairs', '--root', sys.argv[1]])\n"
              "print(rc, 'torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "runs")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr[-2000:]  # offline: refused, light
    assert "data.hub_dataset" in proc.stderr


# --- what status and the followers say ---

def test_a_sampling_task_whose_checkpoint_is_ready_waits_for_cores_not_for_training(tmp_path):
    from diffusion import atomic
    from pipeline.advance import advance
    from pipeline.jobs import Registry
    from pipeline.status import run_status

    layout = prepared_run(tmp_path)
    registry = Registry(layout)
    registry.record("train", "local", str(os.getpid()), [])  # training runs (this process stands for it)
    registry.save()
    atomic.write_json(layout.driver, {"pid": os.getpid(), "pgid": os.getpgid(0), "started": time.time()})
    folder = layout.checkpoint(20)
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"x")
    atomic.write_json(folder / "meta.json", {"step": 20, "world_size": 1, "files": {"model.pt": 1}})
    st = run_status(layout, advance(layout, submit=False))
    sample = {t["task"]: t for t in st["stages"][2]["tasks"]}
    assert sample["sample-0000020"]["state"] == "waiting-for-resources", sample
    assert "cores" in sample["sample-0000020"]["reason"]
    assert sample["sample-0000040"]["state"] == "waiting-for-input"  # its checkpoint is not there yet


@integration
def test_a_piped_wait_prints_progress_lines_as_the_run_goes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--root", str(tmp_path / "runs"), "submit",
                             "jobs/demo_target.yaml", *SMALL, *SLOW, "--wait"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert proc.poll() is None  # printed while the run goes on, not at its end
        assert "demo-target: preprocess " in first and "| train " in first, first
        lines = [first]
        while "train 0/1 running" not in lines[-1] and "loss" not in lines[-1]:
            lines.append(proc.stdout.readline())
            assert lines[-1], "the output ended"
    finally:
        pipeline("cancel", "demo-target", root=tmp_path / "runs")
        proc.communicate(timeout=120)


def test_narrow_terminals_cut_no_name_that_tells_rows_apart(monkeypatch):
    import io

    from rich.console import Console

    from pipeline import cli
    from pipeline.results import render_console, table_rows

    scores = {"bleu": 0.1, "rouge_l": 0.2, "bertscore": 0.8, "dist1": 0.9, "len": 10.0, "sacrebleu": 5.0,
              "self_bleu_src": 0.3, "empty": 0.0}
    metric = {"run": "qqp-fast-full-quiet", "label": "Full-Noised", "step": 60000, "split": "valid", "n": 2,
              "rows": {"single": scores, "mbr-10": scores}, "copy_source": scores}
    text = render_console(table_rows([metric, {**metric, "run": "qqp-fast-target", "label": "DiffuSeq"}]), width=80)
    assert max(map(len, text.splitlines())) <= 80
    for name in ("Full-Noised (60000 interval) MBR-10", "qqp-fast-full-quiet", "DiffuSeq (60000 interval)"):
        assert name in text
    for header in ("BLEU", "ROUGE-L", "BERTScore", "Dist-1", "copy BLEU", "sacreBLEU", "empty"):
        assert header in text  # the scores go on in a table below, not cut

    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=80))
    task = {"stage": "sample", "task": "sample-0000060", "step": 60, "state": "waiting-for-resources", "job": "123456",
            "job_state": None, "reason": "inputs ready; waits for free cores on this machine"}
    cli.print_status({"run": "qqp-fast-full-quiet", "state": "running", "executor": "local", "submitted": [],
                      "failures": [], "next": "",
                      "stages": [{"stage": "sample", "done": 0, "total": 2, "state": "running", "tasks": [
                          task, {**task, "task": "sample-0000120", "step": 120}]}]})
    shown = out.getvalue()
    assert "sample-0000060" in shown and "sample-0000120" in shown and "waiting-for-resources" in shown
