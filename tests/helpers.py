"""Shared test helpers (pytest puts tests/ on sys.path, so test files import this directly)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import metaemb
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


class RivalTrialFormats:
    """A plugin whose trial-list format 'greedy-test' claims every 3-column line (VoxCeleb's
    and Kaldi's too) first, reading it as 'enroll test label', and can be written; its format
    'nowrite-test' cannot be written."""

    name = "rivals"

    @metaemb.hookimpl
    def register_trial_formats(self, register):
        from metaemb.core.eval.trials import TrialFormat, write_lines
        from metaemb.core.plugin.interfaces import Trial

        class Greedy(TrialFormat):
            detect_order = 5

            def detect(self, fields):
                return len(fields) == 3

            def read(self, path, root):
                rows = [line.split() for line in path.read_text().splitlines() if line.split()]
                return [Trial((a,), b, 1 if c == "1" else 0) for a, b, c in rows]

            def write(self, path, trials, **options):
                write_lines(path, [f"{t.enroll[0]} {t.test} {t.label}" for t in trials])

        class NoWrite(Greedy):
            detect_order = 200

            def detect(self, fields):
                return False

            write = TrialFormat.write

        register("greedy-test", Greedy)
        register("nowrite-test", NoWrite)


def doc_function(doc: str, name: str):
    """The function `name` defined in a ```python block of `doc` (a path from the repository
    root, e.g. docs/export.md), compiled as written."""
    import re

    text = (Path(__file__).resolve().parents[1] / doc).read_text(encoding="utf-8")
    [block] = [b for b in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
               if f"def {name}(" in b]  # fmt: skip
    namespace: dict = {}
    exec(compile(block, f"{doc} {name}", "exec"), namespace)
    return namespace[name]
