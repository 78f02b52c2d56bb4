"""TensorBoard logging (`train.tensorboard=true`, the tensorboard extra): per-step loss, LR and
throughput, every validation metric per epoch, the DET curve image and projector embeddings —
read back from the event files; nothing of TensorBoard is imported when it is off."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_tensorboard_logs_what_training_saw(tiny_face_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run = tiny_face_run  # trained with train.tensorboard=true: 2 epochs of 2 steps
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == [1, 2, 3, 4]  # 32 training samples / batch 16, two epochs
    assert {"lr/model", "lr/head", "train/samples_per_s"} <= set(tags["scalars"])
    for key in ("eer", "min_dcf_0.01", "cllr", "min_cllr", "loss"):
        logged = acc.Scalars(f"{'train' if key == 'loss' else 'val'}_epoch/{key}")
        assert [e.step for e in logged] == [1, 2]
        for event, record in zip(logged, records, strict=True):
            assert event.value == pytest.approx(record[key], rel=1e-6), key
    assert len(acc.Images("val/det")) == 2
    metadata = list((run / "tensorboard").rglob("metadata.tsv"))
    assert metadata and len(metadata[0].read_text().splitlines()) == 8  # 2 val identities × 4
    assert (run / "tensorboard" / "projector_config.pbtxt").is_file()


def test_tensorboard_is_not_imported_when_off():
    code = (
        "import sys; from metaemb.core.config import resolve;"
        "from metaemb.core.train.workflows import config_callbacks;"
        "config_callbacks(resolve('face'));"
        "bad = [m for m in sys.modules if 'tensorboard' in m];"
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
