"""Fixtures of the fault catalogue: a tiny face dataset and a run trained on it, once per session.
Helpers (expect_error, train_tiny, png16) are in faults_helpers.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # faults_helpers
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/helpers.py

import faults_helpers
import helpers


@pytest.fixture(scope="session")
def faces(tmp_path_factory) -> Path:
    """6 identities × 4 synthetic 32-px faces (with landmarks.csv)."""
    return helpers.demo_faces(tmp_path_factory.mktemp("faces") / "faces", 6, 4)


@pytest.fixture(scope="session")
def face_run(faces, tmp_path_factory) -> Path:
    """A run directory trained one epoch on `faces`."""
    runs = tmp_path_factory.mktemp("runs")
    code, _, _ = faults_helpers.train_tiny(faces, runs)
    assert code == 0
    [run] = list((runs / "face").iterdir())
    return run
