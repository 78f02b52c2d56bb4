"""Running a check through the network without moving its state: eval mode for the check,
then every submodule back in its own mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Eval mode for a check, then every submodule back in its own mode (a frozen trunk
    stays in eval mode)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
