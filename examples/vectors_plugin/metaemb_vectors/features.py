"""VectorFeatures ("vector"): a loaded embedding → the network input, checked and normalised.

The backbone is built before any file is read, from `out_channels`, so the vector size is an
option (`features.size`) and a file of another size is a DataError that names it and says which
option to set — never a silent reshape. Optional length normalisation (the usual
pre-processing of x-vectors before PLDA) run batched in `forward`, on the training device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from metaemb.core import ConfigError, DataError, Features
from metaemb.core.plugin.contract import Kind, Opt


class VectorFeatures(Features):
    """Fixed-size vectors → network input [N, size] (optionally length-normalised)."""

    accepts = Kind("vector")
    yields = Kind("vector", size=Opt("size"))  # [N, size]: the size is the option

    def __init__(self, size: int = 32, length_norm: bool = False, noise: float = 0.0) -> None:
        super().__init__()
        if size < 1:
            raise ConfigError(f"config key 'features.size' must be ≥ 1, got {size}.")
        if noise < 0:
            raise ConfigError(f"config key 'features.noise' must be ≥ 0, got {noise}.")
        self.size = size
        self.length_norm = length_norm
        self.noise = noise
        self.out_channels = size

    def prepare(self, raw: Any, train: bool) -> Tensor:
        """One loaded vector → float32 [size]; Gaussian noise of std `noise` when training."""
        if not isinstance(raw, Tensor) or raw.ndim != 1:
            shape = tuple(raw.shape) if hasattr(raw, "shape") else type(raw).__name__
            raise DataError(
                f"the 'vector' features take 1-D vectors (from the 'npy' sample folder), got "
                f"{shape}; choose a sample folder that yields embeddings."
            )
        if raw.numel() != self.size:
            raise DataError(
                f"a vector has {raw.numel()} values but the network is built for "
                f"{self.size}: set --set features.size={raw.numel()} (every file must have the "
                "same size)."
            )
        x = raw.to(torch.float32)
        if train and self.noise > 0:
            x = x + self.noise * torch.randn_like(x)
        return x

    def collate(self, items: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        return torch.stack(list(items)), None

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if x.ndim != 2 or x.shape[1] != self.size:
            raise DataError(
                f"the 'vector' features expect a batch [N, {self.size}], got {tuple(x.shape)}."
            )
        if self.length_norm:
            x = torch.nn.functional.normalize(x, dim=1) * self.size**0.5
        return x, None

    def input_spec(self) -> dict[str, Any]:
        return {"kind": "vector", "size": self.size, "length_norm": self.length_norm}
