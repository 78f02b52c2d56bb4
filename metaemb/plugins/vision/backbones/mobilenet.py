"""torchvision MobileNetV3 small/large as metaemb backbones: `classifier` removed, pooled features out.

Small gives 576 features, large 960. `small_input` makes the stem conv stride 1 (low-resolution
crops); `pretrained` is a local torchvision weights file, never downloaded.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn
from torchvision import models

from metaemb.core.errors import ConfigError
from metaemb.core.plugin.contract import Kind
from metaemb.core.plugin.interfaces import Backbone
from metaemb.plugins.vision.backbones.resnet import load_pretrained


class MobileNetV3Backbone(Backbone):
    """A torchvision MobileNetV3 without its classifier: [N, C, H, W] → pooled features [N, F]."""

    arch: ClassVar[str] = "mobilenet_v3_small"
    accepts = Kind("image-tensor")

    def __init__(
        self, in_channels: int = 3, small_input: bool = False, pretrained: str = ""
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ConfigError(f"backbone {self.arch}: in_channels must be ≥ 1, got {in_channels}.")
        net = getattr(models, self.arch)(weights=None)
        stem: nn.Conv2d = net.features[0][0]
        self.feature_dim = net.classifier[0].in_features
        net.classifier = nn.Identity()
        if in_channels != 3:
            new = nn.Conv2d(in_channels, stem.out_channels, 3, stride=2, padding=1, bias=False)
            nn.init.kaiming_normal_(new.weight, mode="fan_out")
            net.features[0][0] = stem = new
        if small_input:
            stem.stride = (1, 1)
        self.in_channels = in_channels
        self.small_input = small_input
        self.net = net
        self.reinitialised = (
            load_pretrained(net, pretrained, self.arch, "features.0.0.weight") if pretrained else []
        )

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.net(x)

    def trunk(self) -> nn.Module:
        return self.net


class MobileNetV3Small(MobileNetV3Backbone):
    """MobileNetV3-Small (576 pooled features)."""

    arch = "mobilenet_v3_small"


class MobileNetV3Large(MobileNetV3Backbone):
    """MobileNetV3-Large (960 pooled features)."""

    arch = "mobilenet_v3_large"
