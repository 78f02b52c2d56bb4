"""torchvision ResNet-18/34/50 as metaemb backbones: the classifier `fc` removed, pooled features out.

`small_input` swaps the 7×7 stride-2 stem and max-pool for a 3×3 stride-1 conv, so low-resolution
crops (32–112 px) keep a spatial map worth pooling instead of shrinking 32× to 1–4 pixels.
`pretrained` is a local torchvision weights file (never downloaded here).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn
from torchvision import models

from metaemb.core.errors import ConfigError, first_few, first_line
from metaemb.core.plugin.contract import Kind
from metaemb.core.plugin.interfaces import Backbone

CLASSIFIER_PREFIXES = ("fc.", "classifier.")


def _read_state_dict(path: Path, arch: str) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:  # not a pickled object (junk bytes)
            raise ConfigError(
                f"config key 'backbone.pretrained': cannot read weights file '{path}' "
                f"(UnpicklingError: not a torch file); expected a torchvision {arch} state dict "
                "(.pth)."
            ) from None
        name = found.group(1).rstrip(".,")
        whole = _is_module_class(name)
        what = (
            f"a whole model ({name}, saved with torch.save(model)): save `model.state_dict()` "
            "and give that file"
            if whole
            else f"a pickled {name} (a whole model saved with torch.save(model), or a "
            "checkpoint holding such an object beside its weights): save the weights alone, "
            "model.state_dict() or the checkpoint's 'state_dict' entry, and give that file"
        )
        raise ConfigError(  # weights_only refused code: metaemb never unpickles it
            f"config key 'backbone.pretrained': '{path}' holds {what} (metaemb does not "
            "unpickle code)."
        ) from None
    except Exception as exc:
        why = first_line(exc, 200)
        raise ConfigError(
            f"config key 'backbone.pretrained': cannot read weights file '{path}' "
            f"({type(exc).__name__}: {why}); expected a torchvision {arch} state dict "
            "(.pth)."
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(
            f"config key 'backbone.pretrained': '{path}' is not a state dict of tensors; expected "
            f"torchvision {arch} weights."
        )
    return state


def _is_module_class(dotted: str) -> bool:
    """Whether `module.Class` names a torch.nn.Module subclass; only modules already imported
    are looked in (nothing a file names is imported on its behalf)."""
    import sys

    module, _, attr = dotted.rpartition(".")
    cls = getattr(sys.modules.get(module), attr, None)
    return isinstance(cls, type) and issubclass(cls, nn.Module)


def _adapt_stem(weight: Tensor, target: Tensor) -> Tensor | None:
    """Pretrained RGB stem → `target`'s input channels (mean over RGB, rescaled); None if the
    kernel shape differs (the small-input stem), which then keeps its random initialisation."""
    if weight.shape == target.shape:
        return weight
    if weight.shape[0] != target.shape[0] or weight.shape[2:] != target.shape[2:]:
        return None
    in_ch = target.shape[1]
    return weight.mean(1, keepdim=True).repeat(1, in_ch, 1, 1) * (weight.shape[1] / in_ch)


def load_pretrained(net: nn.Module, pretrained: str, arch: str, stem_key: str) -> list[str]:
    """Load a local torchvision weights file into `net` (its classifier removed).

    Returns the keys left at their initialisation (an adapted-away stem). Missing file, unreadable
    file or weights of another architecture raise ConfigError naming the path.
    """
    path = Path(pretrained).expanduser()
    weights_enum = {
        "resnet18": "ResNet18_Weights",
        "resnet34": "ResNet34_Weights",
        "resnet50": "ResNet50_Weights",
        "mobilenet_v3_small": "MobileNet_V3_Small_Weights",
        "mobilenet_v3_large": "MobileNet_V3_Large_Weights",
    }.get(arch, "the matching weights enum")
    if not path.is_file():
        raise ConfigError(
            f"config key 'backbone.pretrained': weights file '{path}' does not exist. metaemb never "
            f"downloads weights; fetch them once, e.g. the URL in torchvision.models.{weights_enum}"
            f'.IMAGENET1K_V1.url, and pass the local path (or set backbone.pretrained="").'
        )
    state = {
        k: v
        for k, v in _read_state_dict(path, arch).items()
        if not k.startswith(CLASSIFIER_PREFIXES)
    }
    own = net.state_dict()
    skipped = []
    stem_weight = state.get(stem_key)
    if stem_weight is not None and stem_key in own:
        adapted = _adapt_stem(stem_weight, own[stem_key])
        if adapted is None:
            del state[stem_key]
            skipped.append(stem_key)
        else:
            state[stem_key] = adapted
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        detail = "; ".join(
            f"{label}: {first_few(keys, 3, quote=False)}"
            for label, keys in (
                ("shape mismatch", wrong),
                ("missing", missing),
                ("unexpected", unexpected),
            )
            if keys
        )
        raise ConfigError(
            f"config key 'backbone.pretrained': '{path}' does not hold {arch} weights ({detail})."
        )
    net.load_state_dict(state, strict=False)
    return skipped


class TorchvisionBackbone(Backbone):
    """What the torchvision backbones share: the input kind, the in_channels check, keeping the
    trunk `net` and loading local pretrained weights into it (`stem_key`: the stem conv weight)."""

    arch: ClassVar[str]
    stem_key: ClassVar[str]
    accepts = Kind("image-tensor")

    def _check_channels(self, in_channels: int) -> None:
        if in_channels < 1:
            raise ConfigError(f"backbone {self.arch}: in_channels must be ≥ 1, got {in_channels}.")

    def _keep(self, net: nn.Module, in_channels: int, small_input: bool, pretrained: str) -> None:
        self.in_channels = in_channels
        self.small_input = small_input
        self.net = net
        self.reinitialised = (
            load_pretrained(net, pretrained, self.arch, self.stem_key) if pretrained else []
        )
        if self.reinitialised:  # the small-input 3×3 stem has no pretrained counterpart
            import warnings

            warnings.warn(
                f"backbone {self.arch}: the pretrained weights have no counterpart for "
                f"{', '.join(self.reinitialised)} (small_input={small_input} makes a 3×3 stem): "
                "it keeps its random initialisation and is trained from scratch; set "
                "backbone.small_input=false to start from the pretrained 7×7 stem.",
                stacklevel=2,
            )

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.net(x)

    def trunk(self) -> nn.Module:
        return self.net


class ResNetBackbone(TorchvisionBackbone):
    """A torchvision ResNet without `fc`: image batch [N, C, H, W] → pooled features [N, F]."""

    arch: ClassVar[str] = "resnet18"
    stem_key: ClassVar[str] = "conv1.weight"

    def __init__(
        self, in_channels: int = 3, small_input: bool = False, pretrained: str = ""
    ) -> None:
        super().__init__()
        self._check_channels(in_channels)
        net = getattr(models, self.arch)(weights=None)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        if small_input:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if small_input or in_channels != 3:
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self._keep(net, in_channels, small_input, pretrained)


class ResNet18(ResNetBackbone):
    """ResNet-18 (512 pooled features)."""

    arch = "resnet18"


class ResNet34(ResNetBackbone):
    """ResNet-34 (512 pooled features)."""

    arch = "resnet34"


class ResNet50(ResNetBackbone):
    """ResNet-50 (2048 pooled features)."""

    arch = "resnet50"
