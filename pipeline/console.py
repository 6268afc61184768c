"""Where the commands print: rich consoles for standard output and standard error."""

from __future__ import annotations

import sys

from rich.console import Console


def _console(stderr: bool = False) -> Console:
    """On a terminal, rich's wrapping to its width; piped or redirected, whole lines (an error one
    line, a table at its full width) for the reader that is a file, grep or a log."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=100_000, soft_wrap=True)


console = _console()
err_console = _console(stderr=True)


console = _console()
err_console = _console(stderr=True)
