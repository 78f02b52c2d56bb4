"""When the reader of a command's output goes away (`metaemb train … | head`, the `tee` of a
closed ssh session), rich ends the process with exit status 1 and no word: an hour of training
lost to a pager. A command's consoles go on instead, printing nowhere from then on, and say so
once on standard error; train.log keeps every line. Plain prints (`typer.echo` of a JSON result)
go through `GuardedStdout`, which does the same.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

from rich.console import Console

_said = False


def go_on_without_output(console: Console) -> None:
    """`Console.on_broken_pipe` for a command's consoles: point the closed stream at the null
    device (so buffered and later writes succeed), silence the console, warn once."""
    console.quiet = True
    _drop(console.file)


def _drop(stream: Any) -> None:
    """Point `stream`'s file descriptor at the null device and warn, once."""
    global _said
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    if not _said:
        _said = True
        warnings.warn(
            "the reader of this command's output went away (a closed pipe); the command goes "
            "on without printing there.",
            stacklevel=2,
        )


class GuardedStdout:
    """Standard output for a command's plain prints: a write or flush whose reader went away
    goes on to the null device (with the one warning) instead of ending the command with a
    BrokenPipeError after its work was done. Everything else is the wrapped stream's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            _drop(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            _drop(self._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
