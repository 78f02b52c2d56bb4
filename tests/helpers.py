"""Shared test helpers (pytest puts tests/ on sys.path, so test files import this directly)."""

from __future__ import annotations

import sys

from metaemb import cli


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """Run `metaemb ARGS` in-process (as the console script does) → (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["metaemb", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err
