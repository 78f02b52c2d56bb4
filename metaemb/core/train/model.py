"""The embedding network every modality trains: Features → Backbone → Head (+ a training step)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metaemb.core.plugin.interfaces import Backbone, Features, Head, Objective


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
        """Embeddings (a tensor [N, dim], or a GME) of a batch as the run's data pipeline
        prepares it: each sample through the frontend and the features' `prepare`, then
        collated; `lengths` [N] for padded sequences. Samples prepared otherwise (another size
        or scale) give other embeddings, without error: use `LoadedRun.embed` or
        `embed_inputs` for files."""
        if self.training:
            return self.head(self.pooled(x, lengths))
        x, lengths = self.features(x, lengths)
        try:
            views = self.features.test_views(x)
        except Exception as exc:  # a plugin's views: named as such, not as "the network"
            from metaemb.core.errors import PluginError
            from metaemb.core.plugin.components import described

            raise PluginError(
                f"{described(self.features, 'features')}: test_views failed on a batch of "
                f"shape {tuple(x.shape)}: {type(exc).__name__}: {exc}"
            ) from exc
        plain = len(views) == 1 and views[0] is x
        if not (plain or torch.jit.is_tracing()) and any(  # one embedding per sample
            getattr(v, "shape", None) != x.shape for v in views
        ):
            from metaemb.core.errors import PluginError
            from metaemb.core.plugin.components import described

            shapes = ", ".join(str(tuple(getattr(v, "shape", ()))) for v in views)
            raise PluginError(
                f"{described(self.features, 'features')}: test_views gave views of shapes "
                f"{shapes} for an input of {tuple(x.shape)}; each view keeps the input's shape "
                "(the same samples, in order), so that they average sample by sample."
            )
        outs = [self.head(self.backbone(v, lengths)) for v in views]
        return outs[0] if len(outs) == 1 else average_views(outs)


def average_views(outs: list[Any]) -> Any:
    """The embedding of several views of one sample: the mean of point embeddings (the sum's
    direction, as the field's flip test takes it), or of a GME's natural parameters (the views
    are one observation, not independent evidence: their sum would count it twice)."""
    if isinstance(outs[0], Tensor):
        return torch.stack(outs).mean(0)
    kind = type(outs[0])
    return kind(torch.stack([o.a for o in outs]).mean(0), torch.stack([o.b for o in outs]).mean(0))


class Teacher(nn.Module):
    """A frozen trained model (and, for logit distillation, its classifier) run on each batch."""

    def __init__(self, model: EmbeddingModel, classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.classifier = classifier.eval().requires_grad_(False) if classifier else None

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # always in inference mode

    @torch.no_grad()
    def forward(self, x: Tensor, lengths: Tensor | None, logits: bool) -> Tensor:
        out = self.model(x, lengths)
        return self.classifier(out) if logits and self.classifier is not None else out


class TrainStep(nn.Module):
    """Model + class-weight module in one module, so DDP synchronises both; returns the loss."""

    def __init__(
        self,
        model: EmbeddingModel,
        classifier: nn.Module | None,
        objective: Objective,
        teacher: Teacher | None = None,
        augment: nn.Module | None = None,
    ):
        super().__init__()
        self.model = model
        self.augment = augment  # Augmenter: acts only in training mode, on the training device
        self.classifier = classifier if classifier is not None else nn.Identity()
        self.has_classifier = classifier is not None
        self.objective = objective
        self.teacher = teacher

    def forward(self, x: Tensor, lengths: Tensor | None, labels: Tensor) -> Tensor:
        if self.augment is not None and self.training:
            x, lengths, labels = self.augment.input(x, lengths, labels)
        if self.teacher is not None:
            logits = self.objective.teacher_kind() == "logits"
            self.objective.teacher_outputs = self.teacher(x, lengths, logits)
        if self.augment is not None and self.training:
            feats, flen = self.model.features(x, lengths)
            feats, flen, labels = self.augment.features(feats, flen, labels)
            out = self.model.head(self.model.backbone(feats, flen))
        else:
            out = self.model(x, lengths)
        return self.objective(out, labels, self.classifier if self.has_classifier else None)
