"""A command's options do not outlive it in the process that ran it (a notebook, a test)."""

from __future__ import annotations

from helpers import run_cli

from metaemb.core.data.pipeline import folder_set_used, frontend_set_used


def test_a_commands_folder_options_end_with_it(tiny_face_run, tmp_path, capsys):
    """`embed --folder agedb` in a notebook left its folder set: a later plain `load_run` in the
    same process read the data with AgeDB's folder (Q1 F25)."""
    args = ["embed", tiny_face_run, tmp_path / "nothing", "--out", tmp_path / "e.pt", "--folder",
            "agedb", "--frontend-set", "on_no_face=center", "--workers", "0"]  # fmt: skip
    run_cli(args, capsys)  # fails or not: what it set must not stay behind
    assert folder_set_used() == (None, {}) and frontend_set_used() == {}


def test_ctrl_c_while_the_commands_import_exits_130_without_a_traceback(monkeypatch, capsys):
    """Ctrl-C in the seconds torch and the plugins take to import printed a traceback into
    torch's internals (H19 F2); it ends as an interrupted command does: status 130, no text."""
    import sys

    import pytest

    from metaemb import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "create_app", interrupted)
    monkeypatch.setattr(sys, "argv", ["metaemb", "runs"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 130
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and err == ""


def test_ctrl_c_while_the_command_line_imports_exits_130(monkeypatch, capsys):
    """The console script's first import (typer, rich) ran before main's handler, so Ctrl-C in
    the first fraction of a second still printed a traceback (R6 F7)."""
    import sys
    import types

    import pytest

    from metaemb import entry

    class Interrupted(types.ModuleType):
        def __getattr__(self, name):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "metaemb.cli", Interrupted("metaemb.cli"))
    with pytest.raises(SystemExit) as exc:
        entry.main()
    assert exc.value.code == 130
    assert capsys.readouterr() == ("", "")
