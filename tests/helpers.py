"""Shared test helpers (pytest puts tests/ on sys.path, so test files import this directly)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from metaemb import cli


def run_cli(args: list, capsys=None, monkeypatch=None) -> tuple[int, str, str]:
    """Run `metaemb ARGS` in-process (as the console script does) → (exit code, stdout, stderr).

    Without `capsys` the output is not captured ("", "" is returned)."""
    with pytest.MonkeyPatch.context() as own:
        (monkeypatch or own).setattr(sys, "argv", ["metaemb", *[str(a) for a in args]])
        code = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


def demo_faces(out: Path, identities: int, images_per_identity: int, image_size: int = 32) -> Path:
    """A small synthetic face folder from the built-in generator (deterministic)."""
    from metaemb.core.plugin.components import build

    options = {
        "identities": identities,
        "images_per_identity": images_per_identity,
        "image_size": image_size,
    }
    build("demo_data", "face", options, out=out)
    return out
