"""torchrun on CPU (gloo): two ranks train one run; only rank 0 writes files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_torchrun_two_cpu_ranks(tmp_path: Path) -> None:
    from metaemb.core.plugin.components import build

    data = tmp_path / "faces"
    build(
        "demo_data", "face", {"identities": 8, "images_per_identity": 6, "image_size": 32}, out=data
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "-m", "metaemb.cli", "train", "--modality", "face", "--data", str(data),
        "--runs", str(tmp_path / "runs"), "--workers", "0",
        "--set", "train.epochs=2", "--set", "train.batch_size=16", "--set", "model.dim=32",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    [run] = list((tmp_path / "runs" / "face").iterdir())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # one writer, not two
    assert res.stdout.count("epoch 2:") == 1  # rank 1 prints nothing
