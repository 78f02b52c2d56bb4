"""What the features' input_spec() returns travels in every checkpoint: refuse, before
training, a value that could be saved but never loaded back (checkpoints are read
weights-only)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from metaemb.core.config import Config
from metaemb.core.errors import ConfigError
from metaemb.core.train.checks.naming import component

PLAIN = (str, int, float, bool, type(None))


def _not_plain(value: Any, where: str) -> str | None:
    """Where `value` holds something a checkpoint cannot carry (numpy scalars, paths, objects:
    checkpoints are read with torch.load(weights_only=True), which refuses them)."""
    if type(value) in PLAIN or isinstance(value, Tensor):
        return None
    if isinstance(value, (list, tuple)):
        return next((p for i, v in enumerate(value) if (p := _not_plain(v, f"{where}[{i}]"))), None)
    if isinstance(value, dict):
        for k, v in value.items():
            if type(k) is not str:
                return f"{where} has a key {k!r} of type {type(k).__name__}"
            if p := _not_plain(v, f"{where}[{k!r}]"):
                return p
        return None
    return f"{where} is a {type(value).__module__}.{type(value).__name__}"


def check_input_spec(features: Any, config: Config) -> None:
    """input_spec() travels in every checkpoint: refuse, before training, what could be saved
    but never loaded back."""
    spec = features.input_spec()
    problem = (
        _not_plain(spec, "input_spec()")
        if isinstance(spec, dict)
        else f"input_spec() returned a {type(spec).__name__}, not a dict"
    )
    if problem:
        raise ConfigError(
            f"{component(config, 'features')}: {problem}; it is saved in every checkpoint, "
            "which holds plain values only (str, int, float, bool, None, lists and dicts of "
            "them, tensors): convert it (float(x), str(path))."
        )
