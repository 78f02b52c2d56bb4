"""Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", InsightFace).

A margin softmax (ArcFace or CosFace) whose logits, each step, cover only a sampled fraction of
the class centres: every class present in the batch plus random others, `sample_rate` of all
classes in total. The logits matrix and its softmax — the part that grows as batch × classes and
dominates memory and time at hundreds of thousands of identities — shrink by that fraction;
the class-centre matrix itself stays whole (one `NormalisedClassifier`, the same checkpoint key
as arcface/cosface). At `sample_rate` 1.0 it is exactly the full margin softmax (tested).

Under torchrun with W ranks the engine calls `distribute`, and the centres are sharded as in
InsightFace's model-parallel Partial FC (core/train/shard.py): rank r holds only its C/W
centres, the global batch's embeddings and labels are all-gathered, each rank samples from its
own shard (the batch classes that fall in it plus random others, `sample_rate` of the shard)
and the cross-entropy is taken across the shards, so the loss equals the one-process loss over
the global batch (tested with two gloo ranks). One process, or W = 1, is unchanged.
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
from metaemb.core.train.objectives.softmax import (
    check_point_batch,
    full_precision,
    require_classifier,
)
from metaemb.core.train.shard import ShardedCentres, gather_batch, sharded_cross_entropy


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
        self.rank, self.world_size = 0, 1
        self.generator: torch.Generator | None = None
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

    def distribute(self, rank: int, world_size: int) -> None:
        """Shard the class centres over `world_size` DDP ranks (the engine calls this under
        torchrun, before `build_classifier`)."""
        self.rank, self.world_size = rank, world_size
        # negatives and the shard's initial centres differ between ranks, not between runs
        self.generator = torch.Generator().manual_seed(
            (torch.initial_seed() + 1_000_003 * rank) % 2**63
        )

    def build_classifier(self, dim: int, num_classes: int) -> nn.Module:
        world = self.world_size
        if world <= 1:
            return NormalisedClassifier(dim, num_classes)
        if num_classes < world:
            raise ConfigError(
                f"objective 'partial-fc': {num_classes} classes cannot be sharded over {world} "
                "ranks; train on fewer ranks or with another objective (e.g. arcface)."
            )
        return ShardedCentres(dim, num_classes, self.rank, world, self.generator)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.margin_objective.set_epoch(epoch)

    def __call__(self, embeddings: Tensor, labels: Tensor, classifier: nn.Module | None) -> Tensor:
        """The margin loss over the batch's classes and a sample of the others, for embeddings
        [N, dim] and int64 class indices [N]."""
        labels = check_point_batch(self, self.name, embeddings, labels)
        if isinstance(classifier, ShardedCentres):
            return self._sharded(embeddings, labels, classifier)
        weight = require_classifier(classifier, self.name, embeddings).weight
        check_point_batch(self, self.name, embeddings, labels, weight.shape[0])
        index, local = sample_classes(labels, weight.shape[0], self.sample_rate)
        loss = self.margin_objective(embeddings, local, _SampledCentres(weight, index))  # type: ignore[arg-type]
        self.stats = {**self.margin_objective.stats, "sampled_classes": float(index.numel())}
        return loss

    def _sharded(self, embeddings: Tensor, labels: Tensor, centres: ShardedCentres) -> Tensor:
        """The margin softmax of the global batch over every rank's sampled centres."""
        x, y = gather_batch(full_precision(embeddings), labels)
        local = y - centres.start
        mine = (local >= 0) & (local < centres.weight.shape[0])
        index, columns = sample_classes(
            local[mine], centres.weight.shape[0], self.sample_rate, self.generator
        )
        target = torch.full_like(y, -1)
        target[mine] = columns
        cos = _SampledCentres(centres.weight, index)(x)
        rows = mine.nonzero().squeeze(1)
        cos_y = cos[rows, columns]
        m = self.margin_objective.current_margin
        adjusted = cos.index_put((rows, columns), self.margin_objective.target_logit(cos_y, m))
        loss = sharded_cross_entropy(self.margin_objective.scale * adjusted, target)
        with torch.no_grad():
            stats = torch.zeros(2, y.shape[0], dtype=cos.dtype, device=cos.device)
            stats[0, rows] = cos_y.detach()
            stats[1] = cos.detach().max(1).values
            torch.distributed.all_reduce(stats[0])
            torch.distributed.all_reduce(stats[1], op=torch.distributed.ReduceOp.MAX)
            self.stats = {
                "loss": float(loss.detach()),
                "accuracy": float((stats[0] >= stats[1]).float().mean()),
                "margin": m,
                "cos_target": float(stats[0].mean()),
                "sampled_classes": float(index.numel()),
            }
        return loss
