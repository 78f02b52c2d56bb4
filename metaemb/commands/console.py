"""The consoles commands print with. Into a file or a pipe (a batch job's log, `| grep`) long
lines are not folded at 80 columns and tables get the width they need, so a run's path or a
number stays whole for the script reading it; in a terminal, or with COLUMNS set, rich fits
the output to the width as usual."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console


def console_options(stderr: bool = False) -> dict[str, Any]:
    """Keyword arguments for a rich Console writing to stdout (or stderr)."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        terminal = False
    options: dict[str, Any] = {"stderr": stderr, "emoji": False}  # ':100:' in a path stays
    if not terminal and not os.environ.get("COLUMNS"):
        options.update(soft_wrap=True, width=4000)
    return options


def make_console(stderr: bool = False) -> Console:
    return Console(**console_options(stderr))
