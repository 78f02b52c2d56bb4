"""Search of an embedded collection (the file `metaemb embed` writes, the "fingerprint database"
of re-identification): the k nearest collection samples of probe files, embedded with the
collection's model, and leave-one-out retrieval metrics of a labelled collection. The
gallery counterpart (pooled identities) is search.py. `metaemb neighbours` adds options and
printing; semantics: docs/gallery.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from metaemb.core.errors import MetaembError

T = TypeVar("T")

if TYPE_CHECKING:
    from metaemb.core.deploy.loading import LoadedRun
    from metaemb.core.eval.retrieval import Collection
    from metaemb.core.plugin.interfaces import Scorer


@dataclass
class Neighbour:
    """One collection sample found for a probe: its rank (1: best), path, identity, score."""

    rank: int
    path: str
    identity: str
    score: float


@dataclass
class Neighbours:
    """The k nearest collection samples of each probe, best first (`neighbours[p]` for
    `probes[p]`), and the search backend that found them ("exact" or "faiss")."""

    collection: str
    backend: str
    k: int
    probes: list[str] = field(default_factory=list)
    neighbours: list[list[Neighbour]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """What `metaemb neighbours --out` writes."""
        return {
            "backend": self.backend,
            "k": self.k,
            "collection": self.collection,
            "probes": [
                {"probe": p, "neighbours": [vars(h).copy() for h in hits]}
                for p, hits in zip(self.probes, self.neighbours, strict=True)
            ],
        }


def _checkpoint(collection: Collection) -> str | None:
    return collection.meta.get("checkpoint") or None


def collection_run(collection: Collection, run: Path | None = None) -> LoadedRun | None:
    """The run whose scorer ranks `collection`: `run` (--run), else the one the collection
    names, loaded only when it still holds the model that embedded it (a run trained on since,
    or replaced, would lend another model's fitted state). None when there is none; a given
    `run` that cannot be loaded, or holds another model, is an error."""
    from metaemb.core.deploy.loading import load_run
    from metaemb.core.deploy.stamp import refuse_other_model, same_model

    ckpt = run or _checkpoint(collection)
    if not ckpt or not Path(ckpt).exists():
        return None
    try:  # a run directory loads its best.pt, else last.pt; with the collection's sets
        loaded = as_embedded(collection, load_run, Path(ckpt))
    except MetaembError:
        if run is not None:
            raise
        return None  # (a plugin it needs is not installed here): said by the caller
    held = collection.meta.get("model_digest")
    if not held or same_model(held, loaded.digest):
        return loaded
    if run is not None:
        refuse_other_model(loaded.digest, held, given=f"'{run}'",
                           verb="embedded", what="the collection",
                           remedy="give the run that did as --run, or re-embed the "
                                  "collection with this one")  # fmt: skip
    return None


def collection_scorer(
    collection: Collection,
    name: str | None = None,
    run: Path | None = None,
    path: str | Path | None = None,
) -> Scorer:
    """Scorer `name` as the run (`run`, else the collection's) scores with it, fitted state and
    options included, as `identify --scorer` takes it; by default the run's own, or cosine
    (gme for meta-embeddings) when no run can give it, with a warning (`choose_scorer`, purpose
    "search"). `path`: the collection's file, for messages."""
    from metaemb.core.scoring.choice import choose_scorer

    loaded = collection_run(collection, run)
    ckpt = _checkpoint(collection)
    no_run = ""
    if loaded is None:
        no_run = (f"'{ckpt}' is not there, cannot be loaded here or holds another model now"
                  if ckpt else "it names no run")  # fmt: skip
    holder = f"the collection '{path}'" if path is not None else "the collection"
    return choose_scorer(loaded, name, "search", kind=collection.kind, holder=holder,
                         command="neighbours", no_run=no_run,
                         recorded=collection.meta.get("scorer"))  # fmt: skip


def as_embedded(
    collection: Collection,
    fn: Callable[..., T],
    *args: Any,
    named: Any = "the collection",
    **kwargs: Any,
) -> T:
    """`fn(*args, **kwargs)` with the `--frontend-set` and `--features-set` the collection's
    embed recorded: its model and probes make the embeddings it holds (a flip-tested
    collection searched with one-view probes would mix two embeddings of each file)."""
    import contextvars
    import json

    from metaemb.core.data import pipeline

    def run() -> T:
        for key, use in (("frontend_set", pipeline.use_frontend_set),
                         ("features_set", pipeline.use_features_set)):  # fmt: skip
            try:
                recorded = json.loads(collection.meta.get(key) or "{}")
            except ValueError:
                recorded = None
            if not isinstance(recorded, dict):  # not JSON, or JSON of another shape
                raise MetaembError(
                    f"{named}: its record of its embed's --{key.replace('_', '-')} is damaged "
                    f"({collection.meta.get(key)!r}); embed the collection again."
                )
            use([f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in recorded.items()])
        return fn(*args, **kwargs)

    return contextvars.copy_context().run(run)


def find_neighbours(
    collection_path: Path | Collection,
    probes: list[Path],
    k: int = 5,
    run: Path | None = None,
    backend: str = "auto",
    scorer: str | None = None,
    device: str = "auto",
    workers: int = 0,
    root: Path | None = None,
) -> Neighbours:
    """Embed the probe files with the collection's model (or `run`) and search the collection
    (its file, or a `Collection` in memory; `root`: the data folder the probes are under, as
    `embed --root`)."""
    from metaemb.core.deploy.stamp import refuse_other_model
    from metaemb.core.eval.retrieval import adapt_to, nearest

    coll, collection_path = _opened(collection_path)
    model = run or (Path(coll.meta["checkpoint"]) if coll.meta.get("checkpoint") else None)
    if model is None:
        raise MetaembError(
            f"'{collection_path}' does not say which model embedded it; pass --run RUN_OR_CHECKPOINT."
        )
    from metaemb.core.eval.collect import embed_inputs

    probe = as_embedded(coll, embed_inputs, model, probes, device=device, workers=workers,
                        root=root, named=f"collection '{collection_path}'")  # fmt: skip
    refuse_other_model(probe.meta["model_digest"], coll.meta.get("model_digest"),
                       given=f"'{model}'", verb="embedded",
                       what=f"the collection '{collection_path}'",
                       remedy="re-embed the collection, or pass the right --run")  # fmt: skip
    sc = collection_scorer(coll, scorer, model, collection_path)
    # label-free, to the collection only: a probe's scores must not depend on the other probes
    # of the call (one probe per request in a service), as identify adapts to its gallery
    adapt_to(sc, coll.embeddings)
    scores, index, used = nearest(coll.embeddings, probe.embeddings, k, sc, backend)
    found = Neighbours(str(collection_path), used, index.shape[1])
    for p, path in enumerate(probe.paths):
        hits = zip(index[p].tolist(), scores[p].tolist(), strict=True)
        found.probes.append(path)
        found.neighbours.append([
            Neighbour(r + 1, coll.paths[i], coll.identities[i], float(s))
            for r, (i, s) in enumerate(hits)
        ])  # fmt: skip
    return found


def collection_retrieval(
    collection_path: Path | Collection,
    scorer: str | None = None,
    run: Path | None = None,
    max_rank: int = 10,
) -> dict[str, Any]:
    """Leave-one-out retrieval metrics of the labelled collection at `collection_path` (or a
    `Collection` in memory) (`retrieval.collection_metrics`), ranked with
    `collection_scorer`; an error about its contents names the file."""
    from metaemb.core.eval.retrieval import adapt_to, collection_metrics

    coll, collection_path = _opened(collection_path)
    try:
        sc = collection_scorer(coll, scorer, run, collection_path)
        adapt_to(sc, coll.embeddings)
        return collection_metrics(coll, sc, max_rank=max_rank)
    except MetaembError as exc:  # which collection: the message is about its contents
        if f"'{collection_path}'" in str(exc):
            raise
        raise type(exc)(f"'{collection_path}': {exc}") from None


def _opened(given: Path | Collection) -> tuple[Collection, Any]:
    """(the collection, how messages name it): a file is loaded; one in memory is itself."""
    from metaemb.core.eval.retrieval import Collection

    if isinstance(given, Collection):
        return given, "the collection given"
    return Collection.load(given), given


__all__ = [
    "Neighbour",
    "Neighbours",
    "collection_retrieval",
    "collection_run",
    "collection_scorer",
    "find_neighbours",
]
