"""A sampler's batches: lists of valid sample indices, at least one batch a step can train on,
and the same batches when an epoch is asked for twice (a resumed run repeats them)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from metaemb.core.config import Config
from metaemb.core.errors import ConfigError
from metaemb.core.train.checks.naming import component, describe_value


def check_batches(sampler: Any, n: int, config: Config, *, twice: bool = False) -> None:
    """A sampler's batches are lists of sample indices in [0, n); an epoch needs one batch of
    two or more. `twice`: also ask for the epoch's batches again, which must be the same (a
    resumed run repeats them: draw from `self.generator()`, not an unseeded shuffle)."""
    name = component(config, "sampler")
    batches = sampler.all_batches()
    if not isinstance(batches, (list, tuple)):
        raise ConfigError(
            f"{name}: all_batches() returned {describe_value(batches)}; return a list of batches, "
            "each a list of sample indices."
        )
    for batch in batches:
        bad = _bad_indices(batch, n)
        if bad is not None:
            raise ConfigError(
                f"{name}: all_batches() gave a batch {bad}; a batch is a list of sample indices "
                f"in [0, {n}) ({n} training samples)."
            )
    if not any(len(b) >= 2 for b in batches):
        sizes = sorted({len(b) for b in batches})
        got = (
            f"{len(batches)} batch(es) of at most {sizes[-1]} sample(s)" if batches else "no batch"
        )
        raise ConfigError(
            f"{name} gave {got} this epoch ({n} training samples); a training step needs a "
            f"batch of at least 2 (train.batch_size = {config.train.batch_size})."
        )
    if twice and [list(map(int, b)) for b in sampler.all_batches()] != [
        list(map(int, b)) for b in batches
    ]:
        raise ConfigError(
            f"{name} gave other batches when asked twice for the same epoch; draw them from "
            "self.generator() (seeded by the run seed and the epoch) so a resumed run repeats "
            "them."
        )


def _bad_indices(batch: Any, n: int) -> str | None:
    """What is wrong with one batch, or None."""
    if isinstance(batch, Tensor):
        batch = batch.tolist()
    if not isinstance(batch, (list, tuple)):
        return f"that is {describe_value(batch)}"
    for i in batch:
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            return f"holding {i!r} ({type(i).__name__})"
        if not 0 <= int(i) < n:
            return f"holding index {int(i)}"
    return None
