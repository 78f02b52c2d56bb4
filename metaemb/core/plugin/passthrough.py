"""The pass-through Features ("none"): samples are already network input.

A modality whose folder loads ready tensors (precomputed feature matrices, embeddings) needs no
Features of its own: "none" checks each sample is a tensor, stacks same-shaped ones and pads
variable-length ones along their last axis (returning lengths), and passes its input's kind on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.plugin.contract import ANY, SAME, Kind, Opt, expect_tensor
from metaemb.core.plugin.interfaces import Features


class IdentityFeatures(Features):
    """Samples are the network input as they are; `channels` is their leading width
    (what backbones get as in_channels, e.g. 40 for [40, T] feature matrices), taken from the
    folder's declared kind when it gives one."""

    # Any kind; a `channels` parameter of what comes in (e.g. feature-matrix(channels=40))
    # becomes this option unless the config sets it (`agree` in core/config/chain.py).
    accepts = Kind(ANY.name, channels=Opt("channels"))
    yields = SAME

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        if channels < 1:
            raise ConfigError(f"features 'none': channels must be ≥ 1, got {channels}.")
        self.out_channels = int(channels)

    def prepare(self, raw: Any, train: bool) -> Tensor:
        x = expect_tensor(raw, "a tensor", "features 'none'")
        if x.dim() >= 1 and x.shape[0] != self.out_channels:
            raise DataError(
                f"features 'none' expects samples with {self.out_channels} channels (leading "
                f"axis), got shape {list(x.shape)}; set features.channels={x.shape[0]}."
            )
        return x.float() if x.is_floating_point() else x

    def collate(self, items: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        shapes = {tuple(x.shape) for x in items}
        if len(shapes) <= 1:
            return torch.stack(list(items)), None
        lengths = torch.tensor([int(x.shape[-1]) for x in items], dtype=torch.long)
        batch = items[0].new_zeros((len(items), *items[0].shape[:-1], int(lengths.max())))
        for i, x in enumerate(items):
            if x.shape[:-1] != items[0].shape[:-1]:
                raise DataError(
                    f"features 'none' can pad only the last axis; got samples of shapes "
                    f"{list(items[0].shape)} and {list(x.shape)}."
                )
            batch[i, ..., : x.shape[-1]] = x
        return batch, lengths
