"""Softmax cross-entropy over the training identities (optional label smoothing).

The class weights live in a `LinearClassifier` built by `build_classifier`, so the engine can give
them their own parameter group and checkpoint key and drop them from exported models.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaemb.core.errors import ConfigError
from metaemb.core.plugin.interfaces import Objective


class LinearClassifier(nn.Module):
    """Embedding → class logits (an affine layer), the training-only head of softmax training."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


def full_precision(x: Tensor) -> Tensor:
    """Losses are computed in float32 at least (half precision under AMP loses the margins)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def require_classifier(classifier: nn.Module | None, name: str) -> nn.Module:
    """The classifier module an objective built; a clear error when the engine passed none."""
    if classifier is None:
        raise ConfigError(
            f"objective '{name}' needs its classifier module (from build_classifier); got None."
        )
    return classifier


class SoftmaxObjective(Objective):
    """Cross-entropy over training identities; `label_smoothing` in [0, 1) (0.1 is a common value)."""

    batch: ClassVar[str] = "random"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(
                f"objective 'softmax': label_smoothing must be in [0, 1), got {label_smoothing}."
            )
        self.label_smoothing = float(label_smoothing)

    def build_classifier(self, dim: int, num_classes: int) -> nn.Module:
        return LinearClassifier(dim, num_classes)

    def __call__(self, embeddings: Tensor, labels: Tensor, classifier: nn.Module | None) -> Tensor:
        logits = require_classifier(classifier, "softmax")(embeddings)
        loss = F.cross_entropy(full_precision(logits), labels, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            self.stats = {
                "loss": float(loss.detach()),
                "accuracy": float((logits.argmax(1) == labels).float().mean()),
            }
        return loss
