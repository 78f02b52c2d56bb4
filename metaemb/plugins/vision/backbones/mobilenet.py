"""torchvision MobileNetV3 small/large as metaemb backbones: `classifier` removed, pooled features out.

Small gives 576 features, large 960. `small_input` makes the stem conv stride 1 (low-resolution
crops); `pretrained` is a local torchvision weights file, never downloaded. `bn_momentum` is
0.1, PyTorch's usual value: torchvision's 0.01 (from the TensorFlow original) leaves the running
statistics near their initial values for the first ~2,000 steps, and a short run then embeds
every sample alike in evaluation mode.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn
from torchvision import models

from metaemb.core.errors import ConfigError
from metaemb.plugins.vision.backbones.resnet import TorchvisionBackbone


class MobileNetV3Backbone(TorchvisionBackbone):
    """A torchvision MobileNetV3 without its classifier: [N, C, H, W] → pooled features [N, F]."""

    arch: ClassVar[str] = "mobilenet_v3_small"
    stem_key: ClassVar[str] = "features.0.0.weight"
    # Runs saved before the option existed trained with torchvision's value (their hash omits it).
    hash_neutral: ClassVar[dict[str, float]] = {"bn_momentum": 0.01}

    def __init__(
        self,
        in_channels: int = 3,
        small_input: bool = False,
        pretrained: str = "",
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self._check_channels(in_channels)
        if not 0.0 < bn_momentum <= 1.0:
            raise ConfigError(f"backbone.bn_momentum must be in (0, 1], got {bn_momentum}")
        net = getattr(models, self.arch)(weights=None)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = bn_momentum
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
