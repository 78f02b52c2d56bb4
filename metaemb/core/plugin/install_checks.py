"""Checks of how plugins are announced and chosen, run when the plugins load: mistakes that
would otherwise pass without a word (an entry point in a look-alike group is never loaded, a
METAEMB_DISABLE_PLUGINS name that matches no plugin disables nothing) are named in a warning.
"""

from __future__ import annotations

import warnings
from importlib import metadata
from typing import Any

from metaemb.core.errors import suggest


def check_disabled(disabled: set[str], installed: list[str]) -> list[str]:
    """The installed plugins among the disabled names; a name that is none of them is a typo
    (nothing would be disabled, silently), so it is warned about with the closest name."""
    for name in sorted(disabled - set(installed)):
        if name == "core":
            message = ("METAEMB_DISABLE_PLUGINS names 'core', metaemb's own components (the "
                       "objectives, scorers, heads …); they cannot be disabled.")  # fmt: skip
            warnings.warn(message, stacklevel=3)
            continue
        warnings.warn(
            f"METAEMB_DISABLE_PLUGINS names '{name}', which is not an installed metaemb plugin, "
            f"so it disables nothing;{suggest(name, installed)} installed: "
            f"{', '.join(installed) or '(none)'}.",
            stacklevel=3,
        )
    return sorted(disabled & set(installed))


def warn_look_alike_groups(dists: Any = None) -> None:
    """A plugin announced under `metaemb.plugins` or `metaemb_plugins` is never loaded and its
    components are then "unknown" without a word about why: name such entry points."""
    from metaemb.core.plugin.manager import GROUP

    def key(group: str) -> str:
        return "".join(c for c in group.lower() if c.isalnum())

    found: dict[str, list[str]] = {}
    dists = metadata.distributions() if dists is None else dists
    every = (ep for dist in dists for ep in dist.entry_points)
    for ep in every:
        group = getattr(ep, "group", None)
        if isinstance(group, str) and group != GROUP and key(group).startswith(key(GROUP)):
            found.setdefault(group, []).append(f"'{ep.name}' ({ep.value})")
    for group, names in sorted(found.items()):
        warnings.warn(
            f"entry point(s) {', '.join(sorted(names))} are declared in the group '{group}', "
            f"which metaemb does not read: a plugin announces itself in the group '{GROUP}' "
            f'([project.entry-points."{GROUP}"] in pyproject.toml); reinstall it after the fix.',
            stacklevel=3,
        )
