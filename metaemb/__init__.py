"""metaemb: embedding networks for biometric recognition, with Gaussian meta-embeddings.

Import is light: torch and the plugins load only when a command or `load()` needs them.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("metaemb")
"""Decorator for plugin hook implementations (`@metaemb.hookimpl`)."""


def load() -> None:
    """Load every plugin (built-in and installed) once; safe to call many times."""
    from metaemb.core.plugin.manager import get_plugin_manager

    get_plugin_manager()


__all__ = ["__version__", "hookimpl", "load"]
