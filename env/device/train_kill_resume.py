"""A run's train stage as a cluster job runs it, killed and resumed, then one checkpoint sampled.

    python env/device/train_kill_resume.py SPEC ROOT --kill-after STEP [--set KEY=VALUE ...]

Makes the run folder from SPEC (as `pipeline submit` does, without a scheduler), runs the
preprocess task, starts the train task (`pipeline.stages.run_task`, which starts the ranks with
torchrun as on Slurm and PJM), SIGKILLs its whole process group once checkpoint STEP is complete
(a node failure), runs the train task again (it resumes from the last complete checkpoint and stops
itself at train.time_limit_s with a checkpoint), then samples checkpoint STEP. Prints one JSON line
of timings and the steps each start went through. Used by env/device/four_gpu_check.sh (issue 6); the same
on CPU with small --set values checks the script itself.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from diffusion import checkpoint  # noqa: E402
from pipeline.layout import RunLayout  # noqa: E402
from pipeline.spec import freeze, load_spec  # noqa: E402
from pipeline.stages import Interrupted, run_task, write_run_inputs  # noqa: E402


def task_process(layout: RunLayout, stage: str, step: int | None = None) -> subprocess.Popen:
    code = f"from pipeline.stages import run_task; print(run_task({str(layout.dir)!r}, {stage!r}, {step!r}))"
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the task, torchrun and every rank at once, as a node failure would. Not killpg:
    torchrun starts each rank in a session of its own."""
    import psutil

    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:  # ended between the listing and the kill
            pass
    psutil.wait_procs(tree, timeout=30)
    proc.wait()


def logged_steps(layout: RunLayout) -> list[int]:
    log = layout.dir / "train_log.jsonl"
    if not log.is_file():
        return []
    return [json.loads(line)["step"] for line in log.read_text().splitlines() if '"step"' in line]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec")
    p.add_argument("root")
    p.add_argument("--kill-after", type=int, required=True, help="SIGKILL training once this checkpoint is complete")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()

    spec = load_spec(args.spec, args.set)
    layout = RunLayout(args.root, spec.name)
    layout.dir.mkdir(parents=True, exist_ok=True)
    write_run_inputs(layout, spec, freeze(spec))
    report: dict = {"run": str(layout.dir), "ranks": spec.resources.train.gpus or spec.resources.train.ranks}

    start = time.time()
    run_task(str(layout.dir), "preprocess")
    report["preprocess_s"] = round(time.time() - start, 1)

    start = time.time()
    trainer = task_process(layout, "train")
    killed_at = layout.checkpoint(args.kill_after) / "meta.json"
    while not killed_at.is_file():
        if trainer.poll() is not None:
            sys.exit(f"training ended (exit {trainer.returncode}) before checkpoint {args.kill_after}; see {layout.log('train')}")
        time.sleep(0.5)
    kill_tree(trainer)
    report["first_start"] = {"s": round(time.time() - start, 1), "killed_after_checkpoint": args.kill_after,
                             "last_logged_step": max(logged_steps(layout), default=None)}

    start = time.time()
    before = len(logged_steps(layout))
    try:
        run_task(str(layout.dir), "train")
        outcome = "finished"
    except Interrupted as err:  # its own time limit: what the pipeline resubmits
        outcome = f"stopped itself: {err}"
    resumed = logged_steps(layout)[before:]
    report["second_start"] = {"s": round(time.time() - start, 1), "outcome": outcome,
                              "first_logged_step": resumed[0] if resumed else None,
                              "last_logged_step": resumed[-1] if resumed else None}
    report["checkpoints"] = [step for step, _ in checkpoint.complete_steps(layout.checkpoints)]

    start = time.time()
    run_task(str(layout.dir), "sample", args.kill_after)
    samples = (layout.samples(args.kill_after) / "samples.jsonl").read_text().splitlines()
    report["sample"] = {"step": args.kill_after, "s": round(time.time() - start, 1), "sentences": len(samples),
                        "first": json.loads(samples[0])}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
