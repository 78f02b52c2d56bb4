"""The options a run was trained with, defaults included, kept in its checkpoints.

config.toml and a checkpoint's configuration hold only the options that were set; the rest are
the components' defaults at the time. When a plugin later changes a default, a run re-read with
today's defaults would build another network around the same weights. The checkpoint keeps
every option of the components that build and score the model, and loading a run builds it
with those, saying what changed."""

from __future__ import annotations

import json
import warnings
from typing import Any

from metaemb.core.config.run_config import Config
from metaemb.core.config.sections import COMPONENT_SECTIONS
from metaemb.core.errors import MetaembError

#: the components that read, build and score the model after training
SECTIONS = ("folder", "frontend", "features", "backbone", "head", "scorer")


def _plain(value: Any) -> bool:
    """Whether a checkpoint (read with weights_only) can hold the value."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def trained_options(cfg: Config) -> dict[str, dict[str, Any]]:
    """{section: {"name": component, option: value, …}} with defaults filled in."""
    from metaemb.core.plugin.components import full_options

    out: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        name = cfg.component_name(section)
        try:
            options = full_options(COMPONENT_SECTIONS[section], name, cfg.options(section))
        except (MetaembError, TypeError, ValueError) as exc:  # a factory not introspectable
            warnings.warn(
                f"the {section}'s options could not be read to keep in the checkpoint ({exc}); "
                "a later change of its defaults would go unnoticed for this run.",
                stacklevel=2,
            )
            continue
        out[section] = {"name": name, **{k: v for k, v in options.items() if _plain(v)}}
    return out


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _leaves(key: str, then: Any, now: Any) -> list[tuple[str, Any, Any]]:
    """(dotted key, then, now) of the values that differ inside nested option tables."""
    if isinstance(then, dict) and isinstance(now, dict):
        return [
            leaf
            for k in sorted(then.keys() & now.keys())
            if not _same(then[k], now[k])
            for leaf in _leaves(f"{key}.{k}", then[k], now[k])
        ]
    return [(key, then, now)]


def pin_trained_options(cfg: Config, recorded: Any, run: str) -> None:
    """Set the options whose default changed since the run was trained back to the values it
    trained with (in `cfg`), and warn naming them."""
    if not isinstance(recorded, dict):
        return  # a run saved before checkpoints kept them
    now = trained_options(cfg)
    changed = []
    for section, then in recorded.items():
        current = now.get(section)
        if not isinstance(then, dict) or not current or then.get("name") != current["name"]:
            continue
        moved = {
            k: v
            for k, v in then.items()
            if k != "name" and k in current and not _same(v, current[k])
        }
        if moved:
            cfg.components[section] = {**cfg.options(section), **moved}
            leaves = [leaf for k, v in moved.items() for leaf in _leaves(k, v, current[k])]
            shown = ", ".join(f"{k} = {v!r} (now {w!r})" for k, v, w in leaves[:4])
            changed.append(f"{section} '{current['name']}': {shown}")
    if changed:
        warnings.warn(
            f"{run} was trained when some component defaults were different; it is built with "
            f"the values it trained with: {'; '.join(changed)}. (A plugin changed its defaults "
            "since; config.toml lists only the options that were set.)",
            stacklevel=3,
        )
