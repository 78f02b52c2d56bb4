"""How the run-time checks name what broke a contract: the component of a config section with
its plugin, and a value by its type and shape, so every message points at the code to fix."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from metaemb.core.config import CHOICE_FIELDS, COMPONENT_SECTIONS, Config
from metaemb.core.plugin.manager import registry


def component(config: Config, section: str) -> str:
    """ "backbone 'tdnn' (plugin 'accel')": how messages name the component of `section`."""
    group, key = CHOICE_FIELDS[section]
    name = getattr(getattr(config, group), key)
    kind = COMPONENT_SECTIONS[section]
    try:
        plugin = registry(kind).entry(name).plugin
    except Exception:  # a name that is not registered here: say what we know
        return f"{section} '{name}'"
    return f"{section} '{name}' (plugin '{plugin}')"


def describe_value(x: Any) -> str:
    """A value as messages name it: "a torch.float32 tensor of shape [4, 3]", or its type."""
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {list(x.shape)}"
    return f"a {type(x).__name__}"
