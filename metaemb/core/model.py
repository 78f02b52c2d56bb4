"""The embedding network every modality trains: Features → Backbone → Head (+ a training step)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from metaemb.core.interfaces import Backbone, Features, Head, Objective


class EmbeddingModel(nn.Module):
    """Input batch → embedding (point [N, d]) or Gaussian meta-embedding. This is what is exported."""

    def __init__(self, features: Features, backbone: Backbone, head: Head) -> None:
        super().__init__()
        self.features = features
        self.backbone = backbone
        self.head = head

    def pooled(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Backbone features before the head (used e.g. to initialise a GME head from PLDA)."""
        x, lengths = self.features(x, lengths)
        return self.backbone(x, lengths)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Any:
        return self.head(self.pooled(x, lengths))


class TrainStep(nn.Module):
    """Model + class-weight module in one module, so DDP synchronises both; returns the loss."""

    def __init__(self, model: EmbeddingModel, classifier: nn.Module | None, objective: Objective):
        super().__init__()
        self.model = model
        self.classifier = classifier if classifier is not None else nn.Identity()
        self.has_classifier = classifier is not None
        self.objective = objective

    def forward(self, x: Tensor, lengths: Tensor | None, labels: Tensor) -> Tensor:
        out = self.model(x, lengths)
        return self.objective(out, labels, self.classifier if self.has_classifier else None)
