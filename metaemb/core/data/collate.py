"""Batching prepared samples: the Features' own collate, called by the DataLoader, with what it
returns refused by name when it breaks the contract (a [N, …] batch, valid lengths along the last
axis), and skipped samples carried along in the batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from metaemb.core.data.dataset import Bad
from metaemb.core.errors import ConfigError, MetaembError, first_few
from metaemb.core.plugin.components import described
from metaemb.core.plugin.interfaces import Features


@dataclass
class Batch:
    """One collated batch: inputs, their lengths (None: nothing padded), labels, the dataset
    indices of its samples, and the samples skipped as bad."""

    inputs: Tensor
    lengths: Tensor | None
    labels: Tensor
    indices: Tensor
    bad: list[Bad] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


class Collate:
    """Picklable collate function: batches prepared tensors with the Features' own collate."""

    def __init__(self, features: Features, path_of: Callable[[int], str] | None = None) -> None:
        self.features = features
        self.path_of = path_of  # a sample's path from its index, to name an odd item's file

    def __call__(self, items: list[Any]) -> Batch:
        bad = [it for it in items if isinstance(it, Bad)]
        good = [it for it in items if not isinstance(it, Bad)]
        if not good:
            return Batch(
                torch.zeros(0), None, torch.zeros(0, dtype=torch.long), torch.zeros(0), bad
            )
        items = [g[0] for g in good]
        try:
            out = self.features.collate(items)
        except (MetaembError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # a plugin's collate: named, with what it was given
            shapes = first_few((tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                                for x in items), 3, quote=False)  # fmt: skip
            odd = self._odd_items(items, [g[2] for g in good])
            raise ConfigError(
                f"{described(self.features, 'features')}: collate failed on {len(items)} "
                f"prepared items ({shapes}): {type(exc).__name__}: {exc}{odd}"
                f"{_layout_hint(items)}"
            ) from exc
        inputs, lengths = checked_batch(out, items, self.features)
        labels = torch.tensor([g[1] for g in good], dtype=torch.long)
        indices = torch.tensor([g[2] for g in good], dtype=torch.long)
        return Batch(inputs, lengths, labels, indices, bad)

    def _odd_items(self, items: Sequence[Any], indices: Sequence[int]) -> str:
        """The items whose shape, but for the last axis, differs from most items', with their
        files: one sample prepared in another layout hides among the batch's shapes."""
        from collections import Counter

        def key(x: Any) -> Any:
            return tuple(x.shape[:-1]) if isinstance(x, Tensor) else type(x).__name__

        usual, _ = Counter(map(key, items)).most_common(1)[0]
        odd = [(i, x) for i, x in zip(indices, items, strict=True) if key(x) != usual]
        if not odd or len(odd) * 2 >= len(items):
            return ""
        named = [
            f"'{self.path_of(i)}' {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
            if self.path_of is not None
            else f"sample {i}"
            for i, x in odd
        ]
        return f". Unlike the others: {first_few(named, 3, quote=False)}"


def _layout_hint(items: Sequence[Any]) -> str:
    """Items that differ only in their first axis were prepared time-first ([T, C]): the time
    axis, the one padded and measured by lengths, is the last ([C, T])."""
    shapes = {tuple(x.shape) for x in items if isinstance(x, Tensor) and x.dim() >= 2}
    if len(shapes) > 1 and len({s[1:] for s in shapes}) == 1:
        return (
            " The items differ in their first axis only: prepare gives the varying axis last "
            "([channels, steps]); padding and lengths are along the last axis."
        )
    if len(shapes) > 1 and len({s[:-1] for s in shapes}) == 1:
        return (
            " The items differ in their last axis: the base collate only stacks equal shapes; "
            "features of varying length pad in their own collate to [N, …, steps_max] and "
            "return the lengths."
        )
    return ""


def checked_batch(out: Any, items: Sequence[Tensor], features: Any) -> tuple[Tensor, Any]:
    """What `Features.collate` returned, refused by name when it breaks the contract: a
    [N, …] tensor, and lengths None (nothing padded) or an integer tensor [N]."""
    name, n = described(features, "features"), len(items)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Tensor)):
        raise ConfigError(f"{name}: collate must return (batch tensor, lengths or None); it "
                          f"returned a {type(out).__name__}.")  # fmt: skip
    batch, lengths = out
    if batch.dim() == 0 or batch.shape[0] != n:
        raise ConfigError(f"{name}: collate returned a batch of shape {list(batch.shape)} for "
                          f"{n} items; its first axis must be the {n} items.")  # fmt: skip
    steps = [x.shape[-1] for x in items if x.dim() > 0]
    if lengths is None and steps and min(steps) < max(steps) == batch.shape[-1]:
        raise ConfigError(  # padded (not cropped to a common length) without saying where
            f"{name}: prepare gave items of {min(steps)} to {max(steps)} steps, collate padded "
            "them and returned lengths None: return their valid lengths along the last axis as "
            "an int64 tensor [N], so the network can mask the padding."
        )
    if lengths is not None and not (isinstance(lengths, Tensor) and lengths.shape == (n,)
              and not lengths.is_floating_point() and lengths.dtype != torch.bool):  # fmt: skip
        got = f"shape {list(lengths.shape)}, {lengths.dtype}" if isinstance(lengths, Tensor) else (
            type(lengths).__name__)  # fmt: skip
        raise ConfigError(f"{name}: collate returned lengths as {got}; they must be an int64 "
                          f"tensor [{n}] (torch.tensor(lengths, dtype=torch.long)).")  # fmt: skip
    if lengths is not None:
        check_lengths_fit(lengths, batch, f"{name}: collate")
    return batch, lengths


def check_lengths_fit(lengths: Tensor, x: Tensor, who: str) -> None:
    """Each length counts one item's valid steps along x's last axis: 1 to x.shape[-1]. A
    length past the padding (or 0) made pooling read padding (or divide by zero) silently."""
    steps = x.shape[-1] if x.dim() > 1 else 0
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or high > steps:
        axis = next((i for i in range(1, x.dim() - 1) if low >= 1 and high <= x.shape[i]), None)
        hint = (f" They fit axis {axis}: the steps must be the last axis ([batch, channels, "
                "steps]); transpose the tensor." if axis is not None else "")  # fmt: skip
        raise ConfigError(
            f"{who} returned lengths from {low} to {high} for a batch of {steps} steps along "
            f"its last axis ({list(x.shape)}); each length counts one item's valid steps, 1 to "
            f"{steps}.{hint}"
        )
