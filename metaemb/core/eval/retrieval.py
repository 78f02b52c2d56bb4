"""Nearest-neighbour search over an embedded collection, and the retrieval metrics of the field.

A collection is what `metaemb embed` writes: sample paths, identities and their embeddings (point
vectors, or GME natural parameters a, b). `nearest` returns the k most similar collection samples
of each probe: with faiss (an exact inner-product index on L2-normalised vectors) when it is
installed and the scorer is plain cosine, otherwise by the scorer's own chunked score matrix —
the two give the same neighbours (tested). `collection_metrics` scores the collection against
itself, leave-one-out, and reports precision@1, R-precision, MAP@R, mAP and the CMC (rank-k).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metaemb.core.errors import DataError, MetaembError
from metaemb.core.eval import identification as ident
from metaemb.core.scoring.choice import default_scorer

BACKENDS = ("auto", "faiss", "exact")


@dataclass
class Collection:
    """Embedded samples: `embeddings` is a [N, d] tensor or a GME; `meta` says which model."""

    paths: list[str]
    identities: list[str]
    embeddings: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def kind(self) -> str:
        return "point" if isinstance(self.embeddings, Tensor) else "gme"

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"paths": self.paths, "identities": self.identities, **self.meta}
        if isinstance(self.embeddings, Tensor):
            out["embeddings"] = self.embeddings
        else:
            out["a"], out["b"] = self.embeddings.a, self.embeddings.b
        return out

    def save(self, path: Path) -> None:
        """A torch file, or a NumPy archive when `path` ends in .npz (see `check_format`)."""
        from metaemb.core.files import atomic_write_bytes

        path = Path(path)
        check_format(path)
        _refuse_replacing_another_file(path)
        buf = io.BytesIO()
        if path.suffix.lower() == ".npz":
            np.savez(buf, **_as_arrays(self.payload()))
        else:
            torch.save(self.payload(), buf)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> Collection:
        path = Path(path)
        if not path.is_file():
            raise DataError(
                f"embeddings file '{path}' does not exist; write one with `metaemb embed`."
            )
        try:
            if path.suffix.lower() == ".npz":
                d = _from_arrays(path)
            else:
                d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            from metaemb.core.checkpoints import load_error_reason

            raise DataError(
                f"'{path}' cannot be read as an embeddings file ({load_error_reason(exc)})."
            ) from None
        if not isinstance(d, dict) or "paths" not in d or not ("embeddings" in d or "a" in d):
            raise DataError(f"'{path}' is not an embeddings file written by `metaemb embed`.")
        if "embeddings" in d:
            emb: Any = d["embeddings"].float()
        else:
            from metaemb.core.gme.algebra import GME

            emb = GME(d["a"].float(), d["b"].float())
        meta = {
            k: v for k, v in d.items() if k not in ("paths", "identities", "embeddings", "a", "b")
        }
        ids = list(d.get("identities") or [""] * len(d["paths"]))
        return cls(list(d["paths"]), ids, emb, meta)


WRITTEN = (".pt", ".pth", ".npz")


def check_format(path: Path) -> None:
    """Embeddings are written as a torch file (.pt, .pth) or a NumPy archive (.npz, arrays
    `embeddings` or GME `a`/`b`, `paths`, `identities`, and the model's details as 0-d
    strings). Any other name (`.npy`, a Kaldi `.ark`) would hold a torch file that the tools
    its name promises cannot read, so it is refused."""
    suffix = Path(path).suffix.lower()
    if suffix not in WRITTEN:
        what = f"not {suffix}" if suffix else "and the name needs one of those suffixes"
        kaldi = (" For Kaldi, write .npz and convert it: its `paths` name the samples (the "
                 "utterance ids of a Kaldi data directory)."
                 if suffix in (".ark", ".scp") else "")  # fmt: skip
        raise DataError(
            f"'{path}': embeddings are written as a torch file (.pt, .pth) or a NumPy archive "
            f"(.npz), {what}; name the output with one of those.{kaldi}"
        )


def _as_arrays(payload: dict[str, Any]) -> dict[str, np.ndarray]:
    """The payload as plain arrays (strings as unicode arrays), so np.load needs no pickle."""
    arrays = {}
    for key, value in payload.items():
        if isinstance(value, Tensor):
            arrays[key] = value.detach().cpu().numpy()
        elif isinstance(value, list):
            arrays[key] = np.array([str(v) for v in value], dtype=str)
        else:
            arrays[key] = np.array(str(value))
    return arrays


def _from_arrays(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        d: dict[str, Any] = {}
        for key in z.files:
            value = z[key]
            if key in ("embeddings", "a", "b"):
                d[key] = torch.from_numpy(np.asarray(value, dtype=np.float32))
            elif value.ndim == 0:
                d[key] = str(value)
            else:
                d[key] = [str(v) for v in value]
    return d


def adapt_to(scorer: Any, *embeddings: Any) -> None:
    """Adapt a scorer without labels (`Scorer.adapt`: the speaker default's centring on the
    data being scored) to every embedding a search compares, as `evaluate` adapts to every
    file of its trials; meta-embeddings and scorers that do not adapt are left as they are."""
    if hasattr(scorer, "adapt") and all(isinstance(e, Tensor) for e in embeddings):
        scorer.adapt(torch.cat([e.detach().cpu() for e in embeddings]))


def faiss_can_search(scorer: Any, kind: str) -> bool:
    """faiss ranks by inner product: exact for cosine, after the scorer's own `prepare`
    (centring, whitening and scaling, then unit length)."""
    from metaemb.core.scoring.cosine import CosineScorer

    return kind == "point" and type(scorer) is CosineScorer


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise MetaembError(
            "the faiss backend needs faiss: pip install 'metaemb[search]' (or faiss-cpu)."
        ) from None
    return faiss


def pick_backend(backend: str, scorer: Any, kind: str) -> str:
    """'faiss' or 'exact': auto takes faiss when it is installed and the scorer is cosine."""
    from metaemb.core.plugin.components import described

    if backend not in BACKENDS:
        raise MetaembError(f"search backend must be one of {', '.join(BACKENDS)}, got '{backend}'.")
    if backend == "exact":
        return "exact"
    usable = faiss_can_search(scorer, kind)
    if backend == "faiss":
        if not usable:
            what = described(scorer, "scorer")
            raise MetaembError(
                f"the faiss backend searches point embeddings with the cosine scorer only, and "
                f"this ranks with {what}: use --backend exact to rank with it, or --scorer "
                "cosine to search with cosine."
            )
        _faiss()
        return "faiss"
    if not usable:
        return "exact"
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "exact"
    return "faiss"


def nearest(
    collection: Any, probes: Any, k: int, scorer: Any = None, backend: str = "auto"
) -> tuple[Tensor, Tensor, str]:
    """The k best collection samples per probe → (scores [P, k] float64, indices [P, k], backend),
    best first; ties keep the lower collection index first."""
    kind = "point" if isinstance(collection, Tensor) else "gme"
    scorer = scorer if scorer is not None else default_scorer(kind)
    if k < 1:
        raise MetaembError(f"k must be ≥ 1, got {k}.")
    k = min(k, len(collection))
    chosen = pick_backend(backend, scorer, kind)
    if chosen == "faiss":
        faiss = _faiss()
        base = scorer.prepare(collection.double()).float().numpy()
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(np.ascontiguousarray(base, dtype=np.float32))
        q = scorer.prepare(probes.double()).float().numpy()
        scores, idx = index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        return torch.from_numpy(scores).double(), torch.from_numpy(idx).long(), chosen
    matrix = scorer.score_matrix(probes, collection).double()
    # stable descending order: equal scores keep collection order (as faiss does)
    order = torch.sort(-matrix, dim=1, stable=True).indices[:, :k]
    return matrix.gather(1, order), order, chosen


def collection_metrics(
    collection: Collection, scorer: Any = None, max_rank: int = 10
) -> dict[str, Any]:
    """Leave-one-out retrieval over a labelled collection: every sample queries all the others.

    precision@1, R-precision and MAP@R follow pytorch-metric-learning (queries whose identity has
    one sample are left out); mAP and the CMC use the same queries against the rest (self-match
    removed). Needs the full [N, N] score matrix, so it is meant for collections up to ~20 k."""
    labels = collection.identities
    if len(set(labels)) < 2 or all(not x for x in labels):
        raise DataError(
            "retrieval metrics need a labelled collection with at least two identities."
        )
    scorer = scorer if scorer is not None else default_scorer(collection.kind)
    s = scorer.score_matrix(collection.embeddings, collection.embeddings).double().numpy()
    out: dict[str, Any] = {"samples": len(labels), "identities": len(set(labels))}
    out.update(ident.retrieval_metrics(s, labels))
    lab = np.asarray(labels)
    counts = {x: n for x, n in zip(*np.unique(lab, return_counts=True), strict=True)}
    keep = np.array([counts[x] > 1 for x in lab])
    if not keep.any():
        raise DataError("retrieval metrics are undefined: every identity has one sample.")
    loo = s.copy()
    np.fill_diagonal(loo, -np.inf)  # a sample never retrieves itself
    rows = loo[keep]
    max_rank = min(max_rank, len(labels) - 1)
    curve = ident.cmc(rows, lab[keep], lab, max_rank=max_rank)
    out["cmc"] = [float(x) for x in curve]
    out["rank_1"] = float(curve[0])
    if max_rank >= 5:
        out["rank_5"] = float(curve[4])
    out["map"] = _loo_map(rows, lab[keep], lab, np.nonzero(keep)[0])
    out["queries"] = int(keep.sum())
    return out


def _loo_map(rows: np.ndarray, probe_labels: np.ndarray, labels: np.ndarray, self_idx) -> float:
    """mAP with each query's own column removed (its -inf score would still count as relevant)."""
    aps = []
    for r, q in enumerate(self_idx):
        other = np.ones(labels.size, dtype=bool)
        other[q] = False
        aps.append(
            ident.mean_average_precision(
                rows[r : r + 1, other], probe_labels[r : r + 1], labels[other]
            )
        )
    return float(np.mean(aps))


def _refuse_replacing_another_file(path: Path) -> None:
    """What `metaemb embed --out` refuses, refused from Python too: a run's checkpoint, a data
    sample, a folder, or an existing file that is not an embeddings file (a model, an export)."""
    from metaemb.core.paths import ensure_writable, refuse_replacing_another_file

    def ours(existing: Path) -> bool:
        try:
            Collection.load(existing)
        except MetaembError:
            return False
        return True

    ensure_writable(path, "embeddings file")
    refuse_replacing_another_file(path, "embeddings file", ours, "metaemb embed")
