"""Exclusive locks on files of a shared filesystem, each naming who holds it; standard library only.

A lock is an `flock` on a file that also records its holder (host, pid, since, what it does), so
a process that finds it taken can say by whom. The kernel drops the lock when the holder's last
file descriptor closes, however the holder ends (SIGKILL and node failure included), so no
stale lock is ever left behind to clear by hand. Across nodes this needs a filesystem whose
locks are coherent between clients (NFSv4, GPFS, Lustre mounted with `flock`); a Lustre mount
with `localflock` locks per node only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator


class LockHeld(RuntimeError):
    """Another process holds the lock; `holder` is what it recorded (None if unreadable)."""

    def __init__(self, path: Path, holder: dict | None):
        self.path, self.holder = Path(path), holder
        super().__init__(f"{path}: held by {describe(holder)}")


def describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    what = f" ({holder['what']})" if holder.get("what") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')} since {since}{what}"


def _read_holder(handle) -> dict | None:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


@contextlib.contextmanager
def exclusive(path: str | Path, what: str = "", wait: bool = False) -> Iterator[int]:
    """Hold the lock on `path` for the block; yields its file descriptor (a child process given
    it, `pass_fds`, holds the lock too while it lives). LockHeld at once when another process
    holds it, unless `wait`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    handle = os.fdopen(fd, "r+")
    try:
        if not _take(fd, wait):
            raise LockHeld(path, _read_holder(handle))
        # the holder's record is written in place: the lock is on this file, so it cannot be
        # replaced by a rename; a reader sees it whole or (for a moment) empty
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what}))
        handle.flush()
        try:
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        handle.close()


def _take(fd: int, wait: bool, patience_s: float = 1.0) -> bool:
    """The exclusive lock, waiting for it or for `patience_s` at most: a `holder` probe takes the
    lock shared for a moment, which must not turn a process away."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            return True
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def holder(path: str | Path) -> dict | None:
    """Who holds the lock on `path` now ({} when its holder left no record), or None when nobody
    does. Only reads: it works on a read-only filesystem."""
    try:
        handle = open(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with handle:
        try:  # a shared lock is refused while an exclusive one is held
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            return _read_holder(handle) or {}
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return None
