"""The command line as a user types it: runs found where submit put them, paths from the current
directory, specs and resources refused at submit, what status and the followers say."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, integration
from tests.pipeline.test_faults import SLOW, prepared_run
from tests.pipeline.test_pipeline import SMALL, pipeline


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
    cli.print_status({"run": "qqp-fast-full-quiet", "state": "running", "executor": "local", "site": "local",
                      "submitted": [],
                      "failures": [], "next": "",
                      "stages": [{"stage": "sample", "done": 0, "total": 2, "state": "running", "tasks": [
                          task, {**task, "task": "sample-0000120", "step": 120}]}]})
    shown = out.getvalue()
    assert "sample-0000060" in shown and "sample-0000120" in shown and "waiting-for-resources" in shown


def test_a_run_of_one_name_in_two_checkouts_is_the_one_where_the_user_stands(tmp_path, monkeypatch):
    from pipeline import run_index
    from pipeline.errors import UserError
    from pipeline.layout import RunLayout

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    layouts = [RunLayout(tmp_path / checkout / "runs", "demo-target") for checkout in ("one", "two")]
    for layout in layouts:
        layout.dir.mkdir(parents=True)
        layout.spec.write_text("name: demo-target\n")
        assert run_index.remember(layout.run_id, layout.dir) is None
    for layout in layouts:
        monkeypatch.chdir(layout.root.parent)  # `make demo` then `pipeline results` in each checkout
        assert run_index.find("demo-target", None).dir == layout.dir
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="is in 2 places.*one/runs/demo-target.*two/runs/demo-target.*--root"):
        run_index.find("demo-target", None)
