"""Margin softmax heads: additive angular margin (ArcFace) and additive cosine margin (CosFace).

Logits are scaled cosines between the L2-normalised embedding and L2-normalised class weights
(a `NormalisedClassifier`, its own module). The target class gets a margin that makes the
training task harder than plain softmax, which tightens identities on the unit sphere. Defaults
(s=30, m=0.2 for both) are the speaker recipes' (AAM- and AM-softmax) and suit small face models
trained from scratch; the face papers' s=64, m=0.5 (ArcFace) and m=0.35 (CosFace) are options.
Near θ = 90°, where training starts, cos(θ + m) ≈ cos θ − m, so the two defaults are equally
hard; with m=0.35 CosFace trained 4 epochs on the demo data reached only 26.2 % (face) and
24.6 % (speaker) EER against baselines of 40.7 % and 47.8 %, where ArcFace with m=0.2 reached
19.5 % and 23.1 %. `margin_warmup_epochs` ramps the margin linearly from 0 (epoch 0) to its
full value (epoch `margin_warmup_epochs`), which helps small models start learning.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaemb.core.errors import ConfigError
from metaemb.core.plugin.interfaces import Objective
from metaemb.core.train.objectives.softmax import (
    check_point_batch,
    full_precision,
    require_classifier,
)


class NormalisedClassifier(nn.Module):
    """Embedding → cosine similarity to each class centre, in [-1, 1]."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        w = F.normalize(full_precision(self.weight), dim=1)
        return F.normalize(full_precision(x), dim=1) @ w.T


class _MarginObjective(Objective):
    """Shared options and bookkeeping of the margin heads; subclasses set the target logit."""

    batch: ClassVar[str] = "random"
    name: ClassVar[str] = "margin"

    def __init__(self, scale: float, margin: float, margin_warmup_epochs: int) -> None:
        super().__init__()
        if scale <= 0:
            raise ConfigError(f"objective '{self.name}': scale must be positive, got {scale}.")
        if margin < 0:
            raise ConfigError(f"objective '{self.name}': margin must be >= 0, got {margin}.")
        if margin_warmup_epochs < 0:
            raise ConfigError(f"objective '{self.name}': margin_warmup_epochs must be >= 0.")
        self.scale = float(scale)
        self.margin = float(margin)
        self.margin_warmup_epochs = int(margin_warmup_epochs)

    @property
    def current_margin(self) -> float:
        """The margin in force this epoch (linear warm-up from 0)."""
        if self.margin_warmup_epochs <= 0:
            return self.margin
        return self.margin * min(1.0, self.epoch / self.margin_warmup_epochs)

    def build_classifier(self, dim: int, num_classes: int) -> nn.Module:
        return NormalisedClassifier(dim, num_classes)

    @abc.abstractmethod
    def target_logit(self, cos: Tensor, m: float) -> Tensor:
        """The target-class cosine after the margin `m`."""

    def __call__(self, embeddings: Tensor, labels: Tensor, classifier: nn.Module | None) -> Tensor:
        """Mean cross-entropy of the scaled cosines to the class centres, the target class's
        after the margin, for embeddings [N, dim] and int64 class indices [N]."""
        labels = check_point_batch(self, self.name, embeddings, labels)
        cos = require_classifier(classifier, self.name, embeddings)(embeddings)
        check_point_batch(self, self.name, embeddings, labels, cos.shape[1])
        m = self.current_margin
        cos_y = cos.gather(1, labels[:, None])
        adjusted = cos.scatter(1, labels[:, None], self.target_logit(cos_y, m))
        loss = F.cross_entropy(self.scale * adjusted, labels)
        with torch.no_grad():
            self.stats = {
                "loss": float(loss.detach()),
                "accuracy": float((cos.argmax(1) == labels).float().mean()),
                "margin": m,
                "cos_target": float(cos_y.mean()),
            }
        return loss


class ArcFaceObjective(_MarginObjective):
    """Additive angular margin (ArcFace): target logit s·cos(θ_y + m).

    Where θ_y + m would pass π, cos(θ + m) stops decreasing in θ; there the target logit is
    cos θ − m·sin m (the usual linear extension), or with `easy_margin` the margin applies only
    while cos θ > 0.
    """

    name: ClassVar[str] = "arcface"

    def __init__(
        self,
        scale: float = 30.0,
        margin: float = 0.2,
        margin_warmup_epochs: int = 0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(scale, margin, margin_warmup_epochs)
        if margin >= math.pi / 2:
            raise ConfigError(f"objective 'arcface': margin must be below π/2, got {margin}.")
        self.easy_margin = easy_margin

    def target_logit(self, cos: Tensor, m: float) -> Tensor:
        if m == 0:
            return cos
        # Clamp away from ±1: d/dx sqrt(1 − x²) is infinite there.
        sin = torch.sqrt((1.0 - cos * cos).clamp(min=1e-12))
        phi = cos * math.cos(m) - sin * math.sin(m)
        if self.easy_margin:
            return torch.where(cos > 0, phi, cos)
        return torch.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)


class CosFaceObjective(_MarginObjective):
    """Additive cosine margin (CosFace / AM-softmax): target logit s·(cos θ_y − m)."""

    name: ClassVar[str] = "cosface"

    def __init__(
        self, scale: float = 30.0, margin: float = 0.2, margin_warmup_epochs: int = 0
    ) -> None:
        super().__init__(scale, margin, margin_warmup_epochs)
        if margin >= 1:  # the papers use 0.2–0.35; a cosine difference of 1 is a right angle
            raise ConfigError(f"objective 'cosface': margin must be below 1, got {margin}.")

    def target_logit(self, cos: Tensor, m: float) -> Tensor:
        return cos - m
