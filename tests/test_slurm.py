"""The demo study through a real Slurm (env/local-slurm.sh brings one up; .ci/run does in CI)."""

import json
import shutil
import subprocess

import pytest

from tests.test_pipeline import SMALL, pipeline, status


def slurm_is_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    return subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip() in ("idle", "mix")


pytestmark = pytest.mark.skipif(not slurm_is_up(), reason="no local Slurm: run `bash env/local-slurm.sh up` as root")


def test_demo_runs_end_to_end_through_slurm_with_arrays(tmp_path):
    root = tmp_path / "runs"
    pipeline("submit", "jobs/demo_full.yaml", *SMALL, "--executor", "slurm", "--wait", root=root)
    st = status(root, "demo-full")
    assert st["state"] == "done" and not st["failures"]
    assert (root / "demo-full" / "results" / "table.md").read_text().count("Full-Noised") == 4
    # the stages really went through Slurm: submitit's job folders hold Slurm job ids, and sacct knows them
    ids = {p.name.split("_")[0] for p in (root / "demo-full" / "logs" / "submitit").glob("*_submission.sh")}
    assert ids, "no Slurm submission scripts were written"
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,JobName,State", "-j", ",".join(ids)],
                         capture_output=True, text=True).stdout
    names = {line.split("|")[1] for line in out.splitlines() if line}
    assert {"demo-full-preprocess", "demo-full-train", "demo-full-sample", "demo-full-evaluate"} <= names
