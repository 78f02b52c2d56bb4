"""Run directories and checkpoints: atomic writes, safe loading, refusal of foreign checkpoints."""

from __future__ import annotations

import os

import pytest
import torch

import metaemb
from metaemb.core import runs
from metaemb.core.config import resolve
from metaemb.core.errors import MetaembError


def test_run_dir_is_keyed_by_config_hash(tmp_path):
    a = resolve("face", sets=["train.epochs=2"])
    b = resolve("face", sets=["train.epochs=3"])
    assert runs.run_dir(tmp_path, a) != runs.run_dir(tmp_path, b)
    assert runs.run_dir(tmp_path, a).name == f"run-{a.hash()}"
    assert runs.run_dir(tmp_path, a).parent.name == "face"


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "last.pt"
    state = {
        "model": {"w": torch.randn(3)},
        "epoch": 2,
        "config_hash": "abcd1234",
        "rng": torch.get_rng_state(),
    }
    runs.save_checkpoint(path, state)
    loaded = runs.load_checkpoint(path, expect_hash="abcd1234")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 2
    assert loaded["metaemb_version"] == metaemb.__version__
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_foreign_config_and_version_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    runs.save_checkpoint(path, {"config_hash": "aaaaaaaa"})
    with pytest.raises(MetaembError, match="belongs to configuration aaaaaaaa"):
        runs.load_checkpoint(path, expect_hash="bbbbbbbb")
    monkeypatch.setattr(metaemb, "__version__", "7.0.0")
    with pytest.raises(MetaembError, match="cannot load it"):
        runs.load_checkpoint(path)


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(MetaembError, match="cannot be read"):
        runs.load_checkpoint(path)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    runs.save_checkpoint(path, {"epoch": 1})

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        runs.save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert runs.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_text_write(tmp_path):
    p = tmp_path / "sub" / "x.txt"
    runs.atomic_write_text(p, "hello")
    assert p.read_text() == "hello"
    assert os.stat(p).st_mode & 0o777 == runs.FILE_MODE  # like open(), not mkstemp's 0600
