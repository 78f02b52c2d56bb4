"""Trunk freezing and the training-only classifier: one tiny face run driven through Trainer.

The run trains 2 epochs with `train.freeze_trunk_epochs=1`; a callback snapshots the trunk, the head
and the classifier before the first epoch and after each one. The saved checkpoint is then checked:
the classifier sits under its own key and the exported EmbeddingModel state has none of it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import demo_faces
from rich.console import Console

from metaemb.core.checkpoints import load_checkpoint
from metaemb.core.config import resolve
from metaemb.core.data.pipeline import Components
from metaemb.core.train.callbacks import Callback
from metaemb.core.train.engine import Trainer

LR, MULT, HEAD_MULT = 2e-3, 7.0, 3.0


def settings(data: Path, *extra: str) -> list[str]:
    return [
        f'data.root="{data}"',
        "train.epochs=2",
        "train.batch_size=16",
        "train.freeze_trunk_epochs=1",
        f"train.lr={LR}",
        f"train.classifier_lr_mult={MULT}",
        f"train.head_lr_mult={HEAD_MULT}",
        "train.warmup_epochs=0",
        "features.image_size=32",
        "model.dim=16",
        "eval.max_targets=50",
        "eval.nontargets=50",
        *extra,
    ]


@pytest.fixture(scope="module")
def tiny_faces(tmp_path_factory) -> Path:
    return demo_faces(tmp_path_factory.mktemp("data") / "faces", 8, 4)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """Names of the float tensors that differ (integer counters such as BN's are ignored)."""
    return [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]


@pytest.fixture(scope="module")
def frozen_run(tiny_faces, tmp_path_factory):
    """Train 2 epochs (trunk frozen in the first); return snapshots per epoch and the trainer."""
    cfg = resolve("face", sets=settings(tiny_faces))
    runs = tmp_path_factory.mktemp("runs")
    snaps: list[dict] = []
    grads_on: list[bool] = []

    def take(t: Trainer) -> dict:
        return {
            "trunk": snapshot(t.model.backbone.trunk()),
            "head": snapshot(t.model.head),
            "classifier": snapshot(t.classifier),
        }

    class Snapshots(Callback):
        def on_epoch_start(self, t: Trainer, epoch: int) -> None:
            if not snaps:
                snaps.append(take(t))

        def on_epoch_end(self, t: Trainer, epoch: int, record: dict) -> None:
            grads_on.append(all(p.requires_grad for p in t.model.backbone.trunk().parameters()))
            snaps.append(take(t))

    trainer = Trainer(cfg, runs_root=runs, device="cpu", workers=0, console=Console(quiet=True),
                      callbacks=[Snapshots()])  # fmt: skip
    trainer.run()
    return trainer, snaps, grads_on


def test_trunk_is_frozen_in_epoch_1_and_trains_in_epoch_2(frozen_run):
    _, (start, after1, after2), grads_on = frozen_run
    assert start["trunk"], "the trunk has parameters"
    assert changed(start["trunk"], after1["trunk"]) == []  # weights and BN statistics unchanged
    trained = changed(after1["trunk"], after2["trunk"])
    assert len(trained) > len(after1["trunk"]) // 2, "epoch 2 should update the trunk"
    assert grads_on == [False, True]


def test_head_and_classifier_train_in_both_epochs(frozen_run):
    _, (start, after1, after2), _ = frozen_run
    for part in ("head", "classifier"):
        assert changed(start[part], after1[part]), f"{part} did not change in epoch 1"
        assert changed(after1[part], after2[part]), f"{part} did not change in epoch 2"


def test_classifier_and_head_have_their_own_param_group_lr(frozen_run):
    trainer, _, _ = frozen_run
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {"model", "head", "classifier"}
    assert groups["model"]["initial_lr"] == pytest.approx(LR)
    for name, module, mult in (
        ("classifier", trainer.classifier, MULT),
        ("head", trainer.model.head, HEAD_MULT),
    ):
        assert groups[name]["initial_lr"] == pytest.approx(LR * mult)
        assert groups[name]["lr"] == pytest.approx(mult * groups["model"]["lr"])
        ids = {id(p) for p in groups[name]["params"]}
        assert ids == {id(p) for p in module.parameters()}
        assert ids.isdisjoint(id(p) for p in groups["model"]["params"])
    every = [id(p) for g in groups.values() for p in g["params"]]
    assert len(every) == len(set(every)), "a parameter is in two groups"
    model_ids = {id(p) for p in trainer.model.parameters()} | {
        id(p) for p in trainer.classifier.parameters()
    }
    assert set(every) == model_ids, "every trainable parameter is optimised"


def test_classifier_is_checkpointed_apart_from_the_exported_model(frozen_run):
    trainer, _, _ = frozen_run
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(trainer.dir / name)
        n_classes = trainer.train_folder.num_identities
        assert state["classifier"]["fc.weight"].shape == (n_classes, 16)
        # No tensor of the inference model is the classifier: no [classes, dim] weight, no key.
        assert not any(k.startswith("classifier") for k in state["model"])
        assert all(v.shape[:1] != (n_classes,) for v in state["model"].values() if v.dim() == 2)
    last = load_checkpoint(trainer.dir / "last.pt")
    assert torch.equal(last["classifier"]["fc.weight"], trainer.classifier.fc.weight.detach())
    # The exported state loads strictly into a freshly built EmbeddingModel (no extra keys).
    fresh = Components.build(trainer.config, trainer.parts.root).model
    fresh.load_state_dict(last["model"], strict=True)


def test_margin_heads_also_get_their_own_checkpoint_key(tiny_faces, tmp_path):
    cfg = resolve("face", sets=settings(tiny_faces, "train.objective=arcface", "train.epochs=1"))
    trainer = Trainer(cfg, runs_root=tmp_path, device="cpu", workers=0, console=Console(quiet=True))
    trainer.setup()
    state = trainer.training_state(0, 0, 1.0, [])
    assert set(state["classifier"]) == {"weight"}
    assert state["classifier"]["weight"].shape == (trainer.train_folder.num_identities, 16)
    assert "weight" not in state["model"]
    assert not any(torch.equal(v, state["classifier"]["weight"]) for v in state["model"].values())
