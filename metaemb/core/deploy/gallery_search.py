"""Search of a gallery: score probes against every enrolled identity's pooled model and keep
the top k, streamed over [probes, identities] blocks so memory stays bounded for any gallery
(with open-set posteriors for Gaussian meta-embeddings, and an optional faiss index for cosine).
The store itself (enrollment, files) is gallery.py. Semantics: docs/gallery.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metaemb.core.deploy.gallery import NEW, Gallery
from metaemb.core.errors import GalleryError
from metaemb.core.gme.algebra import DEFAULT_CHUNK_BYTES, GME, llr_matrix
from metaemb.core.optional import require
from metaemb.core.plugin.interfaces import Scorer

PROBE_CHUNK = 1024  # probes per block (bounds the [probes, identities] block with IDENT_CHUNK)
IDENT_CHUNK = 8192


@dataclass
class SearchResult:
    """Top-k identities per probe, best first (k is capped at the gallery's size).

    `scores` are scorer scores (`kind` "score") or GME LLRs ("llr"); `posteriors` and `p_new`
    (GME only) are open-set posteriors of each candidate and of "a new identity". A probe is
    accepted as its top candidate when that score reaches `threshold` (None: closed set).
    """

    identities: list[str]
    index: Tensor
    scores: Tensor
    kind: str
    threshold: float | None = None
    posteriors: Tensor | None = None
    p_new: Tensor | None = None

    @property
    def accepted(self) -> Tensor:
        top = self.scores[:, 0]
        if self.threshold is None:
            return torch.ones_like(top, dtype=torch.bool)
        return top >= self.threshold

    def names(self, i: int) -> list[str]:
        return [self.identities[j] for j in self.index[i].tolist() if j >= 0]

    def decision(self, i: int) -> str:
        """The identity probe i is assigned to, or NEW when it is rejected as unknown."""
        return self.identities[int(self.index[i, 0])] if bool(self.accepted[i]) else NEW

    def decisions(self) -> list[str]:
        return [self.decision(i) for i in range(self.index.shape[0])]


def _scorer(gallery: Gallery, scorer: str | Scorer | None) -> Scorer:
    """The scorer to search with (a name, a scorer, or None: the default for the gallery's
    kind), refused when it cannot pool and score the gallery in blocks."""
    from metaemb.core.scoring.choice import choose_scorer

    return choose_scorer(None, scorer, "gallery", kind=gallery.stamp.kind, holder="the gallery")


def scorer_key(scorer: Any) -> str | None:
    """A digest of a scorer's type and state (tensors, arrays, numbers, strings and the dicts,
    lists and nested objects holding them): what its `prepare` and `pool` make of a gallery
    depends on nothing else, so two scorer objects adapted alike share it. None when some
    attribute is of a kind it cannot read: such a scorer is pooled for every search."""
    import hashlib

    import numpy as np

    h = hashlib.blake2b(digest_size=16)

    class Unreadable(Exception):
        pass

    def feed(value: Any, depth: int) -> None:
        if depth > 6:
            raise Unreadable
        h.update(type(value).__qualname__.encode())
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, np.ndarray) and value.dtype != object:
            h.update(f"{value.dtype}{value.shape}".encode())
            h.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, (bool, int, float, complex, str, bytes, type(None), np.generic)):
            h.update(repr(value).encode())
        elif isinstance(value, (list, tuple)):
            for item in value:
                feed(item, depth + 1)
        elif isinstance(value, dict):
            for k in sorted(value, key=repr):
                h.update(repr(k).encode())
                feed(value[k], depth + 1)
        elif callable(value) and not hasattr(type(value), "prepare"):  # a function: its code
            raise Unreadable  # is state a digest cannot read (a scorer has `prepare`: read on)
        elif hasattr(value, "__dict__"):  # a base scorer, a fitted back-end
            for name, item in sorted(vars(value).items()):
                h.update(name.encode())
                feed(item, depth + 1)
        else:
            raise Unreadable

    try:
        feed(scorer, 0)
    except Unreadable:
        return None
    return h.hexdigest()


CACHED_STATES = 4  # pooled models kept per gallery: a scorer adapted per request stays bounded


def _cached(gallery: Gallery, key: Any, make: Any) -> Any:
    """`make()` once per gallery contents and key (search_cache is dropped by every change;
    a key holding None, a scorer state that cannot be read, is never kept)."""
    if None in key:
        return make()
    cache = gallery.search_cache
    value = cache.get(key)  # one read: threads searching one gallery share it (docs/gallery.md)
    if value is None:
        value = make()
        for old in list(cache)[: max(0, len(cache) - CACHED_STATES + 1)]:  # the oldest
            cache.pop(old, None)
        cache[key] = value
    return value


def _nonempty(gallery: Gallery) -> None:
    if not gallery.identities:
        raise GalleryError("the gallery is empty: enroll identities first.")


def _point_blocks(
    gallery: Gallery, probes: Tensor, scorer: Any
) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """(probe rows, identity indices, [rows, identities] scores) blocks via the scorer."""
    from metaemb.core.scoring.scorers import as_embeddings

    def pooled() -> tuple[Tensor, Tensor]:
        x = scorer.prepare(as_embeddings(gallery.samples, "gallery"))
        return scorer.pool(x, gallery.groups())

    models, counts = _cached(gallery, ("point", scorer_key(scorer)), pooled)
    t = scorer.prepare(as_embeddings(probes, "probes"))
    for rows, cols, blk in scorer.iter_models_matrix(models, counts, t, IDENT_CHUNK, PROBE_CHUNK):
        yield cols, rows, blk.T


def _gme_blocks(
    gallery: Gallery, probes: GME, scorer: Any
) -> Iterator[tuple[slice, Tensor, Tensor]]:
    models, _ = _cached(gallery, ("gme",), gallery.pooled)
    budget = getattr(scorer, "max_chunk_bytes", DEFAULT_CHUNK_BYTES)
    for p0 in range(0, len(probes), PROBE_CHUNK):
        rows = slice(p0, min(p0 + PROBE_CHUNK, len(probes)))
        for i0 in range(0, len(models), IDENT_CHUNK):
            i1 = min(i0 + IDENT_CHUNK, len(models))
            yield rows, torch.arange(i0, i1), llr_matrix(probes[rows], models[i0:i1], budget)


def _blocks(gallery: Gallery, probes: Any, scorer: Any) -> Iterator[tuple[slice, Tensor, Tensor]]:
    _nonempty(gallery)
    gallery.check_embeddings(probes)
    if isinstance(probes, Tensor) and probes.dtype != torch.float32:
        probes = probes.float()  # as `add` stores samples: float64 from numpy scores alike
    scorer = _scorer(gallery, scorer)
    with torch.no_grad():
        if gallery.stamp.kind == "gme":
            yield from _gme_blocks(gallery, probes, scorer)
        else:
            yield from _point_blocks(gallery, probes, scorer)


def score_matrix(gallery: Gallery, probes: Any, scorer: Any = None) -> Tensor:
    """Scores [P, identities] of every probe against every pooled identity (float64)."""
    out = torch.empty(len(probes), len(gallery.identities), dtype=torch.float64)
    for rows, ids, blk in _blocks(gallery, probes, scorer):
        out[rows, ids] = blk.double()
    return out


def search(
    gallery: Gallery,
    probes: Any,
    k: int = 5,
    scorer: Any = None,
    threshold: float | None = None,
    p_new: float | None = None,
    backend: str = "torch",
) -> SearchResult:
    """Top-k identities per probe, streamed over [probes, identities] blocks.

    GME galleries also get open-set posteriors: "a new identity" has prior `p_new` (default
    1/(m+1), uniform over the m enrolled and the new hypothesis) and LLR 0; without
    `threshold` the decision is the Bayes one, accept iff the top LLR exceeds
    log(p_new·m / (1 − p_new)). Point galleries are closed-set unless `threshold` is given.
    `backend="faiss"` searches cosine galleries with a faiss inner-product index.
    """
    if k < 1:
        raise GalleryError(f"top-k must be ≥ 1, got {k}")
    _nonempty(gallery)
    k = min(k, len(gallery.identities))
    if backend == "faiss":
        return _faiss_search(gallery, probes, k, scorer, threshold)
    if backend != "torch":
        raise GalleryError(f"search backend must be 'torch' or 'faiss', got '{backend}'")
    gme = gallery.stamp.kind == "gme"
    n_probes, m = len(probes), len(gallery.identities)
    best_v = torch.full((n_probes, k), -math.inf, dtype=torch.float64)
    best_i = torch.full((n_probes, k), -1, dtype=torch.long)
    lse = torch.full((n_probes,), -math.inf, dtype=torch.float64)
    for rows, ids, blk in _blocks(gallery, probes, scorer):
        blk = blk.double()
        v = torch.cat([best_v[rows], blk], 1)
        i = torch.cat([best_i[rows], ids.expand(blk.shape[0], -1)], 1)
        top_v, pos = v.topk(k, dim=1)
        best_v[rows], best_i[rows] = top_v, i.gather(1, pos)
        if gme:
            lse[rows] = torch.logaddexp(lse[rows], torch.logsumexp(blk, 1))
    if not gme:
        return SearchResult(gallery.identities, best_i, best_v, "score", threshold)
    p = 1.0 / (m + 1) if p_new is None else float(p_new)
    if not 0.0 < p < 1.0:
        raise GalleryError(f"the prior of a new identity must lie in (0, 1), got {p}")
    log_known, log_new = math.log((1 - p) / m), math.log(p)
    log_z = torch.logaddexp(lse + log_known, torch.tensor(log_new, dtype=torch.float64))
    post = torch.exp(best_v + log_known - log_z[:, None])
    bayes = round(log_new - log_known, 12) + 0.0  # 0, not -2.2e-16, at p_new = 1/(m+1)
    return SearchResult(
        gallery.identities,
        best_i,
        best_v,
        "llr",
        bayes if threshold is None else threshold,
        post,
        torch.exp(log_new - log_z),
    )


def _faiss_search(
    gallery: Gallery, probes: Any, k: int, scorer: Any, threshold: float | None
) -> SearchResult:
    from metaemb.core.scoring.cosine import CosineScorer

    sc = _scorer(gallery, scorer)
    if gallery.stamp.kind != "point" or type(sc) is not CosineScorer:
        raise GalleryError(
            "the faiss backend searches point galleries with the 'cosine' scorer only."
        )
    gallery.check_embeddings(probes)
    faiss = require("faiss", "the faiss search backend", GalleryError)

    def built() -> Any:  # inner products of what the scorer compares: pooled prepared samples
        models, _ = sc.pool(sc.prepare(gallery.samples.detach().cpu().double()), gallery.groups())
        index = faiss.IndexFlatIP(models.shape[1])
        index.add(models.float().numpy())
        return index

    index = _cached(gallery, ("faiss", scorer_key(sc)), built)
    q = sc.prepare(probes.detach().cpu().double()).float().numpy()
    scores, idx = index.search(q, k)
    return SearchResult(
        gallery.identities,
        torch.from_numpy(idx).long(),
        torch.from_numpy(scores).double(),
        "score",
        threshold,
    )
