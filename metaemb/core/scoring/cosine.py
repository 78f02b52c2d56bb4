"""The cosine back-end: cosine similarity, optionally after the training mean, within-class
covariance normalisation (WCCN) and a label-free adaptation to the data being scored."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError, MetaembError
from metaemb.core.scoring.plda import DTYPE, fit_wccn
from metaemb.core.scoring.scorers import Groups, PointScorer, as_embeddings, group_means


class CosineScorer(PointScorer):
    """Cosine similarity, optionally after centring and within-class normalisation.

    - `subtract_mean`: centre on the training-set mean embedding (fitted).
    - `wccn`: whiten by the training within-class covariance (`fit_wccn`, shrunk by
      `wccn_shrink`), so directions that vary within an identity count less (fitted).
    - `adapt_mean`: centre on the mean of the data being scored (`adapt`), a label-free
      adaptation to a new domain: a recording channel or population moves every embedding
      the same way, and that shift is not identity. The mean is a MAP estimate, pulled towards
      the training mean (or zero) by `adapt_relevance` pseudo-samples, so scoring a handful of
      files stays close to the unadapted scorer.
    - `adapt_scale`: then divide each dimension by its spread over the data being scored (a
      MAP estimate around the training spread, fitted), as one standardises features per
      domain: a dimension the new domain stretches stops dominating the cosine.
    """

    # Options added later, at the values that reproduce the plain cosine of older runs.
    hash_neutral: ClassVar[dict[str, Any]] = {
        "wccn": False,
        "wccn_shrink": 0.1,
        "adapt_mean": False,
        "adapt_scale": False,
        "adapt_relevance": 20.0,
    }

    def __init__(
        self,
        subtract_mean: bool = False,
        wccn: bool = False,
        wccn_shrink: float = 0.1,
        adapt_mean: bool = False,
        adapt_scale: bool = False,
        adapt_relevance: float = 20.0,
    ) -> None:
        if adapt_relevance < 0:
            raise ConfigError(
                f"scorer 'cosine': adapt_relevance must be ≥ 0, got {adapt_relevance}"
            )
        if not 0.0 <= wccn_shrink <= 1.0:
            raise ConfigError(f"scorer 'cosine': wccn_shrink must be in [0, 1], got {wccn_shrink}")
        self.subtract_mean, self.wccn, self.wccn_shrink = subtract_mean, wccn, wccn_shrink
        self.adapt_mean, self.adapt_scale = adapt_mean, adapt_scale
        self.adapt_relevance = adapt_relevance
        self.requires_fit = subtract_mean or wccn or adapt_scale
        self.mean: Tensor | None = None  # training mean
        self.transform: Tensor | None = None  # WCCN
        self.variance: Tensor | None = None  # training spread per dimension (after WCCN)
        self.domain_mean: Tensor | None = None  # set by adapt()
        self.domain_scale: Tensor | None = None  # set by adapt()

    @property
    def plain(self) -> bool:
        """True when this is bare cosine (fast paths may use normalised dot products)."""
        return not (self.subtract_mean or self.wccn or self.adapt_mean or self.adapt_scale)

    @property
    def fitted(self) -> bool:
        return (
            (not self.subtract_mean or self.mean is not None)
            and (not self.wccn or self.transform is not None)
            and (not self.adapt_scale or self.variance is not None)
        )

    def fit(self, embeddings: Any, labels: Any = None) -> None:
        x = as_embeddings(embeddings, "embeddings").to(DTYPE)
        self.mean = x.mean(0)
        if self.wccn:
            if labels is None:
                raise MetaembError("scorer 'cosine' with wccn = true needs labels to fit")
            self.transform = fit_wccn(x, labels, self.wccn_shrink)
        if self.adapt_scale:
            self.variance = self._whiten(x - self.mean).var(0)

    def adapt(self, embeddings: Any) -> bool:
        if not (self.adapt_mean or self.adapt_scale):
            return False
        x = as_embeddings(embeddings, "embeddings").to(DTYPE)
        if self.mean is not None and self.mean.shape[0] != x.shape[1]:
            raise DataError(
                f"cannot adapt: embeddings have {x.shape[1]} dimensions, the scorer was fitted "
                f"on {self.mean.shape[0]}"
            )
        n, r = x.shape[0], self.adapt_relevance
        self.domain_mean = self.domain_scale = None
        if self.adapt_mean:
            prior = self.mean if self.subtract_mean and self.mean is not None else None
            total = x.sum(0) + (r * prior if prior is not None else 0.0)
            self.domain_mean = total / max(n + r, 1e-12)
        if self.adapt_scale:
            assert self.variance is not None
            z = self._whiten(x - self._centre(x.dtype))
            var = ((z * z).sum(0) + r * self.variance) / max(n + r, 1e-12)
            self.domain_scale = var.clamp_min(1e-12 * float(var.max().clamp_min(1e-30))).sqrt()
        return True

    def _centre(self, dtype: torch.dtype) -> Tensor | float:
        """What embeddings are centred on: the adapted mean, else the training mean, else 0."""
        centre = self.domain_mean
        if centre is None and self.subtract_mean:
            centre = self.mean
        return 0.0 if centre is None else centre.to(dtype)

    def _whiten(self, x: Tensor) -> Tensor:
        if not self.wccn:
            return x
        assert self.transform is not None
        return x @ self.transform.to(x.dtype)

    def prepare(self, x: Tensor) -> Tensor:
        x = self._whiten(x - self._centre(x.dtype))
        if self.domain_scale is not None:
            x = x / self.domain_scale.to(x.dtype)
        return torch.nn.functional.normalize(x, dim=1)

    def pool(self, prepared: Tensor, groups: Groups) -> tuple[Tensor, Tensor]:
        means, counts = group_means(prepared, groups)
        return torch.nn.functional.normalize(means, dim=1), counts

    def block(self, models: Tensor, n: int, test: Tensor) -> Tensor:
        return models @ test.T

    def pairs(self, models: Tensor, counts: Tensor, test: Tensor) -> Tensor:
        return (models * test).sum(1)

    def state_dict(self) -> dict[str, Tensor]:
        state = {"mean": self.mean} if self.mean is not None else {}
        if self.transform is not None:
            state["wccn"] = self.transform
        if self.variance is not None:
            state["variance"] = self.variance
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        # An empty state is an unfitted scorer's (what state_dict() gives before fit).
        self.mean = state["mean"].to(DTYPE) if "mean" in state else None
        self.transform = state["wccn"].to(DTYPE) if "wccn" in state else None
        self.variance = state["variance"].to(DTYPE) if "variance" in state else None
