#!/usr/bin/env python3
"""A fake PJM for the fast tests of the pipeline's scheduler logic, for tests only: `pjsub`,
`pjstat` and `pjdel` (links to this file) answer in PJM's formats from a JSON file the test reads
and writes ($FAKE_PJM), and run nothing. The PJM stand-ins (pjm_standins/) run jobs for real on
the local Slurm.

    {"next": 500, "jobs": {"500": {"name", "bulk": N | null, "state": {"": ST} or {"0": ST, ...}}},
     "calls": ["pjsub", "pjstat", ...]}

pjsub reads `#PJM -N NAME` from the script and `--bulk --sparam 0-N` from its arguments and prints
"[INFO] PJM 0000 pjsub Job ID submitted."; pjstat -H -E --data --choose jid,jnam,st,ec,pc,sn
--filter jid=A+B prints a header row and a row a job (a row a sub-job `ID[I]` under its bulk
job), of ended jobs only (EXT, CCL, ERR), as -H does; ST is what the test set (QUE until then),
EC 0 for EXT unless the test wrote "EXT:N". pjdel ID|ID[I] sets CCL on what has not ended.
"""
import fcntl
import json
import os
import re
import sys
from pathlib import Path

ENDED = ("EXT", "CCL", "ERR")


def pjsub(data, args):
    script = Path(args[-1]).read_text()
    name = (re.search(r"^#PJM -N (\S+)", script, flags=re.M) or [None, None])[1]
    bulk = None
    if "--bulk" in args:
        first, last = map(int, args[args.index("--sparam") + 1].split("-"))
        bulk = last - first + 1
    job_id = str(data["next"])
    data["next"] += 1
    data["jobs"][job_id] = {"name": name, "bulk": bulk,
                            "state": {str(i): "QUE" for i in range(bulk)} if bulk else {"": "QUE"}}
    print(f"[INFO] PJM 0000 pjsub Job {job_id} submitted.")


def row(jid, name, state):
    st, _, ec = state.partition(":")
    return f",{jid},{name},{st},{ec or ('0' if st == 'EXT' else '-')},0,0"


def pjstat(data, args):
    wanted = set()
    if "--filter" in args:
        wanted = set(args[args.index("--filter") + 1].split("=", 1)[1].split("+"))
    print(",JOB_ID,JOB_NAME,ST,EC,PC,SN")
    for job_id, job in data["jobs"].items():
        if wanted and job_id not in wanted:
            continue
        states = job["state"]
        if job["bulk"]:
            if all(s.split(":")[0] in ENDED for s in states.values()):
                print(row(job_id, job["name"], "EXT"))
            for index, state in states.items():
                if state.split(":")[0] in ENDED:
                    print(row(f"{job_id}[{index}]", job["name"], state))
        elif states[""].split(":")[0] in ENDED:
            print(row(job_id, job["name"], states[""]))


def pjdel(data, args):
    for target in args:
        main, _, index = target.rstrip("]").partition("[")
        job = data["jobs"].get(main)
        for i, state in (job or {}).get("state", {}).items():
            if (not index or i == index) and state.split(":")[0] not in ENDED:
                job["state"][i] = "CCL"


if __name__ == "__main__":
    command = Path(sys.argv[0]).name
    with open(os.environ["FAKE_PJM"], "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        data = json.loads(handle.read() or '{"next": 500, "jobs": {}}')
        data.setdefault("calls", []).append(command)
        {"pjsub": pjsub, "pjstat": pjstat, "pjdel": pjdel}[command](data, sys.argv[1:])
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(data, indent=1))
