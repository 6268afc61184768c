"""Atomic writes: write beside the target, fsync, then rename into place.

A reader (another stage, a resumed job) sees either the old file or the complete new one, never
a half-written file, even when the writer is killed mid-way. The file gets the mode a plain
`open` would give it (0666 less the umask: group-readable under the usual 022 or 002), not the
private 0600 of a temporary file, so colleagues can read a shared results folder.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed to `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and _stand_in(err.filename, path):  # the file the caller knows
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


FULL_BELOW = 1 << 20  # bytes free under which a filesystem counts as full


def refusal(path: str | Path) -> str | None:
    """Why nothing more can be written under `path` (a read-only or full filesystem), else None."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        fs = os.statvfs(path)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return f"{path} is on a read-only file system"
    free = fs.f_bavail * fs.f_frsize
    if free < FULL_BELOW:
        return f"no space left on the file system of {path} ({free // 1024} KiB free)"
    return None


def refused(err: BaseException, path: str | Path) -> OSError | None:
    """`err` as the OSError of a write the disk refused, where it was one: an OSError of that
    kind, or any error (torch.save's RuntimeError, say) while `path`'s filesystem is full or
    read-only. None otherwise."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return err
    reason = refusal(path)
    if reason is None:
        return None
    code = errno.EROFS if "read-only" in reason else errno.ENOSPC
    return OSError(code, os.strerror(code), str(path))


def _stand_in(name: str | None, path: Path) -> bool:
    """No file named (a failed write()), or a temporary file standing in for `path`."""
    return name is None or (Path(name).parent == path.parent and Path(name).name.startswith(f".{path.name}."))


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def torch_save(obj: Any, path: str | Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
