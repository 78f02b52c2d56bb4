"""train.log: a plain-text copy of everything `metaemb train` prints for a run (epoch lines,
summary, warnings, the error that stopped it), appended, one header per invocation."""

from __future__ import annotations

import contextlib
import datetime
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from metaemb.core.closed_output import go_on_without_output

#: how the core prints a warning line on a console (rich markup); commands send such lines to
#: standard error
WARNING = "[yellow]warning:[/]"


class LoggingConsole(Console):
    """A rich Console whose `print` also writes uncoloured text to a log file once one is open.

    Live progress bars are not copied (they would be hundreds of redraws); what is printed is."""

    def __init__(self, *args: Any, warnings_to: Console | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **{"emoji": False, **kwargs})  # ':100:' in a path stays text
        self.warnings_to = warnings_to  # lines starting "[yellow]warning:[/]" print there
        self._log_file: TextIO | None = None
        self._log: Console | None = None
        self._pending: tuple[Path, str] | None = None

    def open_log(self, path: Path, header: str) -> None:
        """Log to `path` from the first line written: a command refused before it wrote
        anything (another process trains this run) leaves no trace in that run's log."""
        self._pending = (path, header)

    def _opened(self) -> Console | None:
        if self._pending is not None:
            path, header = self._pending
            self._pending = None
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                # a name that is not UTF-8 (surrogates) is logged escaped, not a crash
                self._log_file = open(path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 - see close_log
            except OSError as exc:  # a finished run archived read-only: say it, log nothing
                super().print(
                    f"note: '{path}' cannot be written ({exc.strerror or exc}); this command's "
                    "output is not logged there.",
                    markup=False,
                )
                return None
            self._log = Console(file=self._log_file, color_system=None, width=100,
                                soft_wrap=True, force_terminal=False, highlight=False,
                                emoji=False)  # fmt: skip
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            self._log.print(f"==== {stamp} {header}", markup=False)
        return self._log

    def print(self, *objects: Any, **kwargs: Any) -> None:
        warning = objects and isinstance(objects[0], str) and objects[0].startswith(WARNING)
        if warning and self.warnings_to is not None:
            self.warnings_to.print(*objects, **kwargs)
        else:
            super().print(*objects, **kwargs)
        log = self._opened()
        if log is not None:
            log.print(*objects, **kwargs)
            self._log_file.flush()  # type: ignore[union-attr]

    def on_broken_pipe(self) -> None:
        """The output's reader went away: train on, logging to train.log only."""
        go_on_without_output(self)

    def log_only(self, text: str) -> None:
        """A line for the log file only (e.g. the error the CLI prints on stderr)."""
        log = self._opened()
        if log is not None:
            log.print(text, markup=False)
            self._log_file.flush()  # type: ignore[union-attr]

    @contextlib.contextmanager
    def logging_warnings(self) -> Iterator[None]:
        """Copy metaemb's warnings (UserWarning) raised inside the block to the log file too:
        they go to stderr, not through `print`, and the one explaining a 50 % EER was lost."""
        shown = warnings.showwarning

        def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
            shown(message, category, *args, **kwargs)
            if issubclass(category, UserWarning):
                self.log_only(f"warning: {message}")

        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = shown

    def close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
        self._log_file, self._log, self._pending = None, None, None
