"""When the reader of a command's output goes away (`metaemb train … | head`, the `tee` of a
closed ssh session), rich ends the process with exit status 1 and no word: an hour of training
lost to a pager. A command's consoles go on instead, printing nowhere from then on, and say so
once on standard error; train.log keeps every line.
"""

from __future__ import annotations

import contextlib
import os
import warnings

from rich.console import Console

_said = False


def go_on_without_output(console: Console) -> None:
    """`Console.on_broken_pipe` for a command's consoles: point the closed stream at the null
    device (so buffered and later writes succeed), silence the console, warn once."""
    global _said
    console.quiet = True
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = console.file.fileno()
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
