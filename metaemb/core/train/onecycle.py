"""The one-cycle policy (Smith 2018; fastai's `fit_one_cycle`): `train.schedule = "onecycle"`.

The learning rate rises from lr/25 to lr along a half cosine over the warm-up (train.warmup_epochs,
or the first 25 % of training when that is 0), then falls along a half cosine to lr/(25·10⁴).
Momentum (SGD's momentum, AdamW's β₁) moves the other way: 0.95 → 0.85 while the LR rises, back
to 0.95 while it falls ("cosine momentum").
"""

from __future__ import annotations

import math
from typing import Any

import torch

DIV = 25.0  # initial LR = lr / DIV
FINAL_DIV = 1e4  # final LR = initial / FINAL_DIV
MOMENTUM = (0.95, 0.85)  # (at the ends, at the peak LR)
PCT_START = 0.25  # warm-up share when train.warmup_epochs is 0


def _phase(step: int, cfg: Any, steps_per_epoch: int) -> tuple[bool, float]:
    """(in the rising phase?, progress 0…1 within that phase)."""
    total = max(1, int(cfg.epochs * steps_per_epoch))
    warm = cfg.warmup_epochs * steps_per_epoch if cfg.warmup_epochs > 0 else PCT_START * total
    warm = min(max(1.0, warm), total - 1.0) if total > 1 else 1.0
    if step < warm:
        return True, step / warm
    return False, min(1.0, (step - warm) / max(1.0, total - warm))


def _cos(start: float, end: float, p: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))


def onecycle_factor(step: int, cfg: Any, steps_per_epoch: int) -> float:
    """LR multiplier of the peak LR at optimizer step `step` (0-based)."""
    rising, p = _phase(step, cfg, steps_per_epoch)
    if rising:
        return _cos(1.0 / DIV, 1.0, p)
    return _cos(1.0, 1.0 / (DIV * FINAL_DIV), p)


def onecycle_momentum(step: int, cfg: Any, steps_per_epoch: int) -> float:
    """Momentum (or β₁) at optimizer step `step`."""
    hi, lo = MOMENTUM
    rising, p = _phase(step, cfg, steps_per_epoch)
    return _cos(hi, lo, p) if rising else _cos(lo, hi, p)


class CosineMomentumLR(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR that also sets each scheduled group's momentum / β₁ by `onecycle_momentum`."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_lambdas: list, cfg: Any, spe: int):
        self._cfg, self._spe = cfg, spe  # before super().__init__, which takes the first step
        super().__init__(optimizer, lr_lambdas)

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        super().step(epoch)
        m = onecycle_momentum(self.last_epoch, self._cfg, self._spe)
        for g in self.optimizer.param_groups:
            if g.get("schedule") == "constant":
                continue
            if "betas" in g:
                g["betas"] = (m, g["betas"][1])
            elif "momentum" in g:
                g["momentum"] = m

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k not in ("_cfg", "_spe")}
