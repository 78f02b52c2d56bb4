"""A scorer's fitted state as the run and the export keep it: named tensors. A plugin's
`state_dict()` may hold numbers, lists or numpy arrays (a calibrated cosine keeping `w` and `b`
as floats); they are made tensors here, where an export would otherwise drop them without a
word, and anything else is named."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from metaemb.core.errors import PluginError


def tensor_state(state: Any, scorer: str) -> dict[str, Tensor | None]:
    """`state` (a scorer's `state_dict()`) with every value a tensor: numbers, booleans, lists
    and numpy arrays are converted, None (a value not fitted yet) is kept; other values (text,
    nested tables) are refused, naming the scorer and the key."""
    if not isinstance(state, dict):
        raise PluginError(
            f"scorer '{scorer}': state_dict() returned {type(state).__name__}, not a dict of "
            "named tensors (docs/plugins.md, scorers)."
        )
    out = {}
    for key, value in state.items():
        if isinstance(value, Tensor) or value is None:  # None: not fitted yet, saved as it is
            out[key] = value
            continue
        array = None
        if not isinstance(value, (str, bytes, dict)):
            try:
                array = np.asarray(value)
            except ValueError:  # a ragged list
                array = None
        if array is not None and array.dtype.kind in "biuf":
            out[key] = torch.as_tensor(array)
        else:
            raise PluginError(
                f"scorer '{scorer}': state_dict() entry '{key}' is {type(value).__name__}, "
                "which is no tensor and cannot be made one; keep fitted values as tensors "
                "(numbers and lists of numbers are converted), so the run and its export keep "
                "them (docs/plugins.md, scorers)."
            )
    return out
