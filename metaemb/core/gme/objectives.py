"""Training objectives for Gaussian meta-embeddings (docs/reference/gme.md).

All three score GMEs with closed-form LLRs, so what they train are calibrated likelihood ratios:
- "gme-bxe": pairwise binary cross-entropy over every pair of a P×K batch (a proper scoring rule);
- "gme-pseudolikelihood": each recording's label given all the others' (CRP prior, "new" term);
- "gme-softmax": multiclass cross-entropy against trainable class GMEs (every class logit kept).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.gme.algebra import GME, differentiable_llr_matrix, llr, pool_by_index
from metaemb.core.plugin.interfaces import Objective


def bxe_bits(llrs: Tensor, is_target: Tensor, target_prior: float | None = None) -> Tensor:
    """Binary cross-entropy of LLRs in bits, prior-weighted (docs/reference/gme.md).

    π defaults to the empirical target fraction; π = 0.5 gives Cllr. All-zero LLRs score the
    prior entropy; a perfect, confident system scores 0.
    """
    is_target = is_target.bool()
    tar, non = llrs[is_target], llrs[~is_target]
    if len(tar) == 0 or len(non) == 0:
        raise DataError(
            f"binary cross-entropy needs both target and non-target pairs; got {len(tar)} target "
            f"and {len(non)} non-target pairs (use a P×K batch with K ≥ 2 and P ≥ 2)"
        )
    pi = len(tar) / (len(tar) + len(non)) if target_prior is None else float(target_prior)
    if not 0.0 < pi < 1.0:
        raise ConfigError(f"target_prior must lie in (0, 1), got {pi}")
    plo = math.log(pi / (1 - pi))
    loss = pi * F.softplus(-plo - tar).mean() + (1 - pi) * F.softplus(plo + non).mean()
    return loss / math.log(2)


def _as_float(g: GME) -> GME:
    """Losses are computed in float32 at least (bf16 autocast would ruin the LLRs)."""
    return g if g.dtype in (torch.float32, torch.float64) else g.to(torch.float32)


def _require_gme(embeddings: object, name: str) -> GME:
    if not isinstance(embeddings, GME):
        raise ConfigError(
            f"objective '{name}' needs Gaussian meta-embeddings; set model.head=gme "
            f"(got {type(embeddings).__name__})."
        )
    return _as_float(embeddings)


def _pair_matrix(g: GME) -> Tensor:
    with torch.autocast(g.device.type, enabled=False):
        return differentiable_llr_matrix(g, g)


class GMEBinaryCrossEntropy(Objective):
    """Pairwise binary cross-entropy (bits) over all pairs i < j of the batch.

    `target_prior` π weights target against non-target pairs; 0 (default) means the batch's
    fraction of same-identity pairs (docs/reference/gme.md), 0.5 makes the loss the batch's Cllr.
    """

    batch: ClassVar[str] = "pk"
    needs: ClassVar[str] = "gme"

    def __init__(self, target_prior: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= target_prior < 1.0:
            raise ConfigError(
                f"objective 'gme-bxe': target_prior must be 0 (empirical) or in (0, 1), got "
                f"{target_prior}"
            )
        self.target_prior = float(target_prior) or None

    def __call__(self, embeddings: GME, labels: Tensor, classifier: nn.Module | None) -> Tensor:
        g = _require_gme(embeddings, "gme-bxe")
        scores = _pair_matrix(g)
        i, j = torch.triu_indices(len(g), len(g), offset=1, device=scores.device)
        llrs = scores[i, j]
        target = labels[i] == labels[j]
        loss = bxe_bits(llrs, target, self.target_prior)
        with torch.no_grad():
            self.stats = {
                "loss": float(loss.detach()),
                "llr_target": float(llrs[target].mean()),
                "llr_nontarget": float(llrs[~target].mean()),
            }
        return loss


class GMEPseudoLikelihood(Objective):
    """Negative log pseudolikelihood: for each recording j, −log P(label_j | the other labels,
    all GMEs), a softmax over the batch's identities (each pooled without j) plus "a new identity"
    (LLR 0), weighted by a Chinese-restaurant-process prior with `concentration` α."""

    batch: ClassVar[str] = "pk"
    needs: ClassVar[str] = "gme"

    def __init__(self, concentration: float = 1.0) -> None:
        super().__init__()
        if concentration <= 0:
            raise ConfigError(
                f"objective 'gme-pseudolikelihood': concentration must be > 0, got {concentration}"
            )
        self.concentration = float(concentration)

    def logits(self, g: GME, labels: Tensor) -> tuple[Tensor, Tensor]:
        """[n, m + 1] unnormalised log posteriors (last column "new") and each row's answer."""
        _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        m = len(counts)
        pools = pool_by_index(g, inverse, m)
        with torch.autocast(g.device.type, enabled=False):
            scores = differentiable_llr_matrix(g, pools)  # [n, m], own pool still includes j
            own = llr(g, pools[inverse] - g)  # leave-one-out: j against the rest of its identity
        scores = scores.scatter(1, inverse[:, None], own[:, None])
        others = counts[None, :] - F.one_hot(inverse, m)  # CRP table sizes without j
        logits = (scores + others.clamp(min=1).to(scores.dtype).log()).masked_fill(
            others == 0, float("-inf")
        )
        new = scores.new_full((len(g), 1), math.log(self.concentration))
        target = torch.where(counts[inverse] > 1, inverse, torch.full_like(inverse, m))
        return torch.cat([logits, new], 1), target

    def __call__(self, embeddings: GME, labels: Tensor, classifier: nn.Module | None) -> Tensor:
        g = _require_gme(embeddings, "gme-pseudolikelihood")
        logits, target = self.logits(g, labels)
        loss = F.cross_entropy(logits, target)
        with torch.no_grad():
            self.stats = {
                "loss": float(loss.detach()),
                "accuracy": float((logits.argmax(1) == target).float().mean()),
            }
        return loss


class ClassGMEs(nn.Module):
    """Trainable meta-embeddings of the training identities: b = softplus(raw), a = b ⊙ mean.

    They start at random means from the prior N(0, I) with precision `init_precision` (a class
    GME pools many recordings, so its precision is larger than one recording's).
    """

    def __init__(self, dim: int, num_classes: int, init_precision: float = 10.0) -> None:
        super().__init__()
        if init_precision <= 0 or num_classes < 2 or dim < 1:
            raise ConfigError(
                f"class GMEs need dim ≥ 1, num_classes ≥ 2 and init_precision > 0; got dim={dim}, "
                f"num_classes={num_classes}, init_precision={init_precision}"
            )
        self.mean = nn.Parameter(torch.randn(num_classes, dim))
        raw = init_precision + math.log(-math.expm1(-init_precision))  # softplus⁻¹
        self.raw_precision = nn.Parameter(torch.full((num_classes, dim), raw))

    def forward(self) -> GME:
        b = F.softplus(self.raw_precision)
        return GME(b * self.mean, b)


class GMESoftmax(Objective):
    """Cross-entropy over training identities with logits LLR(f_j, class_i) against trainable
    class GMEs (uniform class prior). Every class logit stays in the softmax and the class GMEs
    are trained — docs/reference/gme.md warns about the prototype that did neither."""

    batch: ClassVar[str] = "random"
    needs: ClassVar[str] = "gme"

    def __init__(self, init_precision: float = 10.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(
                f"objective 'gme-softmax': label_smoothing must be in [0, 1), got {label_smoothing}"
            )
        self.init_precision = float(init_precision)
        self.label_smoothing = float(label_smoothing)

    def build_classifier(self, dim: int, num_classes: int) -> nn.Module:
        return ClassGMEs(dim, num_classes, self.init_precision)

    def __call__(self, embeddings: GME, labels: Tensor, classifier: nn.Module | None) -> Tensor:
        g = _require_gme(embeddings, "gme-softmax")
        if not isinstance(classifier, ClassGMEs):
            raise ConfigError(
                "objective 'gme-softmax' needs the ClassGMEs module from its build_classifier; "
                f"got {type(classifier).__name__}"
            )
        with torch.autocast(g.device.type, enabled=False):
            logits = differentiable_llr_matrix(g, _as_float(classifier()))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            target = logits.gather(1, labels[:, None])
            self.stats = {
                "loss": float(loss.detach()),
                "accuracy": float((logits.argmax(1) == labels).float().mean()),
                "llr_target": float(target.mean()),
            }
        return loss
