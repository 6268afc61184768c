"""The words a task, a run and a scheduler job are in, defined once: status, advance, runs and the
CLI use these. They are `str` enums, so in JSON and in tables they are the words themselves, and
a scheduler's own answer ("TIMEOUT", "NODE_FAIL") compares with them as a plain string."""

from __future__ import annotations

from enum import Enum


class Word(str, Enum):
    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class TaskState(Word):
    DONE = "done"
    RUNNING = "running"  # its log path is printed
    QUEUED = "queued"  # its job waits in the scheduler, or it is resubmitted at the next pass
    WAITING_FOR_INPUT = "waiting-for-input"  # a task it needs is not done
    WAITING_FOR_RESOURCES = "waiting-for-resources"  # its inputs are ready; the local cores are taken
    FAILED = "failed"  # its own error, damaged outputs, or given up after repeated kills
    BLOCKED = "blocked"  # a task it needs failed
    CANCELLED = "cancelled"
    STOPPED = "stopped"  # a local run whose loop is gone


class RunState(Word):
    DONE = "done"
    RUNNING = "running"
    QUEUED = "queued"
    FAILED = "failed"  # nothing can go on without `pipeline retry`
    CANCELLED = "cancelled"
    STOPPED = "stopped"  # local executor: its loop is gone; `pipeline retry` goes on
    ERROR = "error"  # its state could not be read (a damaged registry): the error says why


class JobState(Word):
    """Slurm's words for a job, those the pipeline reasons about (PJM's are mapped onto Slurm's;
    the local executor says FINISHED for a process that has ended)."""
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    UNKNOWN = "UNKNOWN"  # the scheduler did not answer for it: counted as live, never resubmitted on a guess
    FINISHED = "FINISHED"
