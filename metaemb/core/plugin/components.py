"""Build registered components from config: options are a factory's typed keyword arguments.

A factory's keyword parameters are its user options (validated against their annotations), except
- the context names the engine supplies itself (root, cache_dir, in_channels, …),
- internal constructor arguments: names starting with "_" and the names in the factory's
  `internal` attribute (e.g. SampleFolder's `samples`, used by `subset`).

A composite component names its parts in a `parts` attribute, {option: registry kind}; such an
option is a nested table naming a registered component and its options, e.g.
`[scorer] top_n = 300` with `[scorer.base] name = "plda"`, `lda_dim = 100`. The composite
receives the table and builds the part with `build_part`, through the one registry.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaemb.core.errors import ConfigError, MetaembError, OutputError, PluginError, suggest
from metaemb.core.plugin.manager import registry
from metaemb.core.plugin.options import (
    _EMPTY,
    CONTEXT_NAMES,
    _accepts,
    _callable,
    _shown,
    coerce,
    options_of,
    parts_of,
)


def validate_options(kind: str, name: str, options: dict[str, Any], section: str) -> dict[str, Any]:
    """Check user options for component `name` of `kind`; return them coerced to their types.

    Nested tables of a composite's parts are checked against the part they name."""
    label = f"{registry(kind).singular} '{name}'"
    return _validate(registry(kind).get(name), label, options, section)


def _validate(factory: Any, label: str, options: Mapping[str, Any], section: str) -> dict[str, Any]:
    known = options_of(factory)
    parts = parts_of(factory)
    out = {}
    for key, value in options.items():
        if key not in known:
            valid = ", ".join(sorted(known)) or "(none)"
            if key in CONTEXT_NAMES and key in _accepts(factory):
                raise ConfigError(
                    f"'{section}.{key}' cannot be set: '{key}' is a reserved name, which "
                    f"metaemb passes to components itself where it has one (a backbone's "
                    f"in_channels is the width of the features that feed it), so the parameter "
                    f"'{key}' of {label} is never an option (a plugin makes it one by renaming "
                    f"it; docs/plugins.md lists the reserved names). "
                    f"Valid keys: {valid}."
                )
            if not known:
                raise ConfigError(f"{label} takes no options; got '{section}.{key}'.")
            raise ConfigError(
                f"unknown config key '{section}.{key}' for {label};"
                f"{suggest(key, known)} valid keys: {valid}."
            )
        if key in parts:
            out[key] = validate_part(parts[key], value, known[key].default, f"{section}.{key}")
        else:
            out[key] = coerce(value, known[key].type, f"config key '{section}.{key}'")
            _refuse_non_finite(out[key], known[key].default, f"{section}.{key}", label)
    for key, opt in known.items():
        if opt.default is _EMPTY and key not in options:
            raise ConfigError(
                f"{label} needs the option '{key}', which has no default: set it (--set "
                f"{section}.{key}=VALUE, or in the config file), or give the parameter a "
                "default in its plugin."
            )
    return out


def _refuse_non_finite(value: Any, default: Any, key: str, label: str) -> None:
    """A float option set to nan or ±inf would pass a component's own `< 0` or `> 0` check and
    surface an epoch later as a diverged loss blamed on the learning rate; an option whose
    default is itself not finite (a deliberate "no limit") may take such values."""
    floats = value if isinstance(value, (list, tuple)) else [value]
    bad = [v for v in floats if isinstance(v, float) and not math.isfinite(v)]
    if bad and not (isinstance(default, float) and not math.isfinite(default)):
        raise ConfigError(f"config key '{key}' ({label}) must be a finite number; got {value!r}.")


def part_table(value: Any, default: Any = None) -> dict[str, Any] | None:
    """A part option as a table {"name": …, options…}: a bare name is a table with only a name;
    a table without a name (or with the default's name) extends the default table. None for
    the name "none" (a composite whose part is optional)."""
    base = dict(default) if isinstance(default, Mapping) else {}
    if isinstance(default, str):
        base = {"name": default}
    if value is None or (isinstance(value, str) and value == "none"):
        return None
    if isinstance(value, str):
        table = {"name": value}
    elif isinstance(value, Mapping):
        table = dict(value)
    else:
        raise ConfigError(f"expected a component name or a table with a 'name' key, got {value!r}")
    if "name" not in table or table["name"] == base.get("name"):
        table = {**base, **table}
    return table


def validate_part(part: Any, value: Any, default: Any, where: str) -> dict[str, Any] | str:
    """Check a nested part table. A registry part (`part` is a kind such as "scorers") names a
    registered component in `name`, the rest are its options; a fixed part (`part` is a
    factory) is a table of that factory's options."""
    if not isinstance(part, str):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{where}' must be a table of options, got {value!r}.")
        return _validate(part, f"[{where}]", value, where)
    try:
        table = part_table(value, default)
    except ConfigError as exc:
        raise ConfigError(f"config key '{where}': {exc}") from None
    if table is None:
        return "none"
    name = table.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"config table [{where}] needs a 'name' naming a registered {registry(part).singular} "
            f"(`metaemb list {part}`)."
        )
    registry(part).get(name)  # unknown names fail here, with suggestions
    return {"name": name, **validate_options(part, name, table, where)}


def full_options(kind: str, name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every option of component `name` (defaults filled in, nested part tables expanded)."""
    return _full(registry(kind).get(name), options)


def _full(factory: Any, options: Mapping[str, Any] | None) -> dict[str, Any]:
    known = options_of(factory)
    out = {k: o.default for k, o in known.items()}
    out.update(options or {})
    for key, part in parts_of(factory).items():
        if key not in out:
            continue
        if not isinstance(part, str):
            out[key] = _full(part, {**(known[key].default or {}), **(out[key] or {})})
            continue
        table = part_table(out[key], known[key].default)
        if table is None:
            out[key] = "none"
            continue
        part_name = table.pop("name")
        out[key] = {"name": part_name, **full_options(part, part_name, table)}
    return out


def build_part(kind: str, value: Any, default: Any = None, **context: Any) -> Any:
    """Build a composite's part from its option value: an already built component is used as
    it is; a name or a {"name": …, options…} table is built through the registry. None for
    "none"."""
    if value is not None and not isinstance(value, (str, Mapping)):
        return value
    table = part_table(value, default)
    if table is None:
        return None
    name = table.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"a {registry(kind).singular} table needs a 'name'; got {value!r}")
    return build(kind, name, validate_options(kind, name, table, name), **context)


def described(obj: Any, kind: str) -> str:
    """How messages name a built component: "features 'mine' (plugin 'my-plugin')" when it was
    built through the registry, else its kind and class name."""
    return getattr(obj, "_metaemb_component", None) or f"{kind} {type(obj).__name__}"


def preset(factory: Any, doc: str = "", **fixed: Any) -> Any:
    """`factory` with some arguments fixed: its options are the factory's others, so a preset
    (e.g. ECAPA with C = 512) never restates the parameter list of what it presets."""
    fn = _callable(factory)
    sig = inspect.signature(fn)
    params = [
        p for p in sig.parameters.values() if p.name not in fixed and p.name not in ("self", "cls")
    ]
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}

    def made(*args: Any, **kwargs: Any) -> Any:
        return factory(*args, **{**fixed, **kwargs})

    made.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    made.__annotations__ = {k: v for k, v in hints.items() if k not in fixed}
    made.__doc__ = doc or getattr(factory, "__doc__", None)
    made.__name__ = made.__qualname__ = getattr(factory, "__name__", "preset")
    made.__wrapped_factory__ = factory  # type: ignore[attr-defined]
    for attr in ("accepts", "yields", "parts", "internal", "output", "needs", "batch"):
        if hasattr(factory, attr):
            setattr(made, attr, getattr(factory, attr))
    return made


def _disk_full(exc: BaseException, out: Any) -> bool:
    """Whether `exc` is a full disk where a component writes (`out`): an OSError saying so, or
    an error without errno (libsndfile's "System error") while that disk has next to no room."""
    import errno
    import shutil

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if out is None or (isinstance(exc, OSError) and exc.errno):
        return False
    place = Path(out)
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        return shutil.disk_usage(place).free < 1024 * 1024
    except OSError:
        return False


def build(kind: str, name: str, options: dict[str, Any] | None = None, **context: Any) -> Any:
    """Instantiate component `name` of `kind` with validated options plus the context it accepts."""
    reg = registry(kind)
    entry = reg.entry(name)
    accepted = _accepts(entry.factory)
    kwargs = {k: v for k, v in context.items() if k in accepted}
    kwargs.update(options or {})
    try:
        built = entry.factory(**kwargs)
    except PluginError as exc:  # a plugin's own mistake found while building: name it
        if f"'{name}'" in str(exc):
            raise
        raise PluginError(f"{reg.singular} '{name}' (plugin '{entry.plugin}'): {exc}") from None
    except MetaembError:
        raise
    except Exception as exc:
        # A component refusing its options (a negative width, a size it cannot make) speaks
        # for itself, and so does a plugin's own bug (an AttributeError in its __init__); say
        # which component, from which plugin, with which options.
        shown = ", ".join(f"{k}={_shown(v)}" for k, v in kwargs.items()) or "no options"
        hint = ""
        if isinstance(exc, AttributeError) and "before Module.__init__() call" in str(exc):
            hint = " (call super().__init__() first in its __init__, before adding layers)"
        elif isinstance(exc, AttributeError) and kind == "sample_folders":
            hint = (" (a sample folder sets the attributes its identity_of and load use first, "
                    "then calls super().__init__(root, samples), which scans the folder)")  # fmt: skip
        elif _disk_full(exc, context.get("out")):  # a generator writing its files ran out
            raise OutputError(
                f"{reg.singular} '{name}' (plugin '{entry.plugin}') could not be built with "
                f"{shown}: the disk holding '{context.get('out')}' is full ({type(exc).__name__}: "
                f"{exc}); free some space, or write it to another disk (another --out; for "
                "the built-in demo data a training generates, METAEMB_CACHE)."
            ) from None
        raise ConfigError(
            f"{reg.singular} '{name}' (plugin '{entry.plugin}') could not be built with "
            f"{shown}: {type(exc).__name__}: {exc}{hint}"
        ) from exc
    # What messages about it later call it (a data-loader check knows only the object); not
    # possible on a value with __slots__, a frozen dataclass or a Module missing its init.
    with contextlib.suppress(AttributeError, TypeError):
        built._metaemb_component = f"{reg.singular} '{name}' (plugin '{entry.plugin}')"
    base = _base_without_init(built)
    if base:
        where = (  # a folder scans in its init, with the attributes its subclass set
            "at the end of" if kind == "sample_folders" else "first in"
        )
        raise PluginError(
            f"{reg.singular} '{name}' (plugin '{entry.plugin}') is a {base} whose __init__ did "
            f"not call super().__init__(): call it {where} {type(built).__name__}.__init__."
        )
    if kind == "sample_folders":  # every folder built, whichever command builds it
        from metaemb.core.plugin.sample_folder import refuse_repeated_samples

        refuse_repeated_samples(built)
    return built


def _base_without_init(built: Any) -> str | None:
    """The base class whose __init__ a component skipped (its attributes are then missing and
    the first use is an AttributeError far from the cause), or None."""
    from metaemb.core.plugin.interfaces import BatchSampler, Objective, SampleFolder

    nn = sys.modules.get("torch.nn")  # loaded whenever a Module was built
    if nn is not None and isinstance(built, nn.Module) and "_modules" not in vars(built):
        return "torch Module"
    with contextlib.suppress(TypeError):  # vars() of a value without __dict__
        if isinstance(built, Objective) and "stats" not in vars(built):
            return "metaemb Objective"
        if isinstance(built, BatchSampler) and "labels" not in vars(built):
            return "metaemb BatchSampler"
        if isinstance(built, SampleFolder) and "samples" not in vars(built):
            return "metaemb SampleFolder"
    return None
