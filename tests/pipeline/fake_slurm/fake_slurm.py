#!/usr/bin/env python3
"""A fake Slurm for the fast tests of the pipeline's scheduler logic, for tests only: `sbatch`,
`sacct` and `scancel` (links to this file) answer as Slurm's do, from a JSON file the test reads
and writes ($FAKE_SLURM), and run nothing. The real Slurm tests (test_slurm.py) run the jobs.

    {"next": 1000, "jobs": {"1000": {"name", "dependency", "array": N | null, "state": {"": S} or {"0": S, ...}}},
     "calls": ["sbatch", "sacct", ...]}

sbatch reads the #SBATCH lines submitit writes (--job-name, --array=0-N%P, --dependency) and
prints "Submitted batch job ID"; sacct -o JobID,State,NodeList --parsable2 -j ID ... prints one
line a job (a line a task for arrays, "ID_I"); scancel ID|ID_I sets CANCELLED on what is not
finished. A job is PENDING until the test sets its state; a pending job whose dependency ended
other than COMPLETED is cancelled (the pipeline's --kill-on-invalid-dep=yes).
"""
import fcntl
import json
import os
import re
import sys
from pathlib import Path

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}


def load(handle):
    handle.seek(0)
    return json.loads(handle.read() or '{"next": 1000, "jobs": {}}')


def save(handle, data):
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(data, indent=1))


def sbatch(data, args):
    script = Path(args[-1]).read_text()
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, flags=re.M))
    job_id = str(data["next"])
    data["next"] += 1
    array = None
    if "array" in flags:
        first, last = map(int, flags["array"].split("%")[0].split("-"))
        array = last - first + 1
    data["jobs"][job_id] = {"name": flags.get("job-name"), "dependency": flags.get("dependency"), "array": array,
                            "state": {str(i): "PENDING" for i in range(array)} if array else {"": "PENDING"}}
    print(f"Submitted batch job {job_id}")


def state_of(data, job_id):
    main, _, index = job_id.partition("_")
    job = data["jobs"].get(main)
    return None if job is None else job["state"].get(index, job["state"].get(""))


def kill_invalid_dependencies(data):
    """--kill-on-invalid-dep=yes: a pending job whose dependency ended other than COMPLETED is
    cancelled (afterok: any of its jobs; aftercorr: task i's task i)."""
    for job in data["jobs"].values():
        kind, _, targets = (job.get("dependency") or "").partition(":")
        for index, state in job["state"].items():
            if state != "PENDING":
                continue
            waits = targets.split(":") if kind == "afterok" else [f"{targets}_{index}"] if kind == "aftercorr" else []
            if any(state_of(data, dep) in FINISHED - {"COMPLETED"} for dep in waits):
                job["state"][index] = "CANCELLED"


def sacct(data, args):
    ids = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for job_id in ids:
        job = data["jobs"].get(job_id)
        if job is None:
            continue
        for index, state in job["state"].items():
            print(f"{job_id}_{index}|{state}|node" if index else f"{job_id}|{state}|node")


def scancel(data, args):
    for target in args:
        main, _, index = target.partition("_")
        job = data["jobs"].get(main)
        if job is None:
            continue
        for i, state in job["state"].items():
            if (not index or i == index) and state not in FINISHED:
                job["state"][i] = "CANCELLED"
        job.setdefault("scancel", []).append(target)


if __name__ == "__main__":
    command = Path(sys.argv[0]).name
    with open(os.environ["FAKE_SLURM"], "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        data = load(handle)
        data.setdefault("calls", []).append(command)  # what the pipeline asked, in order
        kill_invalid_dependencies(data)
        {"sbatch": sbatch, "sacct": sacct, "scancel": scancel}[command](data, sys.argv[1:])
        save(handle, data)
