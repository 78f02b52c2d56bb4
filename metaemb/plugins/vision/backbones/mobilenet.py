"""torchvision MobileNetV3 small/large as metaemb backbones: `classifier` removed, pooled features out.

Small gives 576 features, large 960. `small_input` makes the stem conv stride 1 (low-resolution
crops); `pretrained` is a local torchvision weights file, never downloaded.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn
from torchvision import models

from metaemb.plugins.vision.backbones.resnet import TorchvisionBackbone


class MobileNetV3Backbone(TorchvisionBackbone):
    """A torchvision MobileNetV3 without its classifier: [N, C, H, W] → pooled features [N, F]."""

    arch: ClassVar[str] = "mobilenet_v3_small"
    stem_key: ClassVar[str] = "features.0.0.weight"

    def __init__(
        self, in_channels: int = 3, small_input: bool = False, pretrained: str = ""
    ) -> None:
        super().__init__()
        self._check_channels(in_channels)
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
        self._keep(net, in_channels, small_input, pretrained)


class MobileNetV3Small(MobileNetV3Backbone):
    """MobileNetV3-Small (576 pooled features)."""

    arch = "mobilenet_v3_small"


class MobileNetV3Large(MobileNetV3Backbone):
    """MobileNetV3-Large (960 pooled features)."""

    arch = "mobilenet_v3_large"
