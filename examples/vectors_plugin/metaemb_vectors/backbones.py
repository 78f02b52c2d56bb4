"""Backbones for vectors: a small residual MLP, and `identity` (the head does all the learning).

A backbone receives the features' output [N, in_channels] and returns pooled features
[N, feature_dim]; `trunk()` is what `train.freeze_trunk_epochs` freezes.
"""

from __future__ import annotations

from torch import Tensor, nn

from metaemb.core import Backbone, ConfigError
from metaemb.core.plugin.contract import Kind


class VectorMLP(Backbone):
    """Linear → (LayerNorm → GELU → Linear, residual) × `layers`: a learned non-linear projection."""

    accepts = Kind("vector")

    def __init__(
        self, in_channels: int = 32, hidden: int = 128, layers: int = 2, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if hidden < 1 or layers < 0 or not 0.0 <= dropout < 1.0:
            raise ConfigError(
                "backbone 'mlp' needs hidden ≥ 1, layers ≥ 0 and 0 ≤ dropout < 1; got "
                f"hidden={hidden}, layers={layers}, dropout={dropout}."
            )
        self.inp = nn.Linear(in_channels, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
            )
            for _ in range(layers)
        )
        self.feature_dim = hidden

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return h


class IdentityBackbone(Backbone):
    """No parameters: the vectors go straight to the head (PLDA / GME back-end on given vectors)."""

    accepts = Kind("vector")

    def __init__(self, in_channels: int = 32) -> None:
        super().__init__()
        self.feature_dim = in_channels

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return x
