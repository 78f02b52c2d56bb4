"""Fixtures of the fault catalogue: a tiny face dataset and a run trained on it (once per
session), and `expect_error`, the exact shape every user-facing failure must have."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/helpers.py

import helpers


def expect_error(args: list, capsys, *fragments: str) -> str:
    """Run `metaemb ARGS`: exit status 2, no traceback, one paragraph naming `fragments`."""
    code, out, err = helpers.run_cli(args, capsys)
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    message = " ".join(err.split())
    assert message.startswith("error: "), err
    assert "\n\n" not in err.strip(), f"not one paragraph: {err!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


@pytest.fixture(scope="session")
def faces(tmp_path_factory) -> Path:
    """6 identities × 4 synthetic 32-px faces (with landmarks.csv)."""
    return helpers.demo_faces(tmp_path_factory.mktemp("faces") / "faces", 6, 4)


def train_tiny(data: Path, runs: Path, *extra: str, capsys=None) -> tuple[int, str, str]:
    """One epoch of a tiny face model on `data` (CPU, no workers)."""
    args = ["train", "--modality", "face", "--data", data, "--runs", runs, "--workers", "0"]
    sets = ["train.epochs=1", "train.batch_size=8", "model.dim=8", "features.image_size=32"]
    sets += ["eval.max_targets=20", "eval.nontargets=20", f"data.cache_dir={runs / 'cache'}"]
    for s in [*sets, *extra]:
        args += ["--set", s]
    return helpers.run_cli(args, capsys)


@pytest.fixture(scope="session")
def face_run(faces, tmp_path_factory) -> Path:
    """A run directory trained one epoch on `faces`."""
    runs = tmp_path_factory.mktemp("runs")
    code, _, _ = train_tiny(faces, runs)
    assert code == 0
    [run] = list((runs / "face").iterdir())
    return run
