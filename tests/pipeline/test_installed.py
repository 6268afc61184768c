"""The package as a cluster user installs it: a wheel into its own folder, used from anywhere,
with nothing read from the source tree."""

import os
import shutil
import subprocess
import sys

from tests.helpers import REPO, integration
from tests.pipeline.test_pipeline import SMALL


@integration
def test_the_wheel_installed_elsewhere_submits_the_demo_from_another_folder(tmp_path):
    # from a copy of the tracked files: a build writes build/ and egg-info beside its sources
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file() and not (REPO / name).is_symlink():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    # with this environment's setuptools where it has one; else pip fetches it for an isolated build
    offline = ["--no-build-isolation"] if _has("setuptools") and _has("wheel") else []
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *offline, "-w", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (site / "pipeline" / "site_profiles" / "local.yaml").is_file()  # the shipped profiles are package data

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "2"}
    env.pop("PIPELINE_ROOT", None)

    def pipeline(*args, timeout=600):
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    where = subprocess.run([sys.executable, "-c", "import pipeline, diffusion; print(pipeline.__file__, diffusion.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True).stdout.split()
    assert all(path.startswith(str(site)) for path in where), where  # the wheel's copy, not the checkout
    pipeline("submit", REPO / "jobs/demo_target.yaml", *SMALL, "--site", "local", "--wait")
    assert (elsewhere / "runs" / "demo-target" / "results" / "table.md").is_file()
    assert "demo-target: done" in pipeline("status", "demo-target").stdout


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
