"""Which scorer scores what: the one place that picks a scorer and refuses one that cannot
score here.

`choose_scorer(loaded, name, purpose, …)` takes the scorer named (`--scorer`), else the run's
own (its options and the fitted state its checkpoint holds), else the default for the kind of
embeddings (`default_scorer_name`: cosine for point embeddings, gme for Gaussian
meta-embeddings). A scorer that cannot score here is refused with a `ScorerError`, worded the
same whichever command asked:

- an unknown name (the registry's message: the close names and the registered ones);
- a scorer that accepts the other kind of embeddings ("… holds Gaussian meta-embeddings and
  scorer 'cosine' accepts embedding: score it with gme, or leave --scorer out …");
- a scorer that must be fitted and has no fitted state here ("scorer 'plda' must be fitted,
  and the run '…' holds no fitted 'plda' …: pass --scorer cosine (or euclidean) …");
- searching (a gallery, or the run's own scorer by default) with a scorer that cannot pool
  and score in blocks (not a PointScorer).

Purposes: "verification" (trial scores, `evaluate`: given `fit`, an unfitted scorer is fitted
with it, on the run's training split, instead of refused); "measure" (`evaluate --measure
class|match`); "search" (`identify`, `neighbours`: without a name, the run's own scorer where
it can rank `kind` embeddings, else the default with a warning saying why); "gallery" (a
gallery's block search, given a name, a built scorer or None).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from metaemb.core.errors import MetaembError, ScorerError, UnknownComponentError

if TYPE_CHECKING:
    from metaemb.core.deploy.loading import LoadedRun
    from metaemb.core.plugin.contract import Kind
    from metaemb.core.plugin.interfaces import Scorer
    from metaemb.core.plugin.registry import Entry

Purpose = Literal["verification", "measure", "search", "gallery"]

#: how messages name each kind of embeddings (a gallery's "point" is the contract's "embedding")
_WHAT = {"point": "point embeddings", "embedding": "point embeddings",
         "gme": "Gaussian meta-embeddings"}  # fmt: skip


def default_scorer_name(kind: str) -> str:
    """The scorer of a kind of embeddings when none is chosen: the closed-form GME LLR for
    Gaussian meta-embeddings ("gme"), cosine for point embeddings."""
    return "gme" if kind == "gme" else "cosine"


def default_scorer(kind: str) -> Scorer:
    """`default_scorer_name(kind)`, built at its defaults."""
    from metaemb.core.plugin.components import build

    return build("scorers", default_scorer_name(kind), {})


@dataclass(frozen=True)
class Refusal:
    """Why a scorer cannot score here (`why`, also the reason a search's fallback warning
    gives) and what to pass instead."""

    why: str
    instead: str

    def error(self) -> ScorerError:
        return ScorerError(f"{self.why}: {self.instead}.")


def _kind_name(kind: str) -> str:
    return "embedding" if kind == "point" else kind


def _fitting_free(kind: str, refused: str | None = None) -> str:
    """Scorers of `kind` embeddings that need no fitting, as options to pass; not `refused`,
    the run's own scorer of that name when its options need fitting (a speaker run's cosine
    after the training mean and WCCN: `--scorer cosine` means it)."""
    if kind in ("point", "embedding"):
        if refused == "cosine":
            return "--scorer euclidean, which needs no fitting"
        return "--scorer cosine (or euclidean), which needs no fitting"
    if kind == "gme" and refused != "gme":
        return "--scorer gme, which needs no fitting"
    return f"a scorer that accepts {kind} and needs no fitting"


def _held_name(held: tuple[Kind, ...]) -> str:
    return next((k.name for k in held if k.name in _WHAT), held[0].name)


def run_label(loaded: LoadedRun) -> str:
    """How messages name a loaded run: its checkpoint file."""
    return f"the run '{loaded.path}'"


def _kind_refusal(
    name: str, accepts: tuple[Kind, ...] | None, held: tuple[Kind, ...] | None, says: str,
    own: str | None,
) -> Refusal | None:  # fmt: skip
    """Scorer `name` (accepting `accepts`) given embeddings of kinds `held` (`says`: "the
    collection 'c.pt' holds", "the run '…' (head 'linear') yields"): None when they fit or
    either side declares nothing."""
    if not accepts or not held or any(h.fits(a) for h in held for a in accepts):
        return None
    kind = _held_name(held)
    fits = {"embedding": "cosine, euclidean, …", "gme": "gme"}.get(
        kind, f"a scorer that accepts {kind}"
    )
    out = f" (the run's own '{own}')" if own and own != name else ""
    return Refusal(
        f"{says} {_WHAT.get(kind, f'{kind} embeddings')} and scorer '{name}' accepts "
        f"{', '.join(a.name for a in accepts)}",
        f"score it with {fits}, or leave --scorer out{out}; `metaemb list scorers` shows what "
        "each scorer accepts",
    )


def _fit_refusal(name: str, kind: str, ask: _Ask) -> Refusal:
    """Scorer `name` must be fitted and there is no fitted state for it here: the run holds
    none, or no run is at hand (`ask.no_run` says why)."""
    loaded = ask.loaded
    own = loaded.config.eval.scorer if loaded is not None else None
    # the run's own scorer is offered as "leave --scorer out" (it may carry fitted options:
    # a speaker run's cosine after the training mean and WCCN), not as one needing no fitting
    free = _fitting_free(kind, refused=own)
    instead = ("use " if free.startswith("a ") else "pass ") + free
    if loaded is None and ask.no_run:  # a collection whose run cannot lend its fitted state
        return Refusal(
            f"scorer '{name}' must be fitted, and no run holding a fitted '{name}' is at hand "
            f"for {ask.holder} ({ask.no_run})",
            f"pass --run RUN (the run that embedded it) to use its fitted '{name}', or {instead}",
        )
    if loaded is None:  # a scorer built by name, or given built, without its state
        return Refusal(
            f"scorer '{name}' must be fitted, and it has not been fitted",
            "fit it first (its fit() on training embeddings, or a run's fitted one from "
            f"LoadedRun.scorer()), or {instead}",
        )
    its = f" (its scorer is '{own}')" if own != name else " (with the run's options)"
    if own != name:
        instead += f", or leave --scorer out to score with the run's own '{own}'"
    if ask.purpose == "measure":
        instead += " (`metaemb evaluate` without --measure fits it on the run's training samples)"
    return Refusal(
        f"scorer '{name}' must be fitted, and {ask.run} holds no fitted '{name}'{its}", instead
    )


def _search_refusal(scorer: Scorer, label: str, kind: str, holder: str) -> Refusal | None:
    """A built scorer that cannot search `kind` embeddings in blocks (a gallery's pooled
    identities, or the run's own scorer ranking a search by default)."""
    from metaemb.core.scoring.scorers import PointScorer

    needs = getattr(scorer, "needs", "point")
    if needs == "point" == kind and not isinstance(scorer, PointScorer):
        return Refusal(
            f"scorer '{label}' cannot search {holder}: a search pools each identity's "
            "embeddings and scores them in blocks, which needs a PointScorer subclass "
            "(metaemb.core.scoring.scorers.PointScorer, with prepare/pool/block/pairs); a plain "
            "Scorer can verify trials but not search",
            "pass --scorer cosine (or euclidean)",
        )
    if needs != kind:
        from metaemb.core.plugin.contract import Kind

        refusal = _kind_refusal(label, (Kind(_kind_name(needs)),), (Kind(_kind_name(kind)),),
                                f"{holder} holds", None)  # fmt: skip
        if refusal is not None:
            return refusal
        return Refusal(  # "any": it scores whatever it is given, but cannot pool them
            f"scorer '{label}' scores {needs} embeddings and {holder} holds {_WHAT[kind]}",
            f"score it with {default_scorer_name(kind)}, or leave --scorer out",
        )
    if getattr(scorer, "requires_fit", False) and not getattr(scorer, "fitted", True):
        return _fit_refusal(label, kind, _Ask(None, "gallery", kind, "", holder, ""))
    return None


def _head(loaded: LoadedRun | None) -> str:
    return f"head '{loaded.config.model.head}'" if loaded is not None else "its head"


def _entry(name: str) -> Entry:
    from metaemb.core.plugin.manager import registry

    try:
        return registry("scorers").entry(name)
    except UnknownComponentError as exc:  # the registry's wording: close names, the others
        raise ScorerError(str(exc)) from None


def _held(loaded: LoadedRun | None, kind: str | None) -> tuple[Kind, ...] | None:
    """The kinds of embeddings scored: `kind` (a gallery's or a collection's), else what the
    run's head yields (None when it declares nothing)."""
    from metaemb.core.plugin.contract import Kind, declared

    if kind is not None:
        return (Kind(_kind_name(kind)),)
    if loaded is None:
        return None
    from metaemb.core.plugin.manager import registry

    cfg = loaded.config
    return declared(registry("heads").entry(cfg.model.head), "yields", cfg.options("head"))


@dataclass(frozen=True)
class _Ask:
    """What a scorer is chosen for: the run (None: none at hand, `no_run` says why), the
    purpose, the kind of embeddings scored (None: what the run's head yields), and how
    messages name the run and what holds the embeddings."""

    loaded: LoadedRun | None
    purpose: Purpose
    kind: str | None
    run: str
    holder: str
    no_run: str


def _refusal_or_scorer(name: str, ask: _Ask) -> tuple[Scorer | None, bool, Refusal | None]:
    """(scorer, still needs fitting, None), or (the scorer or None, …, why it cannot score
    here)."""
    from metaemb.core.plugin.components import build, full_options
    from metaemb.core.plugin.contract import declared

    loaded = ask.loaded
    entry = _entry(name)
    opts = loaded.scorer_options(name) if loaded is not None else {}
    accepts = declared(entry, "accepts", full_options("scorers", name, opts))
    own = loaded.config.eval.scorer if loaded is not None else None
    says = f"{ask.holder} holds" if ask.kind else f"{ask.run} ({_head(loaded)}) yields"
    refusal = _kind_refusal(name, accepts, _held(loaded, ask.kind), says, own)
    if refusal is not None:
        return None, False, refusal
    if loaded is not None:
        scorer, needs_fit = loaded.scorer(name)
    else:
        scorer = build("scorers", name, {})
        needs_fit = bool(scorer.requires_fit)
    if needs_fit:
        held = _held(loaded, None)
        kind = ask.kind or (_held_name(held) if held else "point")
        return scorer, True, _fit_refusal(name, kind, ask)
    return scorer, False, None


def choose_scorer(
    loaded: LoadedRun | None,
    name: str | Scorer | None,
    purpose: Purpose,
    *,
    kind: str | None = None,
    holder: str = "",
    run: str = "",
    command: str = "",
    no_run: str = "",
    recorded: str | None = None,
    fit: Callable[[Scorer, str], None] | None = None,
) -> Scorer:
    """The scorer to score with, or a `ScorerError` saying why it cannot score here.

    `loaded`: the run (None: none at hand, e.g. a collection whose run is gone: `no_run` says
    why, `recorded` is the scorer the collection says its run had); `name`: `--scorer` (None:
    the run's own, or for a search the run's own where it can rank, else the default; for
    "gallery" also a built scorer); `kind`: the embeddings scored ("point" or "gme"; None: what
    the run's head yields); `holder`: what holds them, in messages ("the gallery 'g.pt'");
    `run`: how messages name the run (default: its checkpoint); `command`: names a search in
    its fallback warning; `fit(scorer, name)`: fits a scorer that needs it (verification)
    instead of refusing it."""
    run = run or (run_label(loaded) if loaded is not None else "")
    ask = _Ask(loaded, purpose, kind, run, holder or run, no_run)
    if purpose == "gallery":
        if kind is None:
            raise ValueError("choose_scorer(..., 'gallery') needs the gallery's kind")
        if name is None:
            scorer, label = default_scorer(kind), default_scorer_name(kind)
        elif isinstance(name, str):
            scorer, label = _named(name, ask, fit), name
        else:
            scorer, label = name, type(name).__name__
        refusal = _search_refusal(scorer, label, kind, ask.holder)
        if refusal is not None:
            raise refusal.error()
        return scorer
    if name is not None and not isinstance(name, str):
        raise TypeError(f"choose_scorer(..., {purpose!r}) takes a scorer's name, not a scorer")
    if purpose == "search" and name is None:
        if kind is None:
            raise ValueError("choose_scorer(..., 'search') needs the kind of embeddings searched")
        return _own_or_default(ask, kind, command, recorded)
    if name is None:
        if loaded is None:
            return default_scorer(kind or "point")
        name = loaded.config.eval.scorer
    return _named(name, ask, fit)


def _named(name: str, ask: _Ask, fit: Callable[[Scorer, str], None] | None) -> Scorer:
    scorer, needs_fit, refusal = _refusal_or_scorer(name, ask)
    if scorer is not None and refusal is None:
        return scorer
    if scorer is not None and needs_fit and fit is not None:
        fit(scorer, name)  # verification: evaluate fits it on the run's training split
        return scorer
    assert refusal is not None
    raise refusal.error()


def _own_or_default(ask: _Ask, kind: str, command: str, recorded: str | None) -> Scorer:
    """A search without --scorer ranks with the run's own scorer, fitted state included, so
    `identify` and `neighbours` rank as `evaluate` scores; where it cannot rank (no run at
    hand, a fitted scorer without its state, a scorer of another kind or one that does not pool
    and score in blocks), with the default for `kind`, and a warning saying why."""
    if ask.loaded is None:
        why = ""
        if ask.no_run:
            why = (f"the run that embedded {ask.holder} is not at hand ({ask.no_run}); pass "
                   "--run RUN to rank with its scorer")  # fmt: skip
        note_default_scorer(recorded, kind, command, why)
        return default_scorer(kind)
    name = ask.loaded.config.eval.scorer
    try:
        scorer, _, refusal = _refusal_or_scorer(name, ask)
    except MetaembError as exc:  # e.g. the plugin of its scorer is not installed here
        scorer, refusal = None, Refusal(str(exc).rstrip("."), "")
    if scorer is not None and refusal is None:
        refusal = _search_refusal(scorer, name, kind, ask.holder)
        if refusal is None:
            return scorer
    note_default_scorer(name, kind, command, refusal.why if refusal is not None else "")
    return default_scorer(kind)


def note_default_scorer(run_scorer: str | None, kind: str, command: str, why: str = "") -> None:
    """A search that does not rank with the run's own scorer says so: evaluate and this
    command would rank differently without a word."""
    default = default_scorer_name(kind)
    if run_scorer and (run_scorer != default or why):  # a cosine of its own options too
        warnings.warn(
            f"{command} ranks with '{default}' at its defaults, not with the run's scorer "
            f"'{run_scorer}' (its options and fitted state)" + (f": {why}." if why else "."),
            stacklevel=4,
        )


__all__ = [
    "Purpose",
    "Refusal",
    "choose_scorer",
    "default_scorer",
    "default_scorer_name",
    "note_default_scorer",
    "run_label",
]
