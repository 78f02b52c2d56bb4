"""An example third-party metaemb plugin: a tiny CNN backbone for any image modality.

Installed with `pip install ./examples/plugin`; its entry point (group `metaemb`) makes
`metaemb plugins` list it and `--set model.backbone=tinycnn` select the backbone.
"""

from __future__ import annotations

from torch import Tensor, nn

import metaemb
from metaemb.core import Backbone
from metaemb.core.plugin.contract import Kind


class TinyCNN(Backbone):
    """Three conv blocks and global average pooling: small and fast, for demos and tests."""

    accepts = Kind("image-tensor")  # what the vision plugin's `image` features yield

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(3):
            out = width * 2**i
            layers += [
                nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.pool(self.body(x)).flatten(1)


@metaemb.hookimpl
def register_backbones(register) -> None:
    register("tinycnn", TinyCNN, description="example plugin: a three-block CNN")
