"""A submitit plugin for Fujitsu PJM (Technical Computing Suite: Wisteria, Fugaku, Flow, Genkai).

`submitit.AutoExecutor(folder, cluster="pjm")` finds it through the `submitit` entry points in
pyproject.toml. It mirrors submitit's own Slurm executor (submitit/slurm/slurm.py); where PJM
differs:

* One process per job. PJM has no srun, so tasks_per_node must be 1; a multi-GPU or multi-node job
  starts its own ranks (torchrun, deepspeed, mpiexec) and submitit sees one task.
* Arrays are bulk jobs (`pjsub --bulk --sparam 0-N script`). PJM names sub-job 4 of job 123
  `123[4]`; submitit's paths split ids on "_", so inside submitit it is "123_4", as a Slurm array
  task would be, and it becomes `123[4]` again only on the way to pjstat or pjdel.
* The job script sends its own stdout/stderr to submitit's log paths, so nothing depends on how
  PJM expands `%j` in `-o` for bulk sub-jobs.
* Status comes from ONE pjstat call per poll for all jobs (see PJSTAT_COMMAND).
* PJM has no "requeue this running job" verb: a preempted or timed-out checkpointable job leaves a
  marker file and exits with REQUEUE_EXIT_CODE, and the caller resubmits it.

No PJM system was used to write this: what rests on PJM's documentation (and public scripts) only
is marked ASSUMED below. tests/pipeline/pjm_standins emulates these assumptions on a local Slurm for tests.
"""

from __future__ import annotations

import csv
import functools
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import typing as tp
import uuid
from pathlib import Path

from submitit.core import core, job_environment, logger, utils

REQUEUE_EXIT_CODE = 99  # as submitit-oar: "exited 99" = checkpointed, please resubmit

# ASSUMED: `-H` lists ended jobs (plain pjstat lists only active ones), `-E` adds the sub-jobs of
# bulk jobs as `123[4]`, `--data` prints comma-separated rows after a header row, and
# `--filter "jid=A+B"` selects jobs by id ("+" = or). One call therefore answers for every ended
# job with its ST, EC (script exit status) and PC (PJM end code), which is what a failure needs;
# a job absent from the answer has not ended (or its history is not written yet) and stays
# UNKNOWN, which submitit counts as unfinished. A job that ended well is seen first anyway through
# its result file (Job.done() looks for it before asking the watcher). What this loses is PENDING
# versus RUNNING for active jobs. This is the one place to change if a site differs: if its `-H`
# also lists active jobs, read_info already maps every state; a second call for active jobs would
# be an update() override in PjmInfoWatcher.
PJSTAT_FIELDS = ("jid", "jnam", "st", "ec", "pc", "sn")
PJSTAT_COMMAND = ("pjstat", "-H", "-E", "--data", "--choose", ",".join(PJSTAT_FIELDS))

# PJM state codes (man pjstat) as the Slurm names submitit understands. submitit counts a job as
# unfinished only in READY PENDING RUNNING UNKNOWN REQUEUED COMPLETING PREEMPTED, so every code an
# unfinished job can show (suspended, swapped, staging) maps onto one of those. Long names are the
# words of sites' default tables (Wisteria). EXT/END (exited) depend on the exit codes.
_STATES = {
    **dict.fromkeys(["ACC", "QUE", "RNA", "HLD", "RDY", "SIN", "QUEUED", "HOLD"], "PENDING"),
    **dict.fromkeys(["RNP", "RUN", "RNE", "SPP", "SPD", "RSM", "SWO", "SWD", "SWI", "SOT", "RUNNING"], "RUNNING"),
    **dict.fromkeys(["RNO", "RUNOUT"], "COMPLETING"),
    **dict.fromkeys(["CCL", "CANCEL"], "CANCELLED"),
    **dict.fromkeys(["ERR", "RJT", "ERROR"], "FAILED"),
}
# header names a --data header row may use for the fields chosen above (short or long form)
_HEADER = {"jid": "jid", "job_id": "jid", "jnam": "jnam", "job_name": "jnam", "st": "st", "state": "st",
           "status": "st", "ec": "ec", "exit_code": "ec", "pc": "pc", "pjm_code": "pc", "sn": "sn",
           "signal_no": "sn"}
_PJM_ID = re.compile(r"\d+(\[\d+\]|_\d+)?")


def pjm_job_id(job_id: str) -> str:
    """submitit's "123_4" → PJM's "123[4]"; a plain id stays as it is."""
    base, _, index = job_id.partition("_")
    return f"{base}[{index}]" if index else base


def submitit_job_id(pjm_id: str) -> str:
    """PJM's "123[4]" → submitit's "123_4"."""
    return re.sub(r"^(\d+)\[(\d+)\]$", r"\1_\2", pjm_id.strip())


def slurm_like_state(st: str, ec: str = "", pc: str = "") -> str:
    """A PJM state code (with the exit status EC and PJM end code PC) as a Slurm state name.
    EXT means "exited", well or not: COMPLETED only when both codes are 0 (EC "-" = killed by a
    signal)."""
    st = st.strip().upper()
    if st in ("EXT", "END"):
        return "COMPLETED" if ec.strip() == "0" and pc.strip() in ("0", "") else "FAILED"
    return _STATES.get(st, "UNKNOWN")


def _pjm_error(text: str) -> str:
    """PJM's error lines, e.g. "[ERR.] PJM 0020 pjsub Cannot open the file (x) : 2."."""
    return "\n".join(line.strip() for line in text.splitlines() if re.search(r"\[ERR\.?\]", line))


def requeue_marker(paths: utils.JobPaths) -> Path:
    return paths.folder / f"{paths.job_id}_requeue.json"


def requeue_requested(job: core.Job[tp.Any]) -> bool:
    """Whether the job checkpointed and exited asking to be submitted again (PJM cannot requeue)."""
    return requeue_marker(job.paths).exists()


class PjmInfoWatcher(core.InfoWatcher):
    def _make_command(self) -> tp.Optional[tp.List[str]]:
        # one call for all: bulk sub-jobs are asked for through their base id (-E lists them)
        to_check = sorted({job_id.split("_")[0] for job_id in self._registered - self._finished})
        if not to_check:
            return None
        return [*PJSTAT_COMMAND, "--filter", "jid=" + "+".join(to_check)]

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"

    def read_info(self, string: tp.Union[bytes, str]) -> tp.Dict[str, tp.Dict[str, str]]:
        """pjstat --data output → {submitit job id: {"State", "PJMState", "ExitCode", "PJMCode", ...}}.

        Tolerant on purpose: banner lines (Wisteria prints one), quoted cells, and the leading empty
        cell that data rows have in public scripts (`grep '^,'`, OOD's `line.split(",")[1]`). Rows
        are read by the header's names when there is a header, else in --choose order; a row
        whose job id cell is not a job id (banner, header, summary) is skipped."""
        if not isinstance(string, str):
            string = string.decode(errors="replace")
        columns = {name: i for i, name in enumerate(PJSTAT_FIELDS)}
        info: tp.Dict[str, tp.Dict[str, str]] = {}
        for row in csv.reader(string.splitlines()):
            cells = [cell.strip() for cell in row]
            if cells and not cells[0]:
                cells = cells[1:]
            names = [_HEADER.get(cell.lower().replace(" ", "_")) for cell in cells]
            if "jid" in names and "st" in names:  # a header row
                columns = {name: i for i, name in enumerate(names) if name}
                continue

            def cell(name: str) -> str:
                i = columns.get(name)
                return cells[i] if i is not None and i < len(cells) else ""

            if not _PJM_ID.fullmatch(cell("jid")):
                continue
            st, ec, pc = cell("st"), cell("ec"), cell("pc")
            info[submitit_job_id(cell("jid"))] = {
                "State": slurm_like_state(st, ec, pc), "PJMState": st, "ExitCode": ec, "PJMCode": pc,
                "Signal": cell("sn"), "JobName": cell("jnam")}
        return info


class PjmJob(core.Job[core.R]):
    _cancel_command = "pjdel"
    # Slurm's delay: pjstat is the shared login node's load too (a finished job is seen first
    # through its result file, so the watcher mostly catches jobs that died without one)
    watcher = PjmInfoWatcher(delay_s=600)

    def cancel(self, check: bool = True) -> None:
        # ASSUMED: pjdel takes a sub-job id `123[4]` as pjstat does; "123" cancels the whole bulk job
        (subprocess.check_call if check else subprocess.call)([self._cancel_command, pjm_job_id(self.job_id)])


class PjmJobEnvironment(job_environment.JobEnvironment):
    """Inside a PJM job: one process per job, so it is rank 0 of 1 task."""

    _env = {"job_id": "PJM_JOBID", "array_task_id": "PJM_BULKNUM", "nodes": "PJM_O_NODEINF",
            "num_nodes": "SUBMITIT_PJM_NODES"}

    @property
    def raw_job_id(self) -> str:
        # ASSUMED: PJM_JOBID is "123" in a normal job and "123" or "123[4]" in a bulk sub-job
        return os.environ["PJM_JOBID"].split("[")[0]

    @property
    def array_job_id(self) -> tp.Optional[str]:
        return self.raw_job_id if "PJM_BULKNUM" in os.environ else None

    num_tasks = property(lambda self: 1)  # type: ignore[assignment]
    node = global_rank = local_rank = property(lambda self: 0)  # type: ignore[assignment]

    @property
    def hostnames(self) -> tp.List[str]:
        nodefile = Path(os.environ.get("PJM_O_NODEINF", "/nonexistent"))  # ASSUMED: host names, one a line
        hosts = nodefile.read_text().split() if nodefile.is_file() else []
        return hosts or [self.hostname]

    def _handle_signals(self, paths: utils.JobPaths, submission: utils.DelayedSubmission) -> None:
        super()._handle_signals(paths, submission)
        # ASSUMED (one non-authoritative public source): at the elapse limit PJM
        # sends SIGXCPU and SIGKILL about 10 s later. Handle it as Slurm's warning signal: a
        # checkpointable callable checkpoints and asks to be resubmitted; any other one fails with
        # "timed-out and not checkpointable" in its result instead of vanishing.
        handler = job_environment.SignalHandler(self, paths, submission)
        signal.signal(signal.SIGXCPU, handler.checkpoint_and_try_requeue)

    def _requeue(self, countdown: int) -> None:
        # PJM cannot requeue a running job and compute nodes may not submit (Wisteria), so leave a
        # marker beside the job's files (requeue_requested) and exit with REQUEUE_EXIT_CODE (EC in
        # pjstat -H, since the script traps SIGXCPU and returns python's status); the caller
        # resubmits what the checkpoint wrote over <job id>_submitted.pkl.
        marker = requeue_marker(self.paths)
        marker.write_text(json.dumps({"job_id": self.job_id, "timeouts_left": countdown, "time": time.time()}))
        logger.get_logger().info(f"Job {self.job_id} checkpointed; exiting {REQUEUE_EXIT_CODE} for a resubmission")
        sys.exit(REQUEUE_EXIT_CODE)


class PjmExecutor(core.PicklingExecutor):
    """PJM executor: one `pjsub` per job, one bulk job per array (batch() / map_array).

    Parameters are those of _make_pjsub_string; through AutoExecutor, prefix them with "pjm_"
    (pjm_rscgrp, pjm_group, pjm_setup, ...). `python` is the interpreter the job runs (default:
    this one, which must be visible from the compute nodes).
    """

    job_class = PjmJob

    def __init__(self, folder: tp.Union[str, Path], max_num_timeout: int = 3, max_pickle_size_gb: float = 1.0,
                 python: tp.Optional[str] = None) -> None:
        super().__init__(folder, max_num_timeout=max_num_timeout, max_pickle_size_gb=max_pickle_size_gb)
        self.python = shlex.quote(sys.executable) if python is None else python
        if self.affinity() < 0:
            raise RuntimeError('Could not find "pjsub": is this a PJM (Fujitsu TCS) login node?')

    @classmethod
    def affinity(cls) -> int:
        return -1 if shutil.which("pjsub") is None else 2

    @classmethod
    def _equivalence_dict(cls) -> core.EquivalenceDict:
        return {"name": "job_name", "timeout_min": "timeout_min", "mem_gb": "mem_gb", "nodes": "nodes",
                "cpus_per_task": "cpus_per_task", "gpus_per_node": "gpus_per_node",
                "tasks_per_node": "tasks_per_node"}

    @classmethod
    def _valid_parameters(cls) -> tp.Set[str]:
        return set(_default_parameters())

    def _internal_update_parameters(self, **kwargs: tp.Any) -> None:
        unknown = sorted(set(kwargs) - set(_default_parameters()))
        if unknown:
            valid = ", ".join(sorted(_default_parameters()))
            raise ValueError(f"Unavailable PJM parameter(s): {unknown}; valid parameters: {valid}")
        _make_pjsub_string(command="true", folder=self.folder, **{**self.parameters, **kwargs})  # validates
        super()._internal_update_parameters(**kwargs)

    def _internal_process_submissions(
        self, delayed_submissions: tp.List[utils.DelayedSubmission]
    ) -> tp.List[core.Job[tp.Any]]:
        if len(delayed_submissions) == 1:
            return super()._internal_process_submissions(delayed_submissions)
        # an array: one pickle per task, one bulk job (as SlurmExecutor does with --array)
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        pickle_paths = []
        for delayed in delayed_submissions:
            pickle_path = folder / f"{uuid.uuid4().hex}.pkl"
            delayed.set_timeout(self.parameters.get("timeout_min", 5), self.max_num_timeout)
            delayed.dump(pickle_path)
            pickle_paths.append(pickle_path)
        n = len(delayed_submissions)
        bulk = PjmExecutor(self.folder, self.max_num_timeout, python=self.python)
        bulk.update_parameters(**self.parameters)
        bulk.parameters["map_count"] = n
        self._throttle()
        first = bulk._submit_command(self._submitit_command_str)
        jobs: tp.List[core.Job[tp.Any]] = [PjmJob(folder=self.folder, job_id=f"{first.job_id}_{i}") for i in range(n)]
        for job, pickle_path in zip(jobs, pickle_paths):
            job.paths.move_temporary_file(pickle_path, "submitted_pickle")
        return jobs

    @property
    def _submitit_command_str(self) -> str:
        return " ".join([self.python, "-u -m submitit.core._submit", shlex.quote(str(self.folder))])

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        return _make_pjsub_string(command=command, folder=self.folder, **self.parameters)

    def _num_tasks(self) -> int:
        return 1

    def _make_submission_command(self, submission_file_path: Path) -> tp.List[str]:
        n = self.parameters.get("map_count")
        bulk = ["--bulk", "--sparam", f"0-{n - 1}"] if n else []
        return ["pjsub", *bulk, str(submission_file_path)]

    def _submit_command(self, command: str) -> core.Job[tp.Any]:
        try:
            return super()._submit_command(command)
        except utils.FailedJobError as error:  # pjsub exited non-zero (submitit's CommandFunction)
            output = "\n".join(filter(None, [str(error), getattr(error.__cause__, "output", "")]))
            raise utils.FailedSubmissionError(f"pjsub failed: {_pjm_error(output) or output}") from error

    @staticmethod
    def _get_job_id_from_submission_command(string: tp.Union[bytes, str]) -> str:
        """`[INFO] PJM 0000 pjsub Job 12345 submitted.`, also `[INFO.]`, a `pjsub: ` prefix and
        step ids `64856_0`; an `[ERR.]` line becomes the FailedSubmissionError's message."""
        if not isinstance(string, str):
            string = string.decode(errors="replace")
        match = re.search(r"\bJob (\d+(?:_\d+)?) submitted", string)
        if match is None:
            raise utils.FailedSubmissionError(_pjm_error(string) or f'Could not make sense of pjsub output "{string}"')
        return match.group(1)


@functools.lru_cache()
def _default_parameters() -> tp.Dict[str, tp.Any]:
    spec = inspect.getfullargspec(_make_pjsub_string)
    defaults = dict(zip(spec.args[-len(spec.defaults):], spec.defaults))  # type: ignore
    return {key: value for key, value in defaults.items() if key != "map_count"}


def _elapse(minutes: float) -> str:
    seconds = int(round(minutes * 60))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _job_name(name: str) -> str:
    # Fugaku: at most 63 bytes, starting with a letter, of [A-Za-z0-9._@-]
    name = re.sub(r"[^A-Za-z0-9._@-]", "-", name)[:63]
    return name if not name or name[0].isalpha() else ("j" + name)[:63]


def _double_quoted(text: str) -> str:
    return re.sub(r'([\\"$`])', r"\\\1", text)


# pylint: disable=too-many-arguments,unused-argument
def _make_pjsub_string(
    command: str,
    folder: tp.Union[str, Path],
    job_name: str = "submitit",
    rscgrp: tp.Optional[str] = None,  # -L rscgrp= (the resource group: the queue)
    group: tp.Optional[str] = None,  # -g (the charge group; mandatory on Wisteria and Fugaku)
    timeout_min: float = 5,  # -L elapse=HH:MM:SS
    nodes: int = 1,
    gpus_per_node: int = 0,
    whole_node: bool = False,  # a one-node GPU job on a whole-node group: -L node=1, not gpu=N
    tasks_per_node: int = 1,
    cpus_per_task: tp.Optional[int] = None,  # not rendered: cores come with the node or GPU share
    mem_gb: tp.Optional[float] = None,  # not rendered: memory too (site options go in `directives`)
    env: tp.Optional[tp.Dict[str, str]] = None,  # -x VAR=value,... (the job does not inherit ours)
    inherit_env: bool = False,  # -X: pass the whole submitting environment
    restart: tp.Optional[bool] = None,  # --restart / --norestart after a system failure (site default if None)
    stderr_to_stdout: bool = False,
    setup: tp.Optional[tp.List[str]] = None,  # shell lines before the command (module load, activate)
    directives: tp.Optional[tp.List[str]] = None,  # raw extra #PJM options, e.g. ["-L rscunit=cx"]
    map_count: tp.Optional[int] = None,  # internal: the number of bulk sub-jobs
) -> str:
    """The job script: #PJM directives, log redirections, setup lines and the submitit command.

    Nodes and GPUs follow the sites' rule (Wisteria, Flow, Genkai): whole-node groups take `-L node=N`,
    shared-GPU groups `-L gpu=N`. So a one-node job with GPUs asks for `gpu=N` (unless
    whole_node), and anything else for `node=N` (GPUs then come with the nodes)."""
    if tasks_per_node != 1:
        raise ValueError("PJM has no srun: tasks_per_node must be 1; start ranks in the job (torchrun, mpiexec)")
    if nodes < 1 or gpus_per_node < 0:
        raise ValueError(f"nodes must be >= 1 and gpus_per_node >= 0 (got {nodes}, {gpus_per_node})")
    resources = [f"rscgrp={rscgrp}"] if rscgrp else []
    resources.append(f"gpu={gpus_per_node}" if gpus_per_node and nodes == 1 and not whole_node else f"node={nodes}")
    resources.append(f"elapse={_elapse(timeout_min)}")
    options = [f"-L {shlex.quote(r)}" for r in resources]
    if group:
        options.append(f"-g {shlex.quote(group)}")
    if _job_name(job_name):
        options.append(f"-N {_job_name(job_name)}")
    # PJM's own output file (messages of the job manager); the job's output goes to submitit's logs
    pjm_log = utils.JobPaths.get_first_id_independent_folder(folder) / "%j.pjm.out"
    options += [f"-o {shlex.quote(str(pjm_log))}", "-j"]
    if env:
        for key, value in env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or "," in str(value):
                raise ValueError(f"-x cannot pass {key}={value!r}: names are identifiers, values hold no comma")
        options.append("-x " + shlex.quote(",".join(f"{k}={v}" for k, v in env.items())))
    if inherit_env:
        options.append("-X")
    if restart is not None:
        options.append("--restart" if restart else "--norestart")
    options += list(directives or [])

    # submitit's log paths, with the id the job has in submitit ("123", or "123_4" for a sub-job)
    paths = utils.JobPaths(folder)
    job_id = '${PJM_JOBID%%\\[*}' + ("_${PJM_BULKNUM}" if map_count else "")

    def log_path(path: Path) -> str:
        text = _double_quoted(str(path)).replace("%t", "0").replace("%j", "${submitit_job_id}")
        return '"' + text.replace("%A", "${PJM_JOBID%%\\[*}").replace("%a", "${PJM_BULKNUM}") + '"'

    errors = "2>&1" if stderr_to_stdout else f"2>>{log_path(paths.stderr)}"
    lines = ["#!/bin/bash", "", "# Parameters", *(f"#PJM {option}" for option in options), "",
             "# submitit's logs (the script opens them: no reliance on PJM's %j for bulk sub-jobs)",
             f'submitit_job_id="{job_id}"', f"exec >>{log_path(paths.stdout)} {errors}"]
    if setup:
        lines += ["", "# setup", *setup]
    lines += ["", "# command", "export SUBMITIT_EXECUTOR=pjm", f"export SUBMITIT_PJM_NODES={nodes}",
              "trap : XCPU  # PJM's elapse warning: python checkpoints on it; the script lives on to return its status",
              command, ""]
    return "\n".join(lines)
