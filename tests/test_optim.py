"""The LR schedule and parameter groups (core/train/optim.py)."""

from __future__ import annotations

import itertools
import math

import pytest
from torch import nn

from metaemb.core.config import TrainConfig
from metaemb.core.errors import ConfigError
from metaemb.core.train.heads import EmbeddingHead, GMEHead
from metaemb.core.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_warmup_is_linear_then_cosine_reaches_one_percent():
    cfg = TrainConfig(epochs=4, warmup_epochs=1.0, schedule="cosine")
    steps = 10
    assert [lr_factor(s, cfg, steps) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_factor(9, cfg, steps) == pytest.approx(1.0)
    assert lr_factor(10, cfg, steps) == pytest.approx(1.0)  # peak right after warm-up
    half = 10 + 15  # halfway through the 30 cosine steps
    assert lr_factor(half, cfg, steps) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(40, cfg, steps) == pytest.approx(0.01)
    assert lr_factor(400, cfg, steps) == pytest.approx(0.01)  # clamped past the end
    values = [lr_factor(s, cfg, steps) for s in range(10, 41)]
    assert all(a >= b for a, b in itertools.pairwise(values)), "cosine part must not increase"


def test_constant_schedule_and_no_warmup():
    cfg = TrainConfig(epochs=3, warmup_epochs=0.0, schedule="constant")
    assert {lr_factor(s, cfg, 7) for s in range(21)} == {1.0}
    cos = TrainConfig(epochs=2, warmup_epochs=0.0)
    assert lr_factor(0, cos, 5) == pytest.approx(1.0)
    assert lr_factor(5, cos, 5) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 2)))


class _Model(nn.Module):
    """Stands in for EmbeddingModel: a trunk and a `head`."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 8)
        self.head = head


def test_gme_head_precision_params_get_their_own_groups_without_weight_decay():
    model = _Model(GMEHead(8, 4, precision_lr_mult=5.0))
    classifier = nn.Linear(4, 3)
    cfg = TrainConfig(lr=0.1, head_lr_mult=2.0, classifier_lr_mult=3.0, weight_decay=1e-3)
    opt = build_optimizer(model, classifier, cfg)  # type: ignore[arg-type]
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {
        "model",
        "head",
        "head.precision.bias",
        "head.log_precision_scale",
        "classifier",
    }
    assert groups["model"]["lr"] == pytest.approx(0.1)
    assert groups["head"]["lr"] == pytest.approx(0.2)
    assert groups["classifier"]["lr"] == pytest.approx(0.3)
    for name, param in (
        ("head.precision.bias", model.head.precision.bias),
        ("head.log_precision_scale", model.head.log_precision_scale),
    ):
        assert groups[name]["lr"] == pytest.approx(1.0)
        assert groups[name]["weight_decay"] == 0.0
        assert groups[name]["params"] == [param]
    assert groups["head"]["weight_decay"] == pytest.approx(1e-3)

    # The calibration groups keep their peak LR after warm-up; the others decay.
    cfg.epochs, cfg.warmup_epochs = 4, 1.0
    sched = build_scheduler(opt, cfg, steps_per_epoch=5)
    for _ in range(19):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head.precision.bias"] == pytest.approx(1.0)
    assert lrs["head.log_precision_scale"] == pytest.approx(1.0)
    assert lrs["model"] == pytest.approx(0.1 * lr_factor(19, cfg, 5)) and lrs["model"] < 0.003
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for m in (model, classifier) for p in m.parameters())


def test_point_head_has_one_group_and_unknown_names_are_refused():
    model = _Model(EmbeddingHead(8, 4))
    names = [g["name"] for g in param_groups(model, None, TrainConfig())]  # type: ignore[arg-type]
    assert names == ["model", "head"]

    class Broken(GMEHead):
        def calibration_parameters(self) -> dict[str, float]:
            return {"no_such": 2.0}

    with pytest.raises(ConfigError, match="no_such"):
        param_groups(_Model(Broken(8, 4)), None, TrainConfig())  # type: ignore[arg-type]
