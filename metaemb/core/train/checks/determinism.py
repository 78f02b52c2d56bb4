"""A frontend and the features' evaluation-time prepare must give one answer for one file:
their outputs may be cached, and every evaluation must give the same numbers."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from metaemb.core.config import Config
from metaemb.core.train.checks.naming import component


def warn_if_not_deterministic(parts: Any, config: Config) -> None:
    """A frontend must be deterministic (its output may be cached, and evaluation must give one
    answer), and so must the features' evaluation-time `prepare(raw, train=False)`: run each
    twice on the first sample and warn, by name, when the two differ. A sample that cannot be
    read is left to the data loader to report."""
    folder, frontend = parts.folder, parts.frontend
    if not folder.samples:
        return
    sample = folder.samples[0]
    try:
        raw = folder.load(folder.abspath(sample))
        first = frontend(raw, sample.path, folder.root)
        second = frontend(folder.load(folder.abspath(sample)), sample.path, folder.root)
        same = _same_output(first, second)
    except Exception:  # reported where the sample is read, with its name
        return
    if not same:
        warnings.warn(
            f"{component(config, 'frontend')} gave two different outputs for the same file "
            f"('{sample.path}'): a frontend must be deterministic (no random noise or crop; "
            "put those in the features' prepare when train is true, or in an augmentation), "
            "or every evaluation gives other numbers.",
            stacklevel=2,
        )
        return
    features = getattr(parts, "features", None)
    try:
        with torch.no_grad():
            same = _same_output(features.prepare(first, False), features.prepare(first, False))
    except Exception:  # the data loader names the file and the features
        return
    if not same:
        warnings.warn(
            f"{component(config, 'features')} prepared the same file ('{sample.path}') twice "
            "with train=False and gave two different results: evaluation must be "
            "deterministic (random crops, noise or dropout belong under `if train:`), or every "
            "evaluation gives other numbers.",
            stacklevel=2,
        )


def _same_output(a: Any, b: Any) -> bool:
    """Equal, NaN where NaN (a NaN is reported as such where the sample is read, not as
    randomness)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point() or a.is_complex():
            return bool(
                torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
            )
        return bool(torch.equal(a, b))
    try:
        import numpy as np

        x, y = np.asarray(a), np.asarray(b)
        nan = x.dtype.kind in "fc" and y.dtype.kind in "fc"
        return bool(np.array_equal(x, y, equal_nan=nan))
    except Exception:  # values that do not compare: say nothing
        return True
