"""Softmax cross-entropy over the training identities (optional label smoothing).

The class weights live in a `LinearClassifier` built by `build_classifier`, so the engine can give
them their own parameter group and checkpoint key and drop them from exported models.
"""

from __future__ import annotations

from typing import Any, ClassVar

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


def require_classifier(
    classifier: nn.Module | None, name: str, embeddings: Tensor | None = None
) -> nn.Module:
    """The classifier module an objective built; a clear error when the engine passed none or
    (given the batch's `embeddings`) when it was built for another embedding size, where
    PyTorch would say only that two matrices cannot be multiplied."""
    if classifier is None:
        raise ConfigError(
            f"objective '{name}' needs its classifier module (from build_classifier); got None."
        )
    width = _input_width(classifier)
    if (
        embeddings is not None
        and embeddings.dim() == 2
        and width not in (None, embeddings.shape[1])
    ):
        raise ConfigError(
            f"objective '{name}': embeddings [N, {embeddings.shape[1]}] but its classifier was "
            f"built for dim {width} (build_classifier(dim, num_classes)); build it with the "
            "network's embedding size."
        )
    return classifier


def _input_width(classifier: nn.Module) -> int | None:
    """The embedding size a classifier was built for: its first layer's input (nn.Linear), or
    the second axis of its class-centre `weight` [C, dim]; None when it cannot tell."""
    weight = getattr(classifier, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 2:
        return int(weight.shape[1])
    for module in classifier.modules():
        if isinstance(module, nn.Linear):
            return int(module.in_features)
    return None


def check_point_batch(
    objective: Any, name: str, embeddings: Any, labels: Any, classes: int | None = None
) -> Tensor:
    """What a point objective is given, refused in words where a training loop of one's own
    would otherwise get a tensor error from deep inside PyTorch: embeddings [N, dim], integer
    labels [N] (returned as int64), and class indices below the classifier's `classes`.
    Messages name the objective as registered (a plugin's subclass by its own name), else as
    `name`."""
    who = getattr(objective, "_metaemb_component", None) or f"objective '{name}'"
    if not isinstance(embeddings, Tensor):
        raise ConfigError(
            f"{who} takes point embeddings [N, dim], got a "
            f"{type(embeddings).__name__} (GME heads train with gme-bxe, gme-softmax or "
            "gme-pseudolikelihood)."
        )
    integer = (
        isinstance(labels, Tensor)
        and not labels.is_floating_point()
        and not (labels.is_complex() or labels.dtype == torch.bool)
    )
    if not integer or labels.dim() != 1:
        got = (
            f"{labels.dtype} {list(labels.shape)}"
            if isinstance(labels, Tensor)
            else type(labels).__name__
        )
        raise ConfigError(
            f"{who}: labels must be an integer tensor [N] of class indices, got {got}."
        )
    if len(labels) != len(embeddings):
        raise ConfigError(f"{who}: {len(embeddings)} embeddings but {len(labels)} labels.")
    labels = labels.long()
    if classes is not None and len(labels):
        low, high = torch.stack(torch.aminmax(labels)).tolist()  # one device sync for both
        if low < 0 or high >= classes:
            raise ConfigError(
                f"{who}: labels must be class indices in [0, {classes}) (the classifier's "
                f"classes), got {low if low < 0 else high}."
            )
    return labels


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
        """Mean cross-entropy of the classifier's logits for embeddings [N, dim] and int64
        class indices [N]."""
        labels = check_point_batch(self, "softmax", embeddings, labels)
        logits = require_classifier(classifier, "softmax", embeddings)(embeddings)
        check_point_batch(self, "softmax", embeddings, labels, logits.shape[1])
        loss = F.cross_entropy(full_precision(logits), labels, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            self.stats = {
                "loss": float(loss.detach()),
                "accuracy": float((logits.argmax(1) == labels).float().mean()),
            }
        return loss
