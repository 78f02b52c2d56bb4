"""Build registered components from config: options are a factory's typed keyword arguments.

A factory's keyword parameters are its user options (validated against their annotations), except
the context names the engine supplies itself (root, cache_dir, in_channels, …).
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any

from metaemb.core.errors import ConfigError, suggest
from metaemb.core.plugin.manager import registry

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


def options_of(factory: Any) -> dict[str, Option]:
    """The user-tunable keyword options of a factory, with their types and defaults."""
    fn = _callable(factory)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    out: dict[str, Option] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in ("self", "cls") or p.name in CONTEXT_NAMES:
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = Option(p.name, hints.get(p.name, Any), p.default)
    return out


def _accepts(factory: Any) -> set[str]:
    params = inspect.signature(_callable(factory)).parameters
    return {p.name for p in params.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def coerce(value: Any, typ: Any, where: str) -> Any:
    """Check/convert `value` (from TOML or a --set string) to annotation `typ`, or raise ConfigError."""
    if typ is Any or typ is _EMPTY:
        return value
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a valid {_typename(typ)}")
    if origin is typing.Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(
            f"{where}: {value!r} is not one of {choices}.{suggest(str(value), map(str, args))}"
        )
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list ({_typename(typ)}), got {value!r}")
        inner = args[0] if args else Any
        items = [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if typ is bool:
        if isinstance(value, bool):
            return value
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
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if typ is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{where}: expected a table, got {value!r}")
    return value


def _typename(typ: Any) -> str:
    return getattr(typ, "__name__", None) or str(typ).replace("typing.", "")


def validate_options(kind: str, name: str, options: dict[str, Any], section: str) -> dict[str, Any]:
    """Check user options for component `name` of `kind`; return them coerced to their types."""
    factory = registry(kind).get(name)
    known = options_of(factory)
    out = {}
    for key, value in options.items():
        if key not in known:
            valid = ", ".join(sorted(known)) or "(none)"
            raise ConfigError(
                f"unknown config key '{section}.{key}' for {registry(kind).singular} '{name}';"
                f"{suggest(key, known)} valid keys: {valid}."
            )
        out[key] = coerce(value, known[key].type, f"config key '{section}.{key}'")
    return out


def build(kind: str, name: str, options: dict[str, Any] | None = None, **context: Any) -> Any:
    """Instantiate component `name` of `kind` with validated options plus the context it accepts."""
    factory = registry(kind).get(name)
    accepted = _accepts(factory)
    kwargs = {k: v for k, v in context.items() if k in accepted}
    kwargs.update(options or {})
    return factory(**kwargs)
