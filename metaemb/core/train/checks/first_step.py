"""When the first training step fails although the first-batch checks passed: name the
component to blame (one that fails only in training mode, or else the objective)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metaemb.core.config import Config
from metaemb.core.errors import first_line
from metaemb.core.train.checks.naming import component, describe_value


def train_mode_failure(model: Any, config: Config, x: Tensor, lengths: Tensor | None) -> str | None:
    """The first-batch checks run the network in eval mode; when the first training step then
    fails, run it stage by stage in training mode to name a features, backbone or head that
    fails or changes shape only there (the run is stopping, so moved statistics do not
    matter). None when the network is not to blame."""
    stage = "features"
    model.train()
    try:
        with torch.no_grad():
            f, flen = model.features(x, lengths)
            stage = "backbone"
            pooled = model.backbone(f, flen)
            dim = getattr(model.backbone, "feature_dim", None)
            sized = isinstance(pooled, Tensor) and isinstance(dim, int)
            if sized and (pooled.dim() != 2 or pooled.shape[1] != dim):
                return (
                    f"{component(config, 'backbone')} returned {describe_value(pooled)} in training "
                    f"mode, [batch, {dim}] (its feature_dim) in eval mode; it must return the "
                    "same shape in both (check `if self.training` branches)"
                )
            stage = "head"
            model.head(pooled)
    except Exception as exc:
        return (
            f"{component(config, stage)} failed in training mode (it passed in eval mode): "
            f"{type(exc).__name__}: {first_line(exc)}"
        )
    return None


def first_step_failure(config: Config, exc: BaseException) -> str:
    """The message for a first training step that raised although features, backbone, head and
    augmentations passed their checks: what is left is the objective and its classifier."""
    return (
        f"the first training step failed in {component(config, 'objective')} (its loss or its "
        f"classifier; the network's output passed its checks): {type(exc).__name__}: {exc}"
    )
