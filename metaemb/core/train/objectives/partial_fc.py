"""Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", InsightFace).

A margin softmax (ArcFace or CosFace) whose logits, each step, cover only a sampled fraction of
the class centres: every class present in the batch plus random others, `sample_rate` of all
classes in total. The logits matrix and its softmax — the part that grows as batch × classes and
dominates memory and time at hundreds of thousands of identities — shrink by that fraction;
the class-centre matrix itself stays whole (one `NormalisedClassifier`, the same checkpoint key
as arcface/cosface). At `sample_rate` 1.0 it is exactly the full margin softmax (tested).

Under DDP each rank samples its own negatives and the gradients of the shared centre matrix
are summed as usual; InsightFace's further step — sharding the centres across ranks with an
all-gather of the embeddings — is not done here (see docs/benchmarks.md for 1 M-class memory).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaemb.core.errors import ConfigError
from metaemb.core.plugin.interfaces import Objective
from metaemb.core.train.objectives.margin import (
    ArcFaceObjective,
    CosFaceObjective,
    NormalisedClassifier,
)
from metaemb.core.train.objectives.softmax import full_precision, require_classifier


class _SampledCentres:
    """Cosines to the sampled class centres only (stands in for the classifier in the margin)."""

    def __init__(self, weight: Tensor, index: Tensor) -> None:
        self.weight, self.index = weight, index

    def __call__(self, x: Tensor) -> Tensor:
        w = F.normalize(full_precision(self.weight[self.index]), dim=1)
        return F.normalize(full_precision(x), dim=1) @ w.T


def sample_classes(
    labels: Tensor, num_classes: int, rate: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """(sorted class indices kept, batch labels re-indexed into them): every class of the batch
    plus uniformly random others, max(ceil(rate · C), #batch classes) in all."""
    positive = torch.unique(labels)
    k = max(math.ceil(rate * num_classes), positive.numel())
    if k >= num_classes:
        return torch.arange(num_classes, device=labels.device), labels
    score = torch.rand(num_classes, generator=generator, device="cpu").to(labels.device)
    score[positive] = 2.0  # positives first
    index = torch.topk(score, k, sorted=False).indices.sort().values
    return index, torch.searchsorted(index, labels)


class PartialFCObjective(Objective):
    """Margin softmax over a sampled fraction of the class centres (ArcFace or CosFace margin)."""

    batch: ClassVar[str] = "random"
    name: ClassVar[str] = "partial-fc"

    def __init__(
        self,
        sample_rate: float = 0.1,
        margin_type: str = "arcface",
        scale: float = 30.0,
        margin: float = 0.2,
        margin_warmup_epochs: int = 0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(
                f"objective 'partial-fc': sample_rate must be in (0, 1], got {sample_rate}."
            )
        self.sample_rate = float(sample_rate)
        if margin_type == "arcface":
            self.margin_objective: ArcFaceObjective | CosFaceObjective = ArcFaceObjective(
                scale, margin, margin_warmup_epochs, easy_margin
            )
        elif margin_type == "cosface":
            self.margin_objective = CosFaceObjective(scale, margin, margin_warmup_epochs)
        else:
            raise ConfigError(
                f"objective 'partial-fc': margin_type must be 'arcface' or 'cosface', got "
                f"{margin_type!r}."
            )

    def build_classifier(self, dim: int, num_classes: int) -> nn.Module:
        return NormalisedClassifier(dim, num_classes)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.margin_objective.set_epoch(epoch)

    def __call__(self, embeddings: Tensor, labels: Tensor, classifier: nn.Module | None) -> Tensor:
        weight = require_classifier(classifier, self.name).weight
        index, local = sample_classes(labels, weight.shape[0], self.sample_rate)
        loss = self.margin_objective(embeddings, local, _SampledCentres(weight, index))  # type: ignore[arg-type]
        self.stats = {**self.margin_objective.stats, "sampled_classes": float(index.numel())}
        return loss
