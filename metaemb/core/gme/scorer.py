"""The GME scorer: trial LLRs straight from meta-embeddings (no fitting, no calibration step).

Multi-sample enrollment pools the enrollment GMEs (sums natural parameters) and scores the pool,
which is exactly the Bayesian answer (docs/reference/gme.md); `scoring.scorers.score_trials` finds `score_groups`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from metaemb.core.errors import DataError
from metaemb.core.gme.algebra import GME, llr, llr_matrix, pool_by_index
from metaemb.core.plugin.interfaces import Scorer

Groups = Sequence[Sequence[int]]


def as_gme(x: Any, name: str = "embeddings") -> GME:
    """A GME, an (a, b) pair or a {"a", "b"} dict → a detached GME; anything else is an error."""
    if isinstance(x, dict) and {"a", "b"} <= set(x):
        x = GME(torch.as_tensor(x["a"]), torch.as_tensor(x["b"]))
    elif isinstance(x, (tuple, list)) and len(x) == 2:
        x = GME(torch.as_tensor(x[0]), torch.as_tensor(x[1]))
    if not isinstance(x, GME):
        raise DataError(
            f"the 'gme' scorer needs Gaussian meta-embeddings for {name} (a model trained with "
            f"model.head=gme); got {type(x).__name__}. Use a point scorer such as 'cosine'."
        )
    return x.detach()


def pool_groups(embeddings: GME, groups: Groups) -> GME:
    """One pooled GME per group of indices into `embeddings` (multi-sample enrollment)."""
    counts = [len(g) for g in groups]
    if any(c < 1 for c in counts):
        raise DataError(f"enrollment group {counts.index(0)} is empty; need ≥ 1 sample")
    flat = torch.tensor([int(i) for g in groups for i in g], dtype=torch.long)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= len(embeddings)):
        raise DataError(f"enrollment index out of range for {len(embeddings)} meta-embeddings")
    owner = torch.repeat_interleave(
        torch.arange(len(groups)), torch.tensor(counts, dtype=torch.long)
    )
    members = embeddings[flat.to(embeddings.device)]
    return pool_by_index(members, owner.to(embeddings.device), len(groups))


class GMEScorer(Scorer):
    """Closed-form GME verification LLR (calibrated by construction); enrollment by pooling.

    `chunk_mb` bounds the temporaries of one all-vs-all block.
    """

    needs: ClassVar[str] = "gme"

    def __init__(self, chunk_mb: int = 8) -> None:
        if chunk_mb < 1:
            raise DataError(f"scorer 'gme': chunk_mb must be ≥ 1, got {chunk_mb}")
        self.max_chunk_bytes = int(chunk_mb) * 2**20

    @torch.no_grad()
    def score_matrix(self, enroll: Any, test: Any) -> Tensor:
        """All-vs-all LLRs [N_enroll, N_test], computed in bounded-memory blocks."""
        return llr_matrix(as_gme(enroll, "enroll"), as_gme(test, "test"), self.max_chunk_bytes)

    @torch.no_grad()
    def score(self, enroll: Any, test: Any) -> Tensor:
        """LLRs of aligned pairs (enroll[i], test[i]) → [N]."""
        e, t = as_gme(enroll, "enroll"), as_gme(test, "test")
        if len(e) != len(t):
            raise DataError(f"score() needs aligned pairs: got {len(e)} enroll, {len(t)} test")
        return llr(e, t)

    @torch.no_grad()
    def score_groups(
        self, embeddings: Any, enroll_groups: Groups, test_idx: Sequence[int]
    ) -> Tensor:
        """Trial i: pool of embeddings[enroll_groups[i]] vs embeddings[test_idx[i]] → [T]."""
        g = as_gme(embeddings)
        test_idx = torch.as_tensor(test_idx, dtype=torch.long).reshape(-1)
        if len(enroll_groups) != test_idx.numel():
            raise DataError(
                f"got {len(enroll_groups)} enrollment groups for {test_idx.numel()} test indices"
            )
        if test_idx.numel() and (int(test_idx.min()) < 0 or int(test_idx.max()) >= len(g)):
            raise DataError(f"test index out of range for {len(g)} meta-embeddings")
        return llr(pool_groups(g, enroll_groups), g[test_idx.to(g.device)])

    @torch.no_grad()
    def score_groups_matrix(self, embeddings: Any, enroll_groups: Groups, test: Any) -> Tensor:
        """All-vs-all of pooled enrollment models (groups of indices) vs test GMEs."""
        models = pool_groups(as_gme(embeddings), enroll_groups)
        return llr_matrix(models, as_gme(test, "test"), self.max_chunk_bytes)
