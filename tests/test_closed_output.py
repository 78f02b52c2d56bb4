"""A command whose output's reader goes away (`metaemb train … | head`) goes on: rich ended
the process with exit status 1 and no word, losing the training (T1 F1)."""

from __future__ import annotations

import os

import pytest

from metaemb.commands.console import CommandConsole
from metaemb.core.train.runlog import LoggingConsole


def closed_pipe():
    """A writable file whose reader is gone: a write raises BrokenPipeError."""
    read, write = os.pipe()
    os.close(read)
    return os.fdopen(write, "w")


@pytest.mark.parametrize("kind", [CommandConsole, LoggingConsole])
def test_a_console_goes_on_when_its_reader_went_away(kind, tmp_path, monkeypatch):
    import metaemb.core.closed_output as closed

    monkeypatch.setattr(closed, "_said", False)
    out = closed_pipe()
    console = kind(file=out)
    if kind is LoggingConsole:
        console.open_log(tmp_path / "train.log", "header")
    with pytest.warns(UserWarning, match="reader of this command's output went away"):
        console.print("epoch 1")
    console.print("epoch 2")  # no SystemExit, no second warning
    out.flush()  # what was buffered goes to the null device now
    assert console.quiet
    if kind is LoggingConsole:  # the log keeps every line
        assert (tmp_path / "train.log").read_text().splitlines()[1:] == ["epoch 1", "epoch 2"]
    out.close()


def test_plain_prints_go_on_when_the_reader_went_away(monkeypatch):
    """`trials make … | true` wrote its list, then ended with status 1 and no word when its
    JSON summary met the closed pipe (typer.echo, not a rich console) (R5-4)."""
    import metaemb.core.closed_output as closed

    monkeypatch.setattr(closed, "_said", False)
    out = closed_pipe()
    guarded = closed.GuardedStdout(out)
    with pytest.warns(UserWarning, match="reader of this command's output went away"):
        guarded.write("x" * 100_000)  # more than a pipe holds: the write meets the closed end
        guarded.flush()
    guarded.write("more")  # to the null device now
    guarded.flush()
    assert guarded.fileno() == out.fileno()  # everything else is the stream's
    out.close()
