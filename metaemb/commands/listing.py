"""`metaemb plugins` (the loaded plugins) and `metaemb list KIND [--json]`: the registered
components of one kind, with their options and data contract. The JSON form is what scripts (and
the conformance test) read: every option's type and default, so options round-trip through it."""

from __future__ import annotations

import inspect
import json
import math
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metaemb.core.errors import ConfigError, suggest

console = Console(emoji=False)


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
    if typ is inspect.Parameter.empty or typ is Any:
        return "any"
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


def records(kind: str) -> list[dict[str, Any]]:
    """One record per registered component of `kind`: name, plugin, description, options
    ({name: {"type", "default", "required"}}) and declared data kinds."""
    from metaemb.core.plugin.manager import registry
    from metaemb.core.plugin.options import options_of

    key = kind_key(kind)
    out = []
    for e in registry(key).entries():
        try:
            options = {
                o.name: {
                    "type": _typename(o.type),
                    "default": jsonable(o.default),
                    "required": o.default is inspect.Parameter.empty,
                }
                for o in options_of(e.factory).values()
            }
        except (TypeError, ValueError):  # not introspectable (e.g. a Modality instance)
            options = {}
        bundle = {}
        if hasattr(e.factory, "sample_folder"):  # a Modality: the components it chooses
            names = ("sample_folder", "frontend", "features", "backbone", "demo_data")
            bundle = {"components": {n: getattr(e.factory, n, "") for n in names}}
        out.append(
            {
                "name": e.name,
                "plugin": e.plugin,
                "description": e.description,
                "options": options,
                **_contract(key, e),
                **bundle,
            }
        )
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
    for p in infos:
        comps = "\n".join(f"{k}: {', '.join(v)}" for k, v in sorted(p.components.items()))
        table.add_row(p.name, p.version, "\n".join(p.hooks), comps)
    console.print(table)
    for f in st.failed:
        console.print(f"[red]failed to load[/] {escape(f.name)}: {escape(str(f.error))}")


def list_components(
    kind: Annotated[str, typer.Argument(help="backbones, frontends, objectives, scorers, …")],
    json_output: Annotated[
        bool, typer.Option("--json", help="options with types and defaults, data kinds")
    ] = False,
) -> None:
    """List registered components of one kind."""
    from metaemb.core.plugin.manager import registry
    from metaemb.core.plugin.options import options_of

    key = kind_key(kind)
    if json_output:
        typer.echo(as_json(key))
        return
    table = Table(title=f"metaemb {key}")
    if key == "modalities":  # a modality is the components it chooses
        for col in ("name", "plugin", "components", "description"):
            table.add_column(col)
        for r in records(key):
            chosen = ", ".join(f"{k}={v}" for k, v in r.get("components", {}).items() if v)
            table.add_row(r["name"], r["plugin"], escape(chosen), r["description"])
        console.print(table)
        return
    for col in ("name", "plugin", "options", "data (accepts → yields)", "description"):
        table.add_column(col)
    for e in registry(key).entries():
        try:
            opts = ", ".join(f"{o.name}={o.default!r}" for o in options_of(e.factory).values())
        except (TypeError, ValueError):
            opts = ""
        c = _contract(key, e)
        data = " → ".join(c[k] for k in ("accepts", "yields") if k in c)
        if len(c) == 1:
            data = f"{next(iter(c))} {data}"
        table.add_row(e.name, e.plugin, escape(opts), escape(data), e.description)
    console.print(table)
