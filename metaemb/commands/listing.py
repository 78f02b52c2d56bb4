"""`metaemb plugins` (the loaded plugins) and `metaemb list KIND [--json]`: the registered
components of one kind, with their options and data contract. The JSON form is what scripts (and
the conformance test) read: every option's type and default, so options round-trip through it."""

from __future__ import annotations

import inspect
import json
import math
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from metaemb.commands.console import make_console
from metaemb.core.errors import ConfigError, suggest

console = make_console()


def kind_key(kind: str) -> str:
    """`backbone`, `sample-folders`, … → the registry kind (`backbones`, `sample_folders`)."""
    from metaemb.core.plugin.manager import state

    kinds = list(state().registries())  # the core's kinds and those plugins add
    key = kind.replace("-", "_")
    for plural in (key + "s", key[:-1] + "ies", key + "_data"):  # singular names work too
        if key not in kinds and plural in kinds:
            key = plural
    if key not in kinds:
        raise ConfigError(
            f"unknown component kind '{kind}';{suggest(key, kinds)} kinds: {', '.join(kinds)}."
        )
    return key


def jsonable(value: Any) -> Any:
    """A default as JSON: tuples become lists, paths and other objects their text."""
    if value is inspect.Parameter.empty:
        return None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def _typename(typ: Any) -> str:
    """An option's type as a script reads it: `bool | 'mean' | 'level'`, `list[int]`, not the
    bare 'Union' or 'list' that `__name__` gives."""
    import types
    import typing

    if typ is inspect.Parameter.empty or typ is Any:
        return "any"
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_typename(a) for a in typing.get_args(typ))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(typ))
    if origin is not None:
        return str(typ).replace("typing.", "")
    return getattr(typ, "__name__", None) or str(typ).replace("typing.", "")


def _contract(kind: str, entry: Any) -> dict[str, str]:
    """The component's declared data kinds (bound to its default options), as text."""
    from metaemb.core.plugin.components import full_options
    from metaemb.core.plugin.contract import declared

    try:
        defaults = full_options(kind, entry.name)
    except Exception:  # not introspectable (e.g. a Modality instance)
        defaults = {}
    out: dict[str, str] = {}
    for attr in ("accepts", "yields"):
        try:
            kinds = declared(entry, attr, defaults)
        except Exception:
            kinds = None
        if kinds is not None:
            out[attr] = " or ".join(str(k) for k in kinds)
    return out


def option_records(factory: Any) -> dict[str, Any]:
    """{name: {"type", "default", "required"}} of a factory's options; a fixed nested part (the
    speaker features' `fbank` table) also lists its own options under "options"."""
    from metaemb.core.plugin.options import options_of, parts_of

    try:
        found = options_of(factory)
    except (TypeError, ValueError):  # not introspectable (e.g. a Modality instance)
        return {}
    parts = parts_of(factory)
    out: dict[str, Any] = {}
    for o in found.values():
        out[o.name] = {
            "type": _typename(o.type),
            "default": jsonable(o.default),
            "required": o.default is inspect.Parameter.empty,
        }
        if o.name in parts and not isinstance(parts[o.name], str):  # a fixed part's table
            out[o.name]["options"] = option_records(parts[o.name])
    return out


def _nested(options: dict[str, Any], prefix: str = "") -> list[str]:
    """`name=default` texts, a fixed part's options as `part.name=default`."""
    out = []
    for name, o in options.items():
        if "options" in o:
            out += _nested(o["options"], f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}={o['default']!r}")
    return out


def records(kind: str) -> list[dict[str, Any]]:
    """One record per registered component of `kind`: name, plugin, description, options
    ({name: {"type", "default", "required"}}) and declared data kinds; a modality's record
    holds the components it chooses and the options it sets on them."""
    from metaemb.core.plugin.manager import registry

    key = kind_key(kind)
    out = []
    for e in registry(key).entries():
        options = option_records(e.factory)
        bundle = {}
        if hasattr(e.factory, "sample_folder"):  # a Modality: the components it chooses
            names = ("sample_folder", "frontend", "features", "backbone", "demo_data")
            bundle = {
                "components": {n: getattr(e.factory, n, "") for n in names},
                # section → component → option → value: what a run of this modality starts
                # from instead of the component's own default ("backbone.channels" = 256)
                "component_options": jsonable(getattr(e.factory, "options", {})),
                "defaults": jsonable(getattr(e.factory, "defaults", {})),
            }
        out.append(
            {
                "name": e.name,
                "plugin": e.plugin,
                "description": e.description,
                "options": options,
                **_contract(key, e),
                # a frontend's options `--frontend-set` may change after training
                **(
                    {"access_options": list(getattr(e.factory, "access_options", ()) or ())}
                    if key == "frontends"
                    else {}
                ),
                **bundle,
            }
        )
    return out


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"fbank": {"cmn": "level"}} → {"fbank.cmn": "level"}."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def as_json(kind: str) -> str:
    return json.dumps({"kind": kind_key(kind), "components": records(kind)}, indent=2)


def plugins(
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List loaded plugins with their versions, hooks and components."""
    from metaemb.core.plugin.manager import state

    st = state()
    infos = st.plugins()
    if json_output:
        payload = {
            "plugins": [p.__dict__ for p in infos],
            "failed": [f.__dict__ for f in st.failed],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    table = Table(title="metaemb plugins")
    for col in ("name", "version", "hooks", "components"):
        table.add_column(col)
    for p in infos:  # one row per hook, beside the components it registered
        by_hook: dict[str, list[str]] = {}
        for kind, names in sorted(p.components.items()):
            hook = "register_commands" if kind == "commands" else st.kinds.get(kind, "")
            by_hook.setdefault(hook, []).append(f"{kind}: {', '.join(names)}")
        rows = [(hook, "\n".join(by_hook.pop(hook, []))) for hook in p.hooks]
        rows += [("", "\n".join(rest)) for rest in by_hook.values()]
        for i, (hook, comps) in enumerate(rows or [("", "")]):
            last = i == max(len(rows), 1) - 1
            table.add_row(p.name if i == 0 else "", p.version if i == 0 else "", hook, comps,
                          end_section=last)  # fmt: skip
    console.print(table)
    for f in st.failed:
        console.print(f"[red]{escape(f.summary())}[/]")


def list_components(
    kind: Annotated[str, typer.Argument(help="backbones, frontends, objectives, scorers, …")],
    json_output: Annotated[
        bool, typer.Option("--json", help="options with types and defaults, data kinds")
    ] = False,
) -> None:
    """List registered components of one kind."""
    from metaemb.core.plugin.manager import registry

    key = kind_key(kind)
    if json_output:
        typer.echo(as_json(key))
        return
    table = Table(title=f"metaemb {key}")
    if key == "modalities":  # a modality is the components it chooses and their settings
        for col in ("name", "plugin", "components", "description"):
            table.add_column(col)
        found = records(key)
        for r in found:
            chosen = ", ".join(f"{k}={v}" for k, v in r.get("components", {}).items() if v)
            table.add_row(r["name"], r["plugin"], escape(chosen), r["description"])
        console.print(table)
        for r in found:  # below the table: too long for a cell
            sets = [f"{k} = {v!r}" for k, v in r.get("defaults", {}).items()]
            for section, tables in r.get("component_options", {}).items():
                for name, values in tables.items():
                    sets += [f"{section}.{k} = {v!r}   (with {section} '{name}')"
                             for k, v in _flat(values).items()]  # fmt: skip
            if sets:
                console.print(f"\n{r['name']} sets:", markup=False)
                for line in sets:
                    console.print(f"  {line}", markup=False, soft_wrap=True)
        return
    for col in ("name", "plugin", "options", "data (accepts → yields)", "description"):
        table.add_column(col)
    for e in registry(key).entries():
        opts = ", ".join(_nested(option_records(e.factory)))
        c = _contract(key, e)
        data = " → ".join(c[k] for k in ("accepts", "yields") if k in c)
        if len(c) == 1:
            data = f"{next(iter(c))} {data}"
        table.add_row(e.name, e.plugin, escape(opts), escape(data), e.description)
    console.print(table)
