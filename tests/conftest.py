"""Session fixtures shared by test files (each builds something several files need, once)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import helpers
import pytest


@pytest.fixture(scope="session")
def tiny_face_run(tmp_path_factory) -> tuple[Path, Path]:
    """(a 10-identity × 4-image face folder at 32 px, a 2-epoch run trained on it by the CLI).

    The run logs to TensorBoard when it is installed; 8 training identities (32 samples, 2 steps
    of 16 per epoch), 2 validation identities; up to 500 validation target trials."""
    base = tmp_path_factory.mktemp("tiny-face-run")
    data = helpers.demo_faces(base / "faces", identities=10, images_per_identity=4, image_size=32)
    sets = ["train.epochs=2", "train.batch_size=16", "model.dim=16", "features.image_size=32",
            "eval.max_targets=500", "eval.nontargets=60", f"data.cache_dir={base / 'cache'}"]  # fmt: skip
    if importlib.util.find_spec("tensorboard") is not None:
        sets.append("train.tensorboard=true")
    args = ["train", "--data", data, "--runs", base / "runs", "--workers", "0"]
    for s in sets:
        args += ["--set", s]
    assert helpers.run_cli(args)[0] == 0
    [run] = list((base / "runs" / "face").iterdir())
    return data, run
