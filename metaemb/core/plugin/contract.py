"""The data contract: what each component yields and accepts, checked before any data is read.

A **Kind** names a kind of value travelling through the pipeline plus optional parameters:
``Kind("waveform", rate=16000)``, ``Kind("feature-matrix")``. Kind names are plain strings chosen by
the plugins that produce them; the core names only the values it produces itself: pooled
``features`` (backbone → head), point ``embedding`` and ``gme`` (head → objective, scorer).

Every component declares its side of the contract as class attributes (or, for a factory function,
as keyword arguments of ``register(name, factory, yields=..., accepts=...)``):

==============  ====================  ===========================================
component       declares              example (speaker plugin)
==============  ====================  ===========================================
SampleFolder    ``yields``            ``Kind("waveform", rate=Opt("sample_rate"))``
Frontend        ``accepts``/``yields``  ``accepts`` as above, ``yields = SAME``
Features        ``accepts``/``yields``  waveform → ``Kind("feature-matrix")``
Backbone        ``accepts``           ``Kind("feature-matrix")`` (yields ``FEATURES``)
Head            ``yields``            ``EMBEDDING`` or ``GME`` (from ``Head.output``)
Objective       ``accepts``           ``EMBEDDING`` / ``GME`` / ``ANY`` (from ``needs``)
Scorer          ``accepts``           ``EMBEDDING`` / ``GME`` / ``ANY`` (from ``needs``)
==============  ====================  ===========================================

- ``Opt("name")`` as a parameter value is filled with the component's resolved option, so a
  parameter has one source of truth (the option) and ``resolve`` checks that neighbours agree.
- ``accepts`` may be one Kind or a tuple of alternatives; ``ANY`` accepts every kind.
- ``yields = SAME`` passes the accepted kind through (a frontend that only trims or aligns).
- Either attribute may be a callable ``(options) -> Kind | tuple`` for composites whose contract
  depends on their options (e.g. the distill objective accepts what its task accepts).
- A component that declares nothing is not checked (third-party plugins written before the
  contract keep working); declare both sides to get the resolve-time check.

Parameters compare only where both sides give them: ``Kind("waveform")`` accepts a waveform at
any rate, ``Kind("waveform", rate=16000)`` refuses ``Kind("waveform", rate=8000)``.

`check_chain(config)` (in `metaemb.core.config.chain`) walks folder → frontend → features → backbone → head → objective → scorer
and raises one ConfigError naming both components of the first link that does not fit and what
each gives and wants. At run time a component handed something it cannot use raises DataError
(`expect_tensor` helps); the sample pipeline adds the file's path to the message.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from metaemb.core.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor


@dataclass(frozen=True)
class Opt:
    """A Kind parameter taken from the declaring component's option `name` (dotted for a
    nested table, e.g. ``Opt("filters.sample_rate")``)."""

    name: str


@dataclass(frozen=True, init=False)
class Kind:
    """A kind of value (a plain string chosen by a plugin) with optional parameters."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    # parameter -> the option it came from (filled by `bind`; only used in messages)
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __init__(self, name: str, **params: Any) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError("a Kind needs a non-empty name")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "params", tuple(sorted(params.items())))
        object.__setattr__(self, "sources", ())

    def param(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)

    def bind(self, options: Mapping[str, Any]) -> Kind:
        """Replace `Opt` parameters by the resolved option values."""
        out: dict[str, Any] = {}
        sources: list[tuple[str, str]] = []
        for key, value in self.params:
            if isinstance(value, Opt):
                sources.append((key, value.name))
                value = _lookup(options, value.name)
            out[key] = value
        kind = Kind(self.name, **out)
        object.__setattr__(kind, "sources", tuple(sources))
        return kind

    def fits(self, accepted: Kind) -> bool:
        """Whether a value of this kind is acceptable where `accepted` is wanted."""
        if accepted.name == ANY.name:
            return True
        if accepted.name != self.name:
            return False
        mine = dict(self.params)
        return all(mine[k] == v for k, v in accepted.params if k in mine and v is not None)

    def __str__(self) -> str:
        if self.name in _WORDS:
            return _WORDS[self.name]
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.params)})"


def _lookup(options: Mapping[str, Any], dotted: str) -> Any:
    value: Any = options
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


_WORDS = {"*": "anything", "=": "its input's kind"}
ANY = Kind("*")  # accepts every kind
SAME = Kind("=")  # yields: passes its input's kind through
FEATURES = Kind("features")  # backbone → head: pooled features [N, D]
EMBEDDING = Kind("embedding")  # head → objective/scorer: point embeddings [N, d]
GME = Kind("gme")  # head → objective/scorer: Gaussian meta-embeddings (a, b)

_NEEDS = {"point": EMBEDDING, "gme": GME, "any": ANY}

Kinds = tuple[Kind, ...]


def declaration(factory: Any, info: Mapping[str, Any], attr: str) -> Any:
    """A component's `yields`/`accepts` as declared, unbound: given at registration, else on
    the factory or the class it returns (a head's `output`, an objective's `needs`); None
    when it declares nothing."""
    value = info.get(attr)
    for source in (factory, _returns(factory)):
        if value is not None or source is None:
            break
        value = getattr(source, attr, None)
        if value is None and attr == "yields" and hasattr(source, "output"):  # heads
            value = _NEEDS.get(str(source.output))
        elif value is None and attr == "accepts" and hasattr(source, "needs"):  # objectives…
            value = _NEEDS.get(str(source.needs))
    return value


def declared(entry: Any, attr: str, options: Mapping[str, Any]) -> Kinds | None:
    """A component's `yields`/`accepts`, bound to its options; None when it declares nothing."""
    value = declaration(entry.factory, entry.info, attr)
    if callable(value) and not isinstance(value, Kind):
        value = value(options)
    if value is None:
        return None
    kinds = (value,) if isinstance(value, Kind) else tuple(value)
    for k in kinds:
        if not isinstance(k, Kind):
            raise ConfigError(
                f"{entry.plugin}'s component '{entry.name}' declares {attr}={value!r}; "
                "expected a metaemb.core.plugin.contract.Kind or a tuple of them."
            )
    return tuple(k.bind(options) for k in kinds)


_declared = declared  # the earlier private name (tests/test_conformance.py uses it)


def _returns(factory: Any) -> type | None:
    """The class a factory function is annotated to return (its contract is that class's)."""
    if inspect.isclass(factory) or not callable(factory):
        return None
    try:
        ret = typing.get_type_hints(factory).get("return")
    except Exception:
        return None
    return ret if inspect.isclass(ret) else None


def _show(kinds: Kinds) -> str:
    return " or ".join(str(k) for k in kinds)


# The config key choosing each section's component (for messages).
CHOICE_KEYS = {
    "folder": "data.folder",
    "frontend": "model.frontend",
    "features": "model.features",
    "backbone": "model.backbone",
    "head": "model.head",
    "objective": "train.objective",
    "scorer": "eval.scorer",
}


@dataclass
class Link:
    """One component in the chain: its config section, name and bound contract."""

    section: str
    name: str
    accepts: Kinds | None
    yields: Kinds | None

    @property
    def label(self) -> str:
        return f"{self.section} '{self.name}'"


def _same_word(a: str, b: str) -> bool:
    """Kind names equal but for case and separators (`timing_matrix`, `Timing-Matrix`)."""

    def key(name: str) -> str:
        return "".join(c for c in name.lower() if c.isalnum())

    return key(a) == key(b)


def _fix_hint(given_by: Link, given: Kind, wanted_by: Link, wanted: Kinds) -> str:
    """Which options to make agree, when the mismatch is in parameters bound to options."""
    same_name = [w for w in wanted if w.name == given.name]
    near = [w.name for w in wanted if _same_word(w.name, given.name) and w.name != given.name]
    if near:  # `timing_matrix` against `timing-matrix`: one kind spelt two ways
        return (f"'{near[0]}' and '{given.name}' look like one kind spelt two ways: kind names "
                "must match exactly; use one spelling in both components.")  # fmt: skip
    if not same_name:
        return (
            f"Choose another {wanted_by.section} ({CHOICE_KEYS.get(wanted_by.section, '')}) "
            f"that accepts {given.name}, or a {given_by.section} "
            f"({CHOICE_KEYS.get(given_by.section, '')}) that yields {_show(wanted)}; "
            f"`metaemb list` shows each component's contract."
        )
    w = same_name[0]
    hints = []
    for key, value in w.params:
        if given.param(key) is None or given.param(key) == value:
            continue
        opts = [
            f"{link.section}.{src}"
            for link, kind in ((given_by, given), (wanted_by, w))
            for k, src in kind.sources
            if k == key
        ]
        if opts:
            hints.append(f"set {' and '.join(opts)} to the same value")
    if hints:
        return "Make them agree: " + "; ".join(hints) + "."
    fixed = "; ".join(
        f"{key}: {given_by.section} {given.param(key)}, {wanted_by.section} {value}"
        for key, value in w.params
        if given.param(key) is not None and given.param(key) != value
    )
    return (  # parameters fixed in the components' declarations, not bound to options
        f"The two declare {given.name} differently ({fixed}). Choose a {wanted_by.section} "
        f"({CHOICE_KEYS.get(wanted_by.section, '')}) or {given_by.section} "
        f"({CHOICE_KEYS.get(given_by.section, '')}) that agree, or bind the parameter to an "
        'option with Opt("…") in the plugin\'s declaration.'
    )


def check_links(links: Iterable[Link]) -> None:
    """Walk the chain; raise one ConfigError at the first link whose kinds do not fit."""
    given: Kinds | None = None
    source: Link | None = None
    via: list[str] = []
    for link in links:
        if given is not None and source is not None and link.accepts is not None:
            ok = [g for g in given if any(g.fits(a) for a in link.accepts)]
            if not ok:
                route = f" (through {', '.join(via)})" if via else ""
                g = given[0]
                raise ConfigError(
                    f"{link.label} accepts {_show(link.accepts)}, but {source.label}{route} "
                    f"yields {_show(given)}: they do not fit. "
                    + _fix_hint(source, g, link, link.accepts)
                )
            given = tuple(ok)
        if link.yields is None:  # undeclared: nothing to check downstream of it
            given, source, via = None, None, []
        elif link.yields == (SAME,):
            if given is not None and link.section != "objective":  # scorers read the head
                via.append(link.label)
        else:
            given, source, via = link.yields, link, []


# ---------------------------------------------------------------------------------------------
# run-time checks
def expect_tensor(
    value: Any,
    what: str,
    component: str,
    ndim: int | tuple[int, ...] | None = None,
    floating: bool | None = None,
) -> Tensor:
    """`value` as a tensor of `ndim` dimensions, or a DataError saying what `component` wanted.

    The sample pipeline adds the file's path, so components need not know it.
    """
    import torch

    if not isinstance(value, torch.Tensor):
        raise DataError(f"{component} expects {what}, got a {type(value).__name__}.")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if dims is not None and value.dim() not in dims:
        raise DataError(
            f"{component} expects {what} ({' or '.join(map(str, dims))}-D), got a tensor of shape "
            f"{list(value.shape)}: the folder or frontend before it yields something else."
        )
    if floating is not None and value.is_floating_point() != floating:
        raise DataError(f"{component} expects {what}, got a tensor of dtype {value.dtype}.")
    return value


def name_file(exc: DataError, path: str) -> DataError:
    """`exc` with `path` in its message (unchanged when the message already names it before
    its first colon: a path only in a quoted library error, `KeyError: 'a/1.png'`, names
    nothing to the reader)."""
    msg = str(exc)
    if path in msg.split(": ", 1)[0]:
        return exc
    return type(exc)(f"'{path}': {msg}")


__all__ = [
    "ANY",
    "EMBEDDING",
    "FEATURES",
    "GME",
    "SAME",
    "Kind",
    "Link",
    "Opt",
    "check_links",
    "declared",
    "expect_tensor",
    "name_file",
]
