"""The LR schedule and parameter groups (core/optim.py)."""

from __future__ import annotations

import itertools
import math

import pytest

from metaemb.core.config import TrainConfig
from metaemb.core.optim import lr_factor


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
