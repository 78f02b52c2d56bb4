"""Triplet loss (FaceNet) with online mining inside a P×K batch.

On L2-normalised embeddings, max(0, d(a, p) − d(a, n) + margin), d the squared Euclidean
distance by default (FaceNet; `squared=false` gives the plain distance used in re-id):

- "batch-hard": per anchor, its farthest positive and nearest negative;
- "semi-hard":  per (anchor, positive), the nearest negative farther than the positive
                (d(a,p) < d(a,n)); when none exists, the farthest negative (as FaceNet's TF code);
- "batch-all":  every valid triplet, averaged over the non-zero terms.

A collapsed network maps everything to nearly one point: every term equals the margin. The
objective tracks the epoch's mean loss and mean positive/negative distances, and `end_epoch`
warns when the loss sits within `collapse_tolerance` of the margin while positives and negatives
are no further apart than a tenth of the margin.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaemb.core.errors import ConfigError
from metaemb.core.plugin.interfaces import Objective
from metaemb.core.train.objectives.softmax import check_point_batch, full_precision

MINING = ("batch-hard", "semi-hard", "batch-all")


def pairwise_distances(embeddings: Tensor, squared: bool = True) -> Tensor:
    """[N, N] distances between L2-normalised rows (squared: 2 − 2·cos)."""
    e = F.normalize(full_precision(embeddings), dim=1)
    d2 = (2.0 - 2.0 * (e @ e.T)).clamp(min=0.0)
    if squared:
        return d2
    # sqrt has an infinite slope at 0 (the diagonal, duplicates): keep it finite.
    return torch.sqrt(d2.clamp(min=1e-12))


class TripletObjective(Objective):
    """FaceNet triplet loss with batch-hard, semi-hard or batch-all mining (needs P×K batches)."""

    batch: ClassVar[str] = "pk"

    def __init__(
        self,
        margin: float = 0.2,
        mining: str = "semi-hard",
        squared: bool = True,
        collapse_tolerance: float = 0.02,
    ) -> None:
        super().__init__()
        if mining not in MINING:
            raise ConfigError(
                f"objective 'triplet': mining must be one of {', '.join(MINING)}; got '{mining}'."
            )
        if margin <= 0:
            raise ConfigError(f"objective 'triplet': margin must be positive, got {margin}.")
        if not 0 < collapse_tolerance < 1:
            raise ConfigError(
                "objective 'triplet': collapse_tolerance is a fraction of the margin, in (0, 1); "
                f"got {collapse_tolerance}."
            )
        self.margin = float(margin)
        self.mining = mining
        self.squared = squared
        self.collapse_tolerance = float(collapse_tolerance)
        self._warned_empty = False
        self._reset()

    def _reset(self) -> None:
        self._sums = {"loss": 0.0, "pos_dist": 0.0, "neg_dist": 0.0}
        self._batches = 0
        self._empty = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._reset()

    def __call__(self, embeddings: Tensor, labels: Tensor, classifier: nn.Module | None) -> Tensor:
        """Mean hinge max(0, d(a, p) − d(a, n) + margin) over the mined triplets of a batch of
        embeddings [N, dim] with int64 identity labels [N] (no classifier). A batch without a
        triplet (no two samples of one identity, or one identity only) gives a zero loss, warned
        about once; P×K batches (`batch = "pk"`) always have triplets."""
        labels = check_point_batch(self, "triplet", embeddings, labels)
        d = pairwise_distances(embeddings, self.squared)
        n = len(labels)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(n, dtype=torch.bool, device=d.device)
        pos, neg = same & ~eye, ~same
        if not pos.any() or not neg.any():
            if not self._warned_empty:
                self._warned_empty = True
                warnings.warn(
                    "objective 'triplet': a batch has no (anchor, positive, negative) triplet "
                    f"({'no two samples of one identity' if not pos.any() else 'one identity only'}"
                    "), so its loss is zero and nothing learns from it; give the loss P×K "
                    "batches (P identities × K samples each).",
                    stacklevel=2,
                )
            self._empty += 1
            self.stats = {"loss": 0.0, "active": 0.0}
            return embeddings.sum() * 0.0  # no triplet in this batch; keeps the graph connected
        loss, active = getattr(self, "_" + self.mining.replace("-", "_"))(d, pos, neg)
        with torch.no_grad():
            stats = {
                "loss": float(loss.detach()),
                "pos_dist": float(d[pos].mean()),
                "neg_dist": float(d[neg].mean()),
            }
            for k, v in stats.items():
                self._sums[k] += v
            self._batches += 1
            self.stats = {**stats, "active": active}
        return loss

    def _batch_hard(self, d: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, float]:
        ok = pos.any(1) & neg.any(1)  # anchors with a positive and a negative
        hardest_pos = d.masked_fill(~pos, -torch.inf).amax(1)
        hardest_neg = d.masked_fill(~neg, torch.inf).amin(1)
        terms = F.relu(hardest_pos - hardest_neg + self.margin)[ok]
        return terms.mean(), float((terms > 0).float().mean())

    def _semi_hard(self, d: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, float]:
        a, p = torch.nonzero(pos, as_tuple=True)
        d_ap = d[a, p]  # [T]
        d_an = d[a]  # [T, N]
        negs = neg[a]
        outside = negs & (d_an > d_ap[:, None])
        nearest_outside = d_an.masked_fill(~outside, torch.inf).amin(1)
        farthest = d_an.masked_fill(~negs, -torch.inf).amax(1)
        chosen = torch.where(outside.any(1), nearest_outside, farthest)
        keep = negs.any(1)
        terms = F.relu(d_ap - chosen + self.margin)[keep]
        return terms.mean(), float((terms > 0).float().mean())

    def _batch_all(self, d: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, float]:
        # [a, p, n] terms, valid where (a, p) positive and (a, n) negative.
        terms = F.relu(d[:, :, None] - d[:, None, :] + self.margin)
        valid = pos[:, :, None] & neg[:, None, :]
        terms = terms[valid]
        nonzero = terms > 1e-16
        active = float(nonzero.float().mean())
        if not nonzero.any():
            return terms.sum() * 0.0, active
        return terms.sum() / nonzero.sum(), active

    def end_epoch(self) -> list[str]:
        warnings = []
        if self._empty and not self._batches:
            warnings.append(
                f"triplet loss found no (anchor, positive, negative) triplet in any of "
                f"{self._empty} batches: each needs two samples of one identity and one of "
                "another. Train with P×K batches (train.sampler=pk) of K ≥ 2 samples per "
                "identity (sampler.k)."
            )
        elif self._batches:
            mean = {k: v / self._batches for k, v in self._sums.items()}
            stuck = abs(mean["loss"] - self.margin) <= self.collapse_tolerance * self.margin
            close = abs(mean["neg_dist"] - mean["pos_dist"]) <= 0.1 * self.margin
            if stuck and close:
                warnings.append(
                    f"triplet loss is stuck at the margin ({mean['loss']:.4f} vs margin "
                    f"{self.margin}): the embeddings look collapsed (mean positive distance "
                    f"{mean['pos_dist']:.4f}, mean negative distance {mean['neg_dist']:.4f}). "
                    "Try a lower learning rate, mining='semi-hard', or a softmax/margin warm start."
                )
        self._reset()
        return warnings
