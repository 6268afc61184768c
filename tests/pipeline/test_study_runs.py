"""Studies run for real: every study file in the repo end to end on the CPU with tiny overrides
(so that none rots unseen), and the demo study on the real local Slurm (one training array, one
sacct a status)."""

import json
import subprocess
import time

import pytest

from pipeline.jobs import Registry
from pipeline.layout import RunLayout
from pipeline.study_spec import load_study
from tests.helpers import REPO, integration, slurm_test
from tests.pipeline.test_pipeline import pipeline
from tests.pipeline.test_slurm import counting_sacct  # noqa: F401  (a fixture)

STUDY_FILES = sorted([*REPO.glob("jobs/*study*.yaml"), *REPO.glob("jobs/studies/*.yaml")])

# any study's recipe, shrunk to seconds on 2 cores: a tiny model on the synthetic corpus, one
# checkpoint, 4 pairs decoded every way the study asks (T = 200 leaves room for its solvers' steps)
TINY = [f"--set={item}" for item in (
    "data.train=null", "data.valid=null", "data.synthetic_pairs=300", "data.vocab_size=300", "data.seq_len=32",
    "model.embed_dim=16", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_size=64",
    "model.max_positions=32", "diffusion.steps=200", "train.steps=2", "train.save_every=2", "train.batch_size=8",
    "train.micro_batch_size=8", "train.warmup_steps=0", "train.compile=false", "train.log_every=1",
    "train.zero_stage=0", "sample.max_examples=4", "sample.batch_size=4", "sample.compile=false",
    "evaluate.bertscore_model=null",
    *[f"resources.{stage}.gpus=0" for stage in ("train", "sample", "evaluate")],
    *[f"resources.{stage}.cpus=1" for stage in ("preprocess", "train", "sample", "evaluate", "aggregate")])]


@integration
@pytest.mark.slow
@pytest.mark.parametrize("path", STUDY_FILES, ids=[p.stem for p in STUDY_FILES])
def test_every_study_file_runs_end_to_end_with_tiny_overrides(tmp_path, path):
    study = load_study(path, [item.removeprefix("--set=") for item in TINY])
    pipeline("submit", path, *TINY, "--wait", root=tmp_path, timeout=900)
    pipeline("results", study.name, root=tmp_path)
    rows = json.loads((tmp_path / study.name / "results" / "table.json").read_text())
    scored = {(row["run"], row["decoded_with"]) for row in rows if row["decoding"] != "copy"}
    # a row for every variant, decoded as its spec says ("") and in each of the study's decodings
    assert scored == {(spec.name, name) for spec in study.runs.values() for name in ["", *(d.name for d in spec.decodings)]}
    # the checkpoints table beside it: loss terms and diagnostics of every run's checkpoint
    checkpoints = (tmp_path / study.name / "results" / "checkpoints.md").read_text()
    assert all(f"| {spec.name} | 2 |" in checkpoints for spec in study.runs.values())


def array_task_names(array: str, tasks: int) -> dict[str, str]:
    """{array task id: job name} as Slurm's accounting has them, once it lists `tasks` tasks (its
    job ids restart with the cluster, so a plain id may also name an older job; an array task's id
    is the array's). Until its tasks start, a pending array is one record, `<array>_[0-1%2]`."""
    names = {}
    for _ in range(60):  # slurmdbd learns of new jobs, and splits a pending array, a moment later
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,JobName", "-j", array],
                             capture_output=True, text=True, check=True).stdout
        names = dict(line.split("|", 1) for line in out.splitlines()
                     if line.startswith(f"{array}_") and line.split("|", 1)[0][len(array) + 1:].isdigit())
        if len(names) >= tasks:
            return names
        time.sleep(1)
    return names


@integration
@slurm_test
def test_the_demo_study_on_slurm_trains_as_one_array_and_status_asks_sacct_once(tmp_path, counting_sacct):  # noqa: F811
    small = ["--set", "train.steps=40", "--set", "train.save_every=20", "--set", "diffusion.steps=20",
             "--set", "data.synthetic_pairs=1000", "--executor", "slurm",
             *[x for stage in ("preprocess", "train", "sample", "evaluate") for x in ("--set", f"resources.{stage}.cpus=1")]]
    try:
        pipeline("submit", "jobs/demo_study.yaml", *small, root=tmp_path)
        train = [Registry(RunLayout(tmp_path, name)).job_id("train") for name in ("demo-target", "demo-full")]
        array = train[0].split("_")[0]
        assert train == [f"{array}_0", f"{array}_1"]  # both variants' training: one array
        assert array_task_names(array, 2) == {train[0]: "demo-train", train[1]: "demo-train"}
        calls = counting_sacct.read_text().count("\n") if counting_sacct.is_file() else 0
        st = json.loads(pipeline("status", "demo", "--json", root=tmp_path).stdout)
        assert counting_sacct.read_text().count("\n") == calls + 1  # one query for every job of both runs
        assert [run["run"] for run in st["runs"]] == ["demo-target", "demo-full"]
    finally:
        pipeline("cancel", "demo", root=tmp_path, check=False)
