"""Label-free adaptation of a network's batch normalisation to the data it scores (AdaBN).

A BatchNorm layer keeps the mean and variance of its inputs over the training data. On data of
another domain (a new recording channel, language or population) those statistics are off, and
every layer after them sees shifted inputs. Re-estimating them on the files about to be scored,
without any label, is AdaBN (Li et al., "Revisiting batch normalization for practical domain
adaptation", 2016). Here each layer is re-estimated in the order the network runs them, with the
layers before it already adapted, one file at a time so that padding never enters a statistic.
The new value is a MAP estimate: n files weigh n / (n + relevance) against the training value,
so a trial list of a few files moves the network little.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

RELEVANCE = 20.0  # pseudo-files of training statistics, as the adapted scorers' default
MAX_FILES = 1000  # statistics from at most this many files (evenly spread): a bounded cost
# Fewer scored files are too few speakers' worth of statistics: on halves of our natural-speech
# dev set (~140 files, ~10 speakers) a set's own statistics helped in two of four, and on 36
# validation files of 6 speakers they made the EER five times worse; sets of 280 and more files
# gained consistently (docs/speaker.md).
MIN_FILES = 200

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _Stop(Exception):
    """Raised by the hook after the layer being estimated: the rest of the network is skipped."""


def batchnorm_layers(model: nn.Module, example: tuple[Tensor, Tensor | None]) -> list[nn.Module]:
    """The model's BatchNorm layers that keep running statistics, in the order a forward pass
    calls them (registration order can differ from it)."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod) if mod not in order else None)
        for m in model.modules()
        if isinstance(m, _NORMS) and m.track_running_stats and m.running_mean is not None
    ]
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    return order


def spread(indices: Sequence[int], most: int = MAX_FILES) -> list[int]:
    """At most `most` of `indices`, evenly spread over them (all when there are fewer)."""
    if len(indices) <= most:
        return list(indices)
    step = len(indices) / most
    return [indices[int(i * step)] for i in range(most)]


def adapt_batchnorm(
    model: nn.Module,
    inputs: Iterable[tuple[Tensor, Tensor | None]],
    device: torch.device | str = "cpu",
    relevance: float = RELEVANCE,
) -> int:
    """Re-estimate every BatchNorm layer of `model` (in eval mode) on `inputs`, one file per
    batch ((input [1, …], lengths or None)); returns the number of files used (0: unchanged)."""
    cache = [(x.to(device), None if n is None else n.to(device)) for x, n in inputs]
    if not cache:
        return 0
    model.eval()
    weight = len(cache) / (len(cache) + relevance)
    for layer in batchnorm_layers(model, cache[0]):
        mean, var = _input_moments(model, layer, cache)
        layer.running_mean.mul_(1 - weight).add_(weight * mean.to(layer.running_mean))
        layer.running_var.mul_(1 - weight).add_(weight * var.to(layer.running_var))
    return len(cache)


def _input_moments(model: nn.Module, layer: nn.Module, cache: list[Any]) -> tuple[Tensor, Tensor]:
    """Mean and (biased) variance per channel of what `layer` receives over every file."""
    total: dict[str, Any] = {"sum": 0.0, "squares": 0.0, "count": 0}

    def record(_mod: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]
        total["sum"] = total["sum"] + x.sum(dims)
        total["squares"] = total["squares"] + (x * x).sum(dims)
        total["count"] += x.numel() // x.shape[1]
        raise _Stop

    hook = layer.register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            for x, lengths in cache:
                with contextlib.suppress(_Stop):
                    model(x, lengths)
    finally:
        hook.remove()
    mean = total["sum"] / total["count"]
    var = (total["squares"] / total["count"] - mean * mean).clamp(min=0)
    return mean.float(), var.float()
