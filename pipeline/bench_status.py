"""Benchmark: how long `pipeline status RUN` takes on a running run, as a user types it.

    python -m pipeline.bench_status [--spec jobs/demo_target.yaml] [--repeats 5] [--keep]

Submits the demo job (local executor; the spec's path is taken from the current directory) under a temporary results root, waits until its trainer
runs, then times `python -m pipeline.cli status demo-target` end to end (interpreter start and
imports included) `--repeats` times while it runs, and once the `--json` form; prints one JSON
object (each time, the median, and whether the status process imported torch or numpy), then
cancels the run. Target (issue 14): at most 1 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffusion.manifest import HEARTBEAT

from .runs import importable_environment

RUN = "demo-target"
IMPORTS = ("import runpy, sys; sys.argv = ['pipeline', 'status', '" + RUN + "'];"
           "\ntry: runpy.run_module('pipeline.cli', run_name='__main__')\nexcept SystemExit: pass\n"
           "print('HEAVY', [m for m in ('torch', 'numpy') if m in sys.modules], file=sys.stderr)")


def pipeline(root: Path, *args: str, code: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
    env = {**importable_environment(), "PIPELINE_ROOT": str(root)}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "pipeline.cli", *args]
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return time.perf_counter() - started, proc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=Path("jobs/demo_target.yaml"), help="the demo spec (makes run demo-target)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the temporary results root")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-status-"))
    _, proc = pipeline(root, "submit", str(args.spec.resolve()), "--set", "train.steps=100000", "--set",
                       "train.save_every=50000")
    if proc.returncode:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return 1
    try:
        deadline = time.monotonic() + 600
        while not (root / RUN / HEARTBEAT).is_file():  # the trainer logs: training runs
            if time.monotonic() > deadline:
                raise SystemExit("the demo's trainer did not start within 10 minutes")
            time.sleep(1)
        seconds, heavy = [], None
        for _ in range(args.repeats):
            took, proc = pipeline(root, code=IMPORTS)
            assert proc.returncode == 0, proc.stderr
            seconds.append(took)
            heavy = proc.stderr.rsplit("HEAVY", 1)[1].strip()
        json_s, proc = pipeline(root, "status", RUN, "--json")
        state = json.loads(proc.stdout)
        train = next(s for s in state["stages"] if s["stage"] == "train")
        print(json.dumps({"status_s": [round(s, 3) for s in seconds], "median_s": round(statistics.median(seconds), 3),
                          "json_s": round(json_s, 3), "train_state": train["state"],
                          "scheduler_queries": state["scheduler_queries"], "heavy_modules_imported": heavy,
                          "cpus": os.cpu_count()}))
    finally:
        pipeline(root, "cancel", RUN)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(root)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
