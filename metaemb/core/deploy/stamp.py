"""Which model a gallery or an embeddings file belongs to: a digest of the weights that
embedded it, and the kind and size of the embeddings (point or Gaussian meta-embedding)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metaemb.core.errors import GalleryError, MetaembError
from metaemb.core.gme.algebra import GME


def model_digest(model_state: Mapping[str, Tensor]) -> str:
    """16 hex digits of SHA-256 over a model's weights (names, dtypes, shapes and bytes): the
    same weights give the same digest whichever file (best.pt, last.pt, a copy) holds them."""
    h = hashlib.sha256()
    for name in sorted(model_state):
        t = model_state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def view_options_in_effect(features: Any) -> dict[str, Any]:
    """The features' view options (`view_options`: a flip test) away from their defaults: the
    same weights then make other embeddings of the same file."""
    names = getattr(type(features), "view_options", None)
    in_effect = test_options_in_effect(features)
    return in_effect if names is None else {k: v for k, v in in_effect.items() if k in names}


def test_options_in_effect(features: Any) -> dict[str, Any]:
    """The features' test options (`test_options`: a flip test) whose values are not the class's
    defaults: they change the embeddings the same weights make."""
    from metaemb.core.plugin.options import options_of

    names = getattr(type(features), "test_options", ()) or ()
    if not names:
        return {}
    defaults = {k: o.default for k, o in options_of(type(features)).items()}
    return {k: getattr(features, k) for k in names if getattr(features, k) != defaults.get(k)}


def embedding_digest(weights: str, features: Any) -> str:
    """Which embeddings a model makes: its weights' digest, extended by the features' view
    options in effect (the same weights with a flip test make other embeddings, which a
    gallery of the plain ones must not take). Unchanged where none is set."""
    opts = view_options_in_effect(features)  # not a cap such as max_eval_seconds: a run
    if not opts:  # trained with one keeps the digest its galleries recorded before
        return weights
    text = weights + json.dumps(opts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def same_model(held: str | None, digest: str | None) -> bool:
    """Whether weights `digest` are those that made embeddings stamped `held` (both known)."""
    return bool(held) and held == digest


def refuse_other_model(
    digest: str,
    held: str | None,
    *,
    given: str,
    verb: str,
    what: str,
    remedy: str,
    stamp: str = "",
    error: type[MetaembError] = MetaembError,
) -> None:
    """The one check "is this the model that embedded X": `given` (a checkpoint, weights
    `digest`) against `what` (a gallery or collection) that weights `held` `verb` (enrolled,
    embedded; `stamp`: a longer description of them). Embeddings without a stamp are not
    refused."""
    if not held or same_model(held, digest):
        return
    raise error(
        f"{given} is not the model that {verb} {what}: it was {verb} with another model "
        f"({stamp or f'model {held}'}), and this one is model {digest} (a model digest covers "
        "the weights and the test views in effect, such as a flip test). Embeddings of "
        f"different models are not comparable: {remedy}."
    )


@dataclass(frozen=True)
class ModelStamp:
    """Which model a gallery belongs to; `digest` decides, the rest makes messages readable."""

    digest: str
    kind: str  # "point" or "gme"
    dim: int
    full: bool = False  # GME with full [d, d] precisions
    config_hash: str = ""
    epoch: int = -1
    checkpoint: str = ""

    @classmethod
    def of(cls, state: Any, embeddings: Any, checkpoint: str = "", digest: str = "") -> ModelStamp:
        """The stamp of the model that produced `embeddings`: a loaded run (its `digest`, test
        views included) or a checkpoint `state` (`digest`: its `embedding_digest` when known,
        else the weights')."""
        if hasattr(state, "digest") and hasattr(state, "state"):  # a LoadedRun
            checkpoint = checkpoint or str(getattr(state, "path", "") or "")
            digest, state = digest or state.digest, state.state
        kind, dim, full = embedding_kind(embeddings)
        return cls(
            digest=digest or model_digest(state["model"]),
            kind=kind,
            dim=dim,
            full=full,
            config_hash=str(state.get("config_hash", "")),
            epoch=int(state.get("epoch", -1)),
            checkpoint=checkpoint,
        )

    def describe(self) -> str:
        bits = [f"model {self.digest}", f"config {self.config_hash or '?'}"]
        if self.epoch >= 0:
            bits.append(f"epoch {self.epoch}")
        if self.checkpoint:
            bits.append(f"'{self.checkpoint}'")
        return ", ".join(bits)


def embedding_kind(x: Any) -> tuple[str, int, bool]:
    if isinstance(x, GME):
        return "gme", x.dim, x.full
    if isinstance(x, Tensor) and x.dim() == 2 and x.is_floating_point():
        return "point", int(x.shape[1]), False
    raise GalleryError(
        f"embeddings must be a [N, dim] float tensor or a GME, got {type(x).__name__}"
        + (f" of shape {tuple(x.shape)}" if isinstance(x, Tensor) else "")
    )


def stored_parts(x: Any) -> dict[str, Tensor]:
    """Embeddings → the named CPU tensors stored for them."""
    if isinstance(x, GME):
        return {"a": x.a.detach().cpu().float(), "b": x.b.detach().cpu().float()}
    return {"embeddings": x.detach().cpu().float()}
