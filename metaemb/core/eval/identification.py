"""Identification and retrieval metrics: closed-set rank-k / CMC, mAP, precision@1, R-precision,
MAP@R and open-set TPIR@FPIR, over a probe × gallery score matrix (higher = more similar).

Ties are resolved pessimistically: a non-mate tied with the mate ranks first. Matrices are processed
in row blocks so memory stays bounded; a metric that is undefined for its input (no probe with a
mate, every label unique, …) raises MetaembError saying why. Definitions: docs/reference/metrics.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from metaemb.core.errors import MetaembError
from metaemb.core.eval.metrics import false_rate_cut

_CHUNK = 1 << 22  # matrix cells processed at once


def _matrix(score_matrix: Any, probe_labels: Any, gallery_labels: Any):
    if hasattr(score_matrix, "detach"):
        score_matrix = score_matrix.detach().cpu().double().numpy()
    s = np.asarray(score_matrix, dtype=np.float64)
    pl, gl = _labels(probe_labels), _labels(gallery_labels)
    if s.ndim != 2 or s.shape != (pl.size, gl.size):
        raise MetaembError(
            f"score matrix of shape {s.shape} does not match {pl.size} probe and "
            f"{gl.size} gallery labels."
        )
    if np.isnan(s).any():
        raise MetaembError("the score matrix contains NaN values.")
    return s, pl, gl


def _labels(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x).reshape(-1)


def _rows(n_rows: int, n_cols: int):
    step = max(1, _CHUNK // max(1, n_cols))
    for lo in range(0, n_rows, step):
        yield slice(lo, min(n_rows, lo + step))


def _mate_ranks(s, pl, gl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per probe: has a mate, rank of its best-scoring mate (1-based), that mate's score."""
    has = np.zeros(pl.size, dtype=bool)
    rank = np.zeros(pl.size, dtype=np.int64)
    best = np.full(pl.size, -np.inf)
    for r in _rows(*s.shape):
        mates = pl[r, None] == gl[None, :]
        sc = s[r]
        b = np.where(mates, sc, -np.inf).max(axis=1)
        has[r] = mates.any(axis=1)
        best[r] = b
        rank[r] = 1 + ((sc >= b[:, None]) & ~mates).sum(axis=1)
    return has, rank, best


def cmc(
    score_matrix: Any, probe_labels: Any, gallery_labels: Any, max_rank: int | None = None
) -> np.ndarray:
    """Closed-set CMC: element k−1 is the rank-k accuracy; probes without a mate are excluded."""
    s, pl, gl = _matrix(score_matrix, probe_labels, gallery_labels)
    has, rank, _ = _mate_ranks(s, pl, gl)
    if not has.any():
        raise MetaembError("CMC is undefined: no probe identity appears in the gallery.")
    max_rank = gl.size if max_rank is None else int(max_rank)
    if max_rank < 1:
        raise MetaembError(f"max_rank must be ≥ 1, got {max_rank}.")
    counts = np.bincount(np.minimum(rank[has], max_rank + 1), minlength=max_rank + 2)
    return np.cumsum(counts[1 : max_rank + 1]) / has.sum()


def rank_k(score_matrix: Any, probe_labels: Any, gallery_labels: Any, k: int = 1) -> float:
    """Closed-set rank-k identification accuracy."""
    if int(k) < 1:
        raise MetaembError(f"rank_k: k must be ≥ 1, got {k}.")
    return float(cmc(score_matrix, probe_labels, gallery_labels, max_rank=k)[k - 1])


def _ranked_relevance(s: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Relevance of each row's items sorted by score, descending; non-relevant first on ties."""
    order = np.lexsort((rel, -s), axis=-1)
    return np.take_along_axis(rel, order, axis=-1)


def mean_average_precision(score_matrix: Any, probe_labels: Any, gallery_labels: Any) -> float:
    """mAP over probes with ≥ 1 relevant gallery item; AP = Σ_k P@k·rel_k / #relevant."""
    s, pl, gl = _matrix(score_matrix, probe_labels, gallery_labels)
    aps = []
    ks = np.arange(1, gl.size + 1)
    for r in _rows(*s.shape):
        rel = _ranked_relevance(s[r], pl[r, None] == gl[None, :])
        n_rel = rel.sum(axis=1)
        hit = np.cumsum(rel, axis=1) / ks
        ap = (hit * rel).sum(axis=1)
        aps.append(ap[n_rel > 0] / n_rel[n_rel > 0])
    ap = np.concatenate(aps)
    if ap.size == 0:
        raise MetaembError("mAP is undefined: no probe has a relevant gallery item.")
    return float(ap.mean())


def retrieval_metrics(score_matrix: Any, labels: Any) -> dict[str, float]:
    """Precision@1, R-precision and MAP@R (pytorch-metric-learning convention): the query set is
    the reference set, self-matches are removed, and queries whose label occurs only once are
    left out (they have no correct neighbour). `score_matrix` is square, higher = more similar."""
    s, lab, _ = _matrix(score_matrix, labels, labels)
    n = lab.size
    p1, rp, mapr = [], [], []
    for r in _rows(n, n):
        rows = np.arange(n)[r]
        off = np.ones((rows.size, n), dtype=bool)
        off[np.arange(rows.size), rows] = False
        sc = s[r][off].reshape(rows.size, n - 1)
        rel = (lab[r, None] == lab[None, :])[off].reshape(rows.size, n - 1)
        big_r = rel.sum(axis=1)
        keep = big_r > 0
        rel, big_r = _ranked_relevance(sc[keep], rel[keep]), big_r[keep]
        if rel.size == 0:
            continue
        within = np.arange(1, n) <= big_r[:, None]  # the first R_q neighbours
        hits = np.cumsum(rel, axis=1)
        p1.append(rel[:, 0])
        rp.append((rel & within).sum(axis=1) / big_r)
        mapr.append((hits / np.arange(1, n) * (rel & within)).sum(axis=1) / big_r)
    if not p1:
        raise MetaembError("retrieval metrics are undefined: every label occurs only once.")
    return {
        "precision_at_1": float(np.concatenate(p1).mean()),
        "r_precision": float(np.concatenate(rp).mean()),
        "map_at_r": float(np.concatenate(mapr).mean()),
    }


def precision_at_1(score_matrix: Any, labels: Any) -> float:
    """Fraction of queries whose nearest other item shares their label."""
    return retrieval_metrics(score_matrix, labels)["precision_at_1"]


def r_precision(score_matrix: Any, labels: Any) -> float:
    """Mean over queries of (correct among the first R_q neighbours) / R_q."""
    return retrieval_metrics(score_matrix, labels)["r_precision"]


def map_at_r(score_matrix: Any, labels: Any) -> float:
    """MAP@R = mean over queries of (1/R_q) Σ_{i≤R_q} P(i)·rel(i)."""
    return retrieval_metrics(score_matrix, labels)["map_at_r"]


def tpir_at_fpir(
    score_matrix: Any, probe_labels: Any, gallery_labels: Any, fpir: float = 0.01, rank: int = 1
) -> float:
    """Open-set identification: TPIR at rank `rank` with τ the lowest threshold whose FPIR (share
    of non-mated probes whose top score ≥ τ) is at most `fpir`."""
    s, pl, gl = _matrix(score_matrix, probe_labels, gallery_labels)
    has, ranks, best = _mate_ranks(s, pl, gl)
    if has.all() or not has.any():
        missing = "non-mated" if has.all() else "mated"
        raise MetaembError(f"TPIR@FPIR is undefined without {missing} probes.")
    top_non = s[~has].max(axis=1)
    cut = false_rate_cut(top_non, fpir, "FPIR")
    hit = (ranks[has] <= rank) & (best[has] > cut)
    return float(hit.mean())
