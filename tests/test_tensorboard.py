"""TensorBoard logging (`train.tensorboard=true`, the tensorboard extra): per-step loss, LR and
throughput, every validation metric per epoch, the DET curve image and projector embeddings —
read back from the event files; nothing of TensorBoard is imported when it is off."""

from __future__ import annotations

import json
import subprocess
import sys

import helpers
import pytest


def test_tensorboard_logs_what_training_saw(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = helpers.demo_faces(
        tmp_path / "faces", identities=8, images_per_identity=4, image_size=32
    )
    args = ["train", "--data", data, "--runs", tmp_path / "runs", "--workers", "0"]
    for s in ("train.epochs=1", "train.batch_size=8", "model.dim=16", "features.image_size=32",
              "eval.max_targets=30", "eval.nontargets=30", f"data.cache_dir={tmp_path / 'c'}",
              "train.tensorboard=true"):  # fmt: skip
        args += ["--set", s]
    code, _, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    [run] = list((tmp_path / "runs" / "face").iterdir())
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 3  # 24 training samples / 8
    assert {"lr/model", "lr/head", "train/samples_per_s"} <= set(tags["scalars"])
    [eer] = acc.Scalars("val_epoch/eer")
    assert eer.step == 1 and eer.value == pytest.approx(record["eer"], rel=1e-6)
    for key in ("min_dcf_0.01", "cllr", "min_cllr"):
        assert acc.Scalars(f"val_epoch/{key}")[0].value == pytest.approx(record[key], rel=1e-6)
    assert "val/det" in tags["images"]
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
