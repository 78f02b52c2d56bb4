"""Score normalisation: s-norm and adaptive s-norm (AS-norm) of a base point scorer against a
cohort of training embeddings (docs/reference/speaker.md), chunked like every `PointScorer`."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.scoring.plda import DTYPE
from metaemb.core.scoring.scorers import (
    DEFAULT_BASE,
    Groups,
    PointScorer,
    as_embeddings,
    build_point_base,
    group_means,
)


def speaker_means(embeddings: Tensor, labels: Any) -> Tensor:
    """One mean embedding per identity (sorted label order)."""
    lab = torch.as_tensor(labels).long().reshape(-1)
    if lab.numel() != embeddings.shape[0]:
        raise DataError(f"got {lab.numel()} labels for {embeddings.shape[0]} embeddings")
    _, inverse = torch.unique(lab, return_inverse=True)
    return group_means(
        embeddings,
        [torch.nonzero(inverse == k).squeeze(1).tolist() for k in range(int(inverse.max()) + 1)],
    )[0]


class ScoreNorm(PointScorer):
    """Symmetric score normalisation against a cohort of training embeddings.

    s' = ½[(s − μ_e)/σ_e + (s − μ_t)/σ_t] where μ, σ are the mean and (unbiased) standard deviation
    of each side's scores against the cohort; with top_n > 0 only each side's top_n highest cohort
    scores count (adaptive s-norm). The prepared representation carries the side's (μ, σ) in its
    last two columns, so cohort statistics are computed once per sample, not once per block.
    """

    requires_fit = True
    stat_chunk = 1024
    parts: ClassVar[dict[str, str]] = {"base": "scorers"}  # [scorer.base] name = "plda", …

    def __init__(
        self, base: dict[str, Any] | str = DEFAULT_BASE, top_n: int = 0, speaker_mean: bool = False
    ) -> None:
        if top_n < 0 or top_n == 1:
            raise ConfigError(f"top_n must be 0 (whole cohort) or ≥ 2, got {top_n}")
        self.base = build_point_base(base, type(self).__name__.lower())
        self.count_dependent = self.base.count_dependent
        self.top_n = top_n
        self.speaker_mean = speaker_mean
        self.cohort: Tensor | None = None
        self._cohort_prep: Tensor | None = None

    @property
    def fitted(self) -> bool:
        return self.cohort is not None and self.base.fitted

    def fit(self, embeddings: Any, labels: Any) -> None:
        x = as_embeddings(embeddings, "embeddings")
        if self.base.requires_fit:
            self.base.fit(x, labels)
        self._set_cohort(speaker_means(x, labels) if self.speaker_mean else x)

    def adapt(self, embeddings: Any) -> bool:
        adapted = self.base.adapt(embeddings)
        if adapted and self.cohort is not None:  # the cohort is seen through the adapted base
            self._cohort_prep = self.base.prepare(self.cohort)
        return adapted

    def check_fit_data(self, labels: Tensor) -> None:
        self.base.check_fit_data(labels)
        n = int(torch.as_tensor(labels).unique().numel()) if self.speaker_mean else len(labels)
        self._check_cohort_size(n)

    def _check_cohort_size(self, n: int) -> None:
        if self.top_n > n >= 2 and not getattr(self, "_top_noted", False):
            self._top_noted = True  # a recipe's top_n = 300 on a cohort of 150 uses all 150
            what = "identity means" if self.speaker_mean else "embeddings"
            warnings.warn(
                f"adaptive s-norm: top_n = {self.top_n}, but the cohort (the training samples' "
                f"{what}) has {n}; each side's statistics use all {n}.",
                stacklevel=2,
            )
        if n < 2:
            what = "identity means" if self.speaker_mean else "embeddings"
            raise DataError(
                f"the s-norm cohort (the training samples' {what}) has {n}; s-norm needs ≥ 2: "
                "fit on more training data."
            )

    def _set_cohort(self, cohort: Tensor) -> None:
        self._check_cohort_size(cohort.shape[0])
        self.cohort = cohort
        self._cohort_prep = self.base.prepare(cohort)

    def _stats(self, models: Tensor, n: int, as_test: bool) -> Tensor:
        """[rows, 2] cohort mean and std of each row (a model pooling n, or a test sample),
        streamed over cohort blocks so a large cohort never forms a [rows, cohort] matrix."""
        cohort = self._cohort_prep
        assert cohort is not None
        out = []
        for i in range(0, models.shape[0], self.stat_chunk):
            m = models[i : i + self.stat_chunk]
            top = torch.zeros(m.shape[0], 0, dtype=DTYPE)
            count, mean, m2 = 0, torch.zeros(m.shape[0], dtype=DTYPE), 0.0
            for c0 in range(0, cohort.shape[0], self.col_chunk):
                c = cohort[c0 : c0 + self.col_chunk]
                s = (self.base.block(c, 1, m).T if as_test else self.base.block(m, n, c)).to(DTYPE)
                if self.top_n:
                    both = torch.cat([top, s], 1)
                    top = both.topk(min(self.top_n, both.shape[1]), dim=1).values
                    continue
                # Chan et al.'s pairwise update of (count, mean, sum of squared deviations).
                nb, mb = s.shape[1], s.mean(1)
                delta = mb - mean
                m2 = m2 + ((s - mb[:, None]) ** 2).sum(1) + delta**2 * count * nb / (count + nb)
                mean = mean + delta * nb / (count + nb)
                count += nb
            if self.top_n:
                mean, std = top.mean(1), top.std(1)
            else:
                std = (m2 / (count - 1)).sqrt()
            out.append(torch.stack([mean, std], 1))
        return torch.cat(out) if out else torch.zeros(0, 2, dtype=DTYPE)

    def prepare(self, x: Tensor) -> Tensor:
        p = self.base.prepare(x)
        # Single recordings: as enrollment and as test they have the same stats (symmetric base).
        return torch.cat([p, self._stats(p, 1, as_test=True).to(p.dtype)], 1)

    def pool(self, prepared: Tensor, groups: Groups) -> tuple[Tensor, Tensor]:
        models, counts = self.base.pool(prepared[:, :-2], groups)
        stats = torch.empty(models.shape[0], 2, dtype=models.dtype)
        for n in torch.unique(counts).tolist():
            rows = torch.nonzero(counts == n).squeeze(1)
            stats[rows] = self._stats(models[rows], n, as_test=False).to(models.dtype)
        return torch.cat([models, stats], 1), counts

    @staticmethod
    def _norm(s: Tensor, me: Tensor, se: Tensor, mt: Tensor, st: Tensor) -> Tensor:
        return 0.5 * ((s - me) / se + (s - mt) / st)

    def block(self, models: Tensor, n: int, test: Tensor) -> Tensor:
        s = self.base.block(models[:, :-2], n, test[:, :-2])
        return self._norm(s, models[:, -2:-1], models[:, -1:], test[None, :, -2], test[None, :, -1])

    def pairs(self, models: Tensor, counts: Tensor, test: Tensor) -> Tensor:
        s = self.base.pairs(models[:, :-2], counts, test[:, :-2])
        return self._norm(s, models[:, -2], models[:, -1], test[:, -2], test[:, -1])

    def state_dict(self) -> dict[str, Tensor]:
        if self.cohort is None:
            return {}
        state = {f"base.{k}": v for k, v in self.base.state_dict().items()}
        state["cohort"] = self.cohort
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not state:  # an unfitted scorer's state
            return
        if "cohort" not in state:
            raise DataError("score-normalisation state has no 'cohort'; was it saved after fit?")
        self.base.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("base.")})
        self._set_cohort(state["cohort"])


class SNorm(ScoreNorm):
    """S-norm: symmetric normalisation against the whole cohort of training embeddings."""

    def __init__(
        self, base: dict[str, Any] | str = DEFAULT_BASE, speaker_mean: bool = False
    ) -> None:
        super().__init__(base, 0, speaker_mean)


class ASNorm(ScoreNorm):
    """Adaptive s-norm: each side normalised by its top-N cohort scores (N ≈ 300)."""

    def __init__(
        self, base: dict[str, Any] | str = DEFAULT_BASE, top_n: int = 300, speaker_mean: bool = True
    ) -> None:
        if top_n < 2:
            raise ConfigError(f"asnorm top_n must be ≥ 2, got {top_n}")
        super().__init__(base, top_n, speaker_mean)
