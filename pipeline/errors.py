"""The one exception type of the user's mistakes (a spec, a path, a run name, the data): the CLI
prints it as one line, no traceback. Anything else is a bug and keeps its traceback, except a
disk that refuses a write (full, read-only, over quota), which is said in one line too."""

from __future__ import annotations

import errno


class UserError(Exception):
    pass


# why the filesystem refused a write, in the words `status` and the CLI print
_REFUSED = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted"}


def write_problem(err: OSError) -> str | None:
    """'cannot write PATH: no space left on the device' for a write the disk refused, else None."""
    reason = _REFUSED.get(err.errno)
    if reason is None:
        return None
    return f"cannot write {err.filename}: {reason}" if err.filename else f"cannot write: {reason}"

