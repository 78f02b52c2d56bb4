"""The consoles commands print with. Into a file or a pipe (a batch job's log, `| grep`) long
lines are not folded at 80 columns and tables get the width they need, so a run's path or a
number stays whole for the script reading it; in a terminal, or with COLUMNS set, rich fits
the output to the width as usual."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console

from metaemb.core.closed_output import go_on_without_output
from metaemb.core.train.runlog import WARNING  # how the core prints a warning line


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


class CommandConsole(Console):
    """A command's standard-output console whose warning lines go to standard error, with
    Python's warnings and every error, where a batch job's `2> job.err` looks for them."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.warnings_to = Console(**console_options(stderr=True))

    def on_broken_pipe(self) -> None:
        """The output's reader went away (`| head`): go on, printing nowhere."""
        go_on_without_output(self)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Print as rich does; a line starting with WARNING goes to `warnings_to`."""
        if objects and isinstance(objects[0], str) and objects[0].startswith(WARNING):
            self.warnings_to.print(*objects, **kwargs)
            return
        super().print(*objects, **kwargs)


def make_console(stderr: bool = False) -> Console:
    """A command's console for stdout (warnings to stderr), or for stderr."""
    if stderr:
        return Console(**console_options(stderr=True))
    return CommandConsole(**console_options())
