"""Point-embedding scorers: the chunked driver, Euclidean, PLDA (cosine: cosine.py; s-norm / AS-norm
around them: scorenorm.py).

Every scorer here is a `PointScorer`, which splits scoring into four steps so that all-vs-all
matrices, aligned trial pairs and multi-sample enrollment share one chunked driver:

    prepare(x)             raw embeddings [N, D] → per-sample representation [N, k]
    pool(prepared, groups) enrollment groups → (models [G, k], counts [G])
    block(models, n, test) all-vs-all scores for models that all pool n recordings
    pairs(models, counts, test) scores of aligned (model, test) pairs

`score_matrix` never materialises more than one [row_chunk, col_chunk] block (plus its
temporaries) beyond the output, so a 50,000 × 50,000 matrix needs a few hundred MB of working
memory; pass `out=` (e.g. a float32 tensor or a memory-mapped array via torch.from_numpy) to
choose where the result lives. Multi-sample enrollment: `score_trials(scorer, embeddings,
enroll_groups, test_idx)` where trial i compares the recordings `enroll_groups[i]` (indices into
`embeddings`) with `embeddings[test_idx[i]]`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError, MetaembError
from metaemb.core.plugin.interfaces import Scorer
from metaemb.core.scoring.plda import PLDABackend, llr_matrix, llr_pairs

Groups = Sequence[Sequence[int]]


def as_embeddings(x: Any, name: str = "embeddings") -> Tensor:
    """Any [N, dim] array → a CPU floating tensor (integers become float32)."""
    t = torch.as_tensor(x).detach().cpu()
    if t.ndim != 2:
        raise DataError(f"{name} must be a 2-D [N, dim] array of embeddings, got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t


def _flatten_groups(groups: Groups, n_items: int) -> tuple[Tensor, Tensor, Tensor]:
    """(flat member indices, group id per member, members per group); checks the indices."""
    counts = torch.tensor([len(g) for g in groups], dtype=torch.long)
    if counts.numel() and int(counts.min()) < 1:
        bad = int(torch.nonzero(counts < 1)[0])
        raise DataError(f"enrollment group {bad} is empty; every trial needs ≥ 1 enrollment sample")
    flat = torch.tensor([int(i) for g in groups for i in g], dtype=torch.long)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= n_items):
        raise DataError(f"enrollment index out of range for {n_items} embeddings")
    owner = torch.repeat_interleave(torch.arange(len(groups)), counts)
    return flat, owner, counts


def group_means(prepared: Tensor, groups: Groups) -> tuple[Tensor, Tensor]:
    """Mean representation of each group and its size."""
    flat, owner, counts = _flatten_groups(groups, prepared.shape[0])
    sums = torch.zeros(len(groups), prepared.shape[1], dtype=prepared.dtype)
    sums.index_add_(0, owner, prepared[flat])
    return sums / counts[:, None].to(prepared.dtype), counts


class PointScorer(Scorer):
    """Base for scorers of point embeddings: chunked matrices, aligned pairs, multi-enrollment."""

    needs = "point"
    count_dependent = False  # True when the score depends on how many recordings a model pools
    row_chunk = 2048
    col_chunk = 4096
    pair_chunk = 8192

    # -- the four steps subclasses define --------------------------------------------------
    def prepare(self, x: Tensor) -> Tensor:
        return x

    def pool(self, prepared: Tensor, groups: Groups) -> tuple[Tensor, Tensor]:
        return group_means(prepared, groups)

    @abc.abstractmethod
    def block(self, models: Tensor, n: int, test: Tensor) -> Tensor:
        """All-vs-all scores [len(models), len(test)] for models that each pool n recordings."""

    @abc.abstractmethod
    def pairs(self, models: Tensor, counts: Tensor, test: Tensor) -> Tensor:
        """Scores of aligned (models[i] pooling counts[i] recordings, test[i]) pairs."""

    # -- drivers ----------------------------------------------------------------------------
    def _prep(self, x: Any, name: str) -> Tensor:
        self._check_fitted()
        return self.prepare(as_embeddings(x, name))

    def _prep_both(self, enroll: Any, test: Any) -> tuple[Tensor, Tensor]:
        e = self._prep(enroll, "enroll")
        return e, (e if test is enroll else self._prep(test, "test"))  # x vs x: prepare once

    def _check_fitted(self) -> None:
        if getattr(self, "requires_fit", False) and not self.fitted:
            raise MetaembError(
                f"scorer '{type(self).__name__}' must be fitted on training embeddings before "
                "scoring (call fit(embeddings, labels) or load its saved state)"
            )

    @property
    def fitted(self) -> bool:
        return True

    def iter_models_matrix(
        self, models: Tensor, counts: Tensor, test: Tensor, row_chunk: int = 0, col_chunk: int = 0
    ) -> Iterator[tuple[Tensor, slice, Tensor]]:
        """Yield (model rows, test columns, score block) over prepared models and tests."""
        rc, cc = row_chunk or self.row_chunk, col_chunk or self.col_chunk
        if self.count_dependent:
            row_sets = [torch.nonzero(counts == n).squeeze(1) for n in torch.unique(counts)]
        else:
            row_sets = [torch.arange(models.shape[0])]
        for rows_all in row_sets:
            n = int(counts[rows_all[0]]) if rows_all.numel() else 1
            for r0 in range(0, rows_all.numel(), rc):
                rows = rows_all[r0 : r0 + rc]
                m = models[rows]
                for c0 in range(0, test.shape[0], cc):
                    cols = slice(c0, min(c0 + cc, test.shape[0]))
                    yield rows, cols, self.block(m, n, test[cols])

    def iter_score_matrix(
        self, enroll: Any, test: Any, row_chunk: int = 0, col_chunk: int = 0
    ) -> Iterator[tuple[slice, slice, Tensor]]:
        """Yield (enroll rows, test columns, block) covering the all-vs-all matrix."""
        e, t = self._prep_both(enroll, test)
        ones = torch.ones(e.shape[0], dtype=torch.long)
        for rows, cols, blk in self.iter_models_matrix(e, ones, t, row_chunk, col_chunk):
            yield slice(int(rows[0]), int(rows[-1]) + 1), cols, blk

    def _fill(self, it: Iterator, shape: tuple[int, int], out: Tensor | None, dtype) -> Tensor:
        out = _output(shape, out, dtype)
        for rows, cols, blk in it:
            out[rows, cols] = blk.to(out.dtype)
        return out

    def score_matrix(
        self,
        enroll: Any,
        test: Any,
        out: Tensor | None = None,
        dtype: torch.dtype | None = None,
        row_chunk: int = 0,
        col_chunk: int = 0,
    ) -> Tensor:
        """All-vs-all scores [N_enroll, N_test], written block by block into `out` (allocated
        with `dtype`, default the scorer's working precision, when not given)."""
        e, t = self._prep_both(enroll, test)
        ones = torch.ones(e.shape[0], dtype=torch.long)
        it = self.iter_models_matrix(e, ones, t, row_chunk, col_chunk)
        return self._fill(it, (e.shape[0], t.shape[0]), out, dtype or e.dtype)

    def topk(self, enroll: Any, test: Any, k: int) -> tuple[Tensor, Tensor]:
        """Per enroll row, the k highest scores over all tests and their test indices, streamed
        over column blocks (memory: one block plus the running top-k)."""
        e, t = self._prep_both(enroll, test)
        k = min(k, t.shape[0])
        best_v = torch.full((e.shape[0], k), float("-inf"), dtype=e.dtype)
        best_i = torch.full((e.shape[0], k), -1, dtype=torch.long)
        ones = torch.ones(e.shape[0], dtype=torch.long)
        for rows, cols, blk in self.iter_models_matrix(e, ones, t):
            ids = torch.arange(cols.start, cols.stop).expand(blk.shape[0], -1)
            v = torch.cat([best_v[rows], blk.to(best_v.dtype)], 1)
            i = torch.cat([best_i[rows], ids], 1)
            top_v, pos = v.topk(k, dim=1)
            best_v[rows], best_i[rows] = top_v, i.gather(1, pos)
        return best_v, best_i

    def score(self, enroll: Any, test: Any) -> Tensor:
        """Scores of aligned pairs (enroll[i], test[i]) → [N]."""
        e, t = self._prep_both(enroll, test)
        if e.shape[0] != t.shape[0]:
            raise DataError(
                f"score() needs aligned pairs: got {e.shape[0]} enroll, {t.shape[0]} test"
            )
        return self._pairs_chunked(e, torch.ones(e.shape[0], dtype=torch.long), t)

    def _pairs_chunked(self, models: Tensor, counts: Tensor, test: Tensor) -> Tensor:
        parts = [
            self.pairs(
                models[i : i + self.pair_chunk],
                counts[i : i + self.pair_chunk],
                test[i : i + self.pair_chunk],
            )
            for i in range(0, models.shape[0], self.pair_chunk)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=models.dtype)

    def score_groups(
        self, embeddings: Any, enroll_groups: Groups, test_idx: Sequence[int]
    ) -> Tensor:
        """Multi-sample enrollment trials: group i (indices into embeddings) vs test_idx[i]."""
        x = self._prep(embeddings, "embeddings")
        test_idx = torch.as_tensor(test_idx, dtype=torch.long).reshape(-1)
        if len(enroll_groups) != test_idx.numel():
            raise DataError(
                f"got {len(enroll_groups)} enrollment groups for {test_idx.numel()} test indices"
            )
        if test_idx.numel() and (int(test_idx.min()) < 0 or int(test_idx.max()) >= x.shape[0]):
            raise DataError(f"test index out of range for {x.shape[0]} embeddings")
        unique: dict[tuple[int, ...], int] = {}
        which = [unique.setdefault(tuple(int(i) for i in g), len(unique)) for g in enroll_groups]
        models, counts = self.pool(x, list(unique))
        which_t = torch.tensor(which, dtype=torch.long)
        return self._pairs_chunked(models[which_t], counts[which_t], x[test_idx])

    def score_groups_matrix(
        self,
        embeddings: Any,
        enroll_groups: Groups,
        test: Any,
        out: Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """All-vs-all of pooled enrollment models (groups of indices into embeddings) vs test."""
        models, counts = self.pool(self._prep(embeddings, "embeddings"), enroll_groups)
        t = self._prep(test, "test")
        it = self.iter_models_matrix(models, counts, t)
        return self._fill(it, (models.shape[0], t.shape[0]), out, dtype or models.dtype)


def _output(shape: tuple[int, int], out: Tensor | None, dtype: torch.dtype) -> Tensor:
    if out is None:
        return torch.empty(shape, dtype=dtype)
    if tuple(out.shape) != shape:
        raise DataError(f"out= has shape {tuple(out.shape)}, expected {shape}")
    return out


def score_trials(
    scorer: Scorer, embeddings: Any, enroll_groups: Groups, test_idx: Sequence[int]
) -> Tensor:
    """Score trials whose enrollment may pool several recordings.

    Trial i compares the recordings `embeddings[enroll_groups[i]]` with `embeddings[test_idx[i]]`.
    Point scorers pool properly (PLDA with n recordings, cosine on the mean direction); other
    scorers get single-sample trials through `score`, or their own `score_groups`.
    """
    if hasattr(scorer, "score_groups"):
        return scorer.score_groups(embeddings, enroll_groups, test_idx)
    if any(len(g) != 1 for g in enroll_groups):
        raise MetaembError(
            f"scorer '{type(scorer).__name__}' cannot pool multi-sample enrollment; "
            "use single-sample trials or a scorer with score_groups"
        )
    first = [int(g[0]) for g in enroll_groups]
    return scorer.score(embeddings[first], embeddings[list(test_idx)])


def check_consistent(scorer: Scorer, embeddings: Any, label: str, n: int = 6) -> None:
    """A scorer's aligned-pair scores (`score`, which trial lists use) must equal the matching
    entries of its score matrix (`score_matrix`, which galleries and identification use), and
    the matrix must be [enroll, test]: a scorer whose two paths disagree gives one answer in
    `evaluate` and another in `identify`, silently. Checked on a few embeddings."""
    n = min(n, len(embeddings))
    if n < 2:
        return
    e = embeddings[:n]
    shifted = torch.roll(torch.arange(n), 1)
    try:
        with torch.no_grad():
            matrix = scorer.score_matrix(e, e[: n - 1])
            if not isinstance(matrix, Tensor) or tuple(matrix.shape) != (n, n - 1):
                shown = list(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
                raise ConfigError(
                    f"{label}: score_matrix of {n} enrollment and {n - 1} test embeddings gave "
                    f"{shown}; it must give [N_enroll, N_test] = [{n}, {n - 1}]."
                )
            matrix = scorer.score_matrix(e, e)
            pairs = scorer.score(e, e[shifted])
            for what, t in (("score_matrix", matrix), ("score", pairs)):
                if isinstance(t, Tensor) and not t.is_floating_point():
                    raise ConfigError(
                        f"{label}: {what} gave {t.dtype} scores; scores are floating point "
                        "(whole numbers tie trials and quantise every measure): return the "
                        "float values."
                    )
            matrix = matrix.double()
            if not isinstance(pairs, Tensor) or tuple(pairs.shape) != (n,):
                shown = list(pairs.shape) if isinstance(pairs, Tensor) else type(pairs).__name__
                raise ConfigError(
                    f"{label}: score of {n} aligned (enrollment, test) pairs gave {shown}; it "
                    f"must give one score per pair, [N] = [{n}] (a pairs method keeping a "
                    "dimension, sum(1, keepdim=True)?)."
                )
            pairs = pairs.double()
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        hint = (
            "a block or pair method returning something other than a tensor (a list?)"
            if "expected Tensor" in str(exc)
            else "a block or pair method returning the wrong shape, e.g. [test, enroll] "
            "instead of [enroll, test]?"
        )
        raise ConfigError(
            f"{label} failed scoring {n} embeddings: {type(exc).__name__}: {exc} ({hint})"
        ) from exc
    if not (torch.isfinite(matrix).all() and torch.isfinite(pairs).all()):
        raise ConfigError(f"{label} gave NaN or inf scores from finite embeddings.")
    expected = matrix[torch.arange(n), shifted]
    gap = float((pairs - expected).abs().max())
    if not gap <= 1e-4 * max(1.0, float(expected.abs().max())):
        raise ConfigError(
            f"{label}: its scores of aligned pairs (score, used by trial lists) differ from its "
            f"score matrix (score_matrix, used by galleries and identification) by {gap:.3g}; "
            "both must give the same score for the same pair."
        )


# ---------------------------------------------------------------------------------------------
class EuclideanScorer(PointScorer):
    """Negative Euclidean distance (enrollment groups pool to their mean embedding)."""

    def block(self, models: Tensor, n: int, test: Tensor) -> Tensor:
        sq = (models * models).sum(1)[:, None] + (test * test).sum(1)[None, :]
        return -torch.addmm(sq, models, test.T, alpha=-2.0).clamp_min_(0.0).sqrt_()

    def pairs(self, models: Tensor, counts: Tensor, test: Tensor) -> Tensor:
        return -(models - test).norm(dim=1)


class PLDAScorer(PointScorer):
    """Two-covariance PLDA LLR after mean subtraction, LDA and length-norm (speaker back-end).

    `lda_dim = 0` skips LDA; `length_norm = False` skips length normalisation (it suits
    heavy-tailed network embeddings, not data that is already Gaussian).
    """

    requires_fit = True
    count_dependent = True

    def __init__(self, lda_dim: int = 200, iterations: int = 10, length_norm: bool = True) -> None:
        self.backend = PLDABackend(lda_dim=lda_dim, iterations=iterations, length_norm=length_norm)

    @property
    def fitted(self) -> bool:
        return self.backend.fitted

    def fit(self, embeddings: Any, labels: Any) -> None:
        self.backend.fit(as_embeddings(embeddings, "embeddings"), labels)

    def prepare(self, x: Tensor) -> Tensor:
        return self.backend.diagonal(x)

    def block(self, models: Tensor, n: int, test: Tensor) -> Tensor:
        assert self.backend.plda is not None
        return llr_matrix(self.backend.plda.psi, models, test, n)

    def pairs(self, models: Tensor, counts: Tensor, test: Tensor) -> Tensor:
        assert self.backend.plda is not None
        return llr_pairs(self.backend.plda.psi, models, test, counts)

    def state_dict(self) -> dict[str, Tensor]:
        return self.backend.state_dict() if self.fitted else {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:  # an empty state is an unfitted scorer's
            self.backend.load_state_dict(state)


# A composite scorer's base is a nested table, e.g. [scorer.base] name = "plda", built through
# the one registry so a plugin's point scorer can be a base too.
DEFAULT_BASE: dict[str, Any] = {"name": "cosine", "subtract_mean": True}


def build_point_base(base: Any, owner: str) -> PointScorer:
    """The base point scorer of a wrapper (normalisation, calibration) from its option table."""
    from metaemb.core.plugin.components import build_part

    scorer = build_part("scorers", base, DEFAULT_BASE)
    if not isinstance(scorer, PointScorer):
        name = base.get("name") if isinstance(base, dict) else base
        raise ConfigError(
            f"scorer '{owner}': base scorer '{name}' is not a point-embedding scorer (cosine, "
            "euclidean, plda or a plugin's PointScorer); set [scorer.base] name = … to one."
        )
    return scorer
