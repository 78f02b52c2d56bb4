"""A component's options, read from its constructor: typed keyword arguments, minus the context
the engine supplies and the internal arguments; and `coerce`, which turns a TOML or `--set` value
into a value of an option's type hint (or says why it is not one). Nothing here needs the
registry, so registering a component can check its defaults with it."""

from __future__ import annotations

import inspect
import numbers
import types
import typing
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from metaemb.core.errors import ConfigError, suggest

CONTEXT_NAMES = frozenset(
    {
        "root",
        "cache_dir",
        "in_channels",
        "in_features",
        "dim",
        "num_classes",
        "labels",
        "batch_size",
        "seed",
        "rank",
        "world_size",
        "out",
        "trials",  # a protocol's trial list (None: its default file), with `root`
    }
)

_EMPTY = inspect.Parameter.empty


@dataclass(frozen=True)
class Option:
    name: str
    type: Any
    default: Any


def _callable(factory: Any) -> Any:
    return factory.__init__ if inspect.isclass(factory) else factory


def internal_names(factory: Any) -> frozenset[str]:
    """Constructor arguments that are not user options (the factory's `internal` attribute)."""
    return frozenset(getattr(factory, "internal", ()) or ())


def parts_of(factory: Any) -> dict[str, Any]:
    """A composite's nested-table options: {option name: registry kind of the part, or the
    part's factory when the part is fixed (e.g. the filterbank of speech features)}."""
    return dict(getattr(factory, "parts", None) or {})


def options_of(factory: Any, internal: bool = False) -> dict[str, Option]:
    """The user-tunable keyword options of a factory, with their types and defaults (with
    `internal`, its internal constructor arguments too: the run hash counts every default)."""
    fn = _callable(factory)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    hidden = frozenset() if internal else internal_names(factory)
    out: dict[str, Option] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in ("self", "cls") or p.name in CONTEXT_NAMES:
            continue
        if p.name in hidden or (p.name.startswith("_") and not internal):
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = Option(p.name, hints.get(p.name, Any), p.default)
    return out


def _accepts(factory: Any) -> set[str]:
    params = inspect.signature(_callable(factory)).parameters
    return {p.name for p in params.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


class Unquoted(str):
    """A `--set` value that is not a TOML literal (e.g. `sgd`, `0.01,0.05`): text that may still
    be read as a number or boolean. A quoted TOML string ("0.1") never is."""


def _text_number(value: Any, where: str, what: str) -> None:
    if isinstance(value, str) and not isinstance(value, Unquoted):
        raise ConfigError(
            f"{where}: expected {what}, got the string {value!r}; write it without quotes."
        )


def _shown(value: Any) -> str:
    """A value for a message, cut to 60 characters with an ellipsis (never half a repr)."""
    text = repr(str(value)) if isinstance(value, PurePath) else repr(value)  # not PosixPath(…)
    return text if len(text) <= 60 else text[:59] + "…"


def coerce(value: Any, typ: Any, where: str) -> Any:
    """Check/convert `value` (from TOML or a --set string) to annotation `typ`, or raise ConfigError."""
    if typ is Any or typ is _EMPTY:  # an unannotated option: plain text, not our Unquoted
        return str(value) if isinstance(value, Unquoted) else value
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_typename(typ)}, got {value!r}.")
    if origin is typing.Literal:
        if value in args:
            return str(value) if isinstance(value, str) else value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(
            f"{where}: {value!r} is not one of {choices}.{suggest(str(value), map(str, args))}"
        )
    if origin in (list, tuple):
        if isinstance(value, Unquoted) and value.strip().lower() in ("null", "none"):
            raise ConfigError(
                f"{where}: {value.strip()} is no value here (a configuration has no null); leave "
                "the key out for its default, or give a list."
            )
        if isinstance(value, str):
            mark = Unquoted if isinstance(value, Unquoted) else str
            value = [mark(v.strip()) for v in value.split(",") if v.strip()]
        if origin is list and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # `--set eval.p_targets=0.01`: a list of one
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list ({_typename(typ)}), got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[float, float]: fixed
            if len(value) != len(args):
                raise ConfigError(
                    f"{where}: expected {len(args)} values ({_typename(typ)}), got "
                    f"{len(value)}: {_shown(list(value))}."
                )
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(coerce(v, t, f"{where}[{i}]") for i, (v, t) in pairs)
        inner = args[0] if args else Any
        items = [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # `--set x=1`, as the METAEMB_* switches
            return bool(value)
        _text_number(value, where, "true or false")
        if isinstance(value, str) and value.lower() in (
            "true",
            "1",
            "yes",
            "on",
            "false",
            "0",
            "no",
            "off",
        ):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, numbers.Integral):  # numpy integers too
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        _text_number(value, where, "an integer")
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, numbers.Real):  # numpy numbers too
            return float(value)
        _text_number(value, where, "a number")
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if typ is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{where}: expected a table, got {value!r}")
    return value


def _typename(typ: Any) -> str:
    """How a type reads in a message: `int | None`, `true or false or one of 'a', 'b'`."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_typename(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or none" if type(None) in args else "")
    if typ is bool:
        return "true or false"
    if origin in (list, tuple):  # list[int], tuple[float, float]: the element types count
        return str(typ).replace("typing.", "")
    return getattr(typ, "__name__", None) or str(typ).replace("typing.", "")
