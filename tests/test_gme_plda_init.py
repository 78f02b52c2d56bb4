"""`train.init_head_from_plda`: the engine starts a GME head at a PLDA of training features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import demo_faces
from rich.console import Console

from metaemb.core.config import resolve
from metaemb.core.errors import ConfigError
from metaemb.core.train.callbacks import Callback
from metaemb.core.train.engine import Trainer


@pytest.fixture(scope="module")
def tiny_faces(tmp_path_factory) -> Path:
    return demo_faces(tmp_path_factory.mktemp("data") / "faces", 10, 6)


def trainer(data: Path, runs: Path, *extra: str, callbacks: tuple = ()) -> Trainer:
    sets = [
        f'data.root="{data}"',
        "model.head=gme",
        "train.objective=gme-bxe",
        "train.init_head_from_plda=true",
        "train.epochs=1",
        "train.batch_size=16",
        "features.image_size=32",
        "model.dim=4",
        "eval.max_targets=20",
        "eval.nontargets=20",
        *extra,
    ]
    cfg = resolve("face", sets=sets)
    return Trainer(cfg, runs_root=runs, device="cpu", workers=0, console=Console(quiet=True),
                   callbacks=callbacks)  # fmt: skip


def test_plda_initialisation_sets_the_head_before_the_first_epoch(tiny_faces, tmp_path):
    seen: dict[str, torch.Tensor] = {}

    class Stop(Callback):  # capture the head as epoch 1 would start, then stop
        def on_epoch_start(self, t: Trainer, epoch: int) -> None:
            seen["bias"] = t.model.head.precision.bias.detach().clone()
            raise KeyboardInterrupt

    t = trainer(tiny_faces, tmp_path, "head.normalization=batch", callbacks=(Stop(),))
    init = torch.log(torch.tensor(0.05 - 1e-3))
    with pytest.raises(KeyboardInterrupt):
        t.run()
    # The precisions now come from the PLDA's between/within ratios, not from init_precision.
    assert not torch.allclose(seen["bias"], torch.full_like(seen["bias"], float(init)))
    assert torch.all(seen["bias"][:-1] >= seen["bias"][1:] - 1e-6), "largest ψ first"


def test_sample_normalization_is_refused_before_any_work(tiny_faces, tmp_path):
    t = trainer(tiny_faces, tmp_path)
    with pytest.raises(ConfigError, match=r"head\.normalization=batch"):
        t.run()
