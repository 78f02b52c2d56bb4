"""ECAPA-TDNN (Desplanques et al. 2020), as in docs/reference/speaker.md.

    Conv1d(k5) → ReLU → BN                                   C channels
    3 × SE-Res2Block (k3, dilation 2/3/4, scale 8, SE 128)   C channels, residual
    multi-layer feature aggregation: concat → 1×1 conv       1536 channels
    attentive statistics pooling with global context         3072
    BN → Linear → BN                                         192 ← the backbone output

C = 512 has 6.2 M parameters, C = 1024 14.7 M. Like the x-vector, every convolution with a
temporal kernel sees zeros past each utterance's end and every time average (SE squeeze, pooling)
covers the valid frames only, so a padded batch gives each utterance's own embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaemb.core.errors import ConfigError
from metaemb.core.plugin.contract import Kind
from metaemb.core.plugin.interfaces import Backbone
from metaemb.plugins.audio.backbones.pooling import AttentiveStatsPooling, frame_mask, zero_padding


class ConvBlock(nn.Module):
    """Conv1d → ReLU → BatchNorm with "same" zero padding (inputs masked by the caller)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> None:
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, dilation=dilation, padding=pad)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm1d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.relu(self.conv(x)))


class Res2Conv(nn.Module):
    """Res2Net split: `scale` channel groups, each group's dilated conv sees the previous output."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(
            ConvBlock(width, width, kernel, dilation) for _ in range(scale - 1)
        )

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        parts = torch.chunk(x, self.scale, dim=1)
        outs = [parts[0]]
        y = None
        for i, block in enumerate(self.blocks):
            y = parts[i + 1] if y is None else y + parts[i + 1]
            y = block(zero_padding(y, mask))
            outs.append(y)
        return torch.cat(outs, dim=1)


class SqueezeExcite(nn.Module):
    """Channel gates from the utterance mean (valid frames only) through a bottleneck."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Conv1d(channels, bottleneck, 1),
            nn.ReLU(),
            nn.Conv1d(bottleneck, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            mean = x.mean(-1, keepdim=True)
        else:
            mean = (x * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)
        return x * self.fc(mean)


class SERes2Block(nn.Module):
    """1×1 conv → Res2 dilated conv → 1×1 conv → SE, with a residual connection."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int, se: int) -> None:
        super().__init__()
        self.pre = ConvBlock(channels, channels)
        self.res2 = Res2Conv(channels, kernel, dilation, scale)
        self.post = ConvBlock(channels, channels)
        self.se = SqueezeExcite(channels, se)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        y = self.post(self.res2(self.pre(x), mask))
        return x + self.se(y, mask)


class ECAPATDNN(Backbone):
    """ECAPA-TDNN with `channels` C (512 or 1024) and an `embedding_dim` (192) output."""

    accepts = Kind("feature-matrix")

    def __init__(
        self,
        in_channels: int = 80,
        channels: int = 512,
        embedding_dim: int = 192,
        mfa_channels: int = 1536,
        scale: int = 8,
        se_channels: int = 128,
        attention_channels: int = 128,
    ) -> None:
        super().__init__()
        if channels < scale or channels % scale:
            raise ConfigError(
                f"backbone 'ecapa_tdnn': channels ({channels}) must be a positive multiple of "
                f"scale ({scale})."
            )
        for key, value in (
            ("in_channels", in_channels),
            ("embedding_dim", embedding_dim),
            ("mfa_channels", mfa_channels),
            ("se_channels", se_channels),
            ("attention_channels", attention_channels),
        ):
            if value < 1:
                raise ConfigError(f"backbone 'ecapa_tdnn': {key} must be ≥ 1, got {value}.")
        self.in_channels = in_channels
        self.feature_dim = embedding_dim
        self.stem = ConvBlock(in_channels, channels, kernel=5)
        self.blocks = nn.ModuleList(
            SERes2Block(channels, 3, dilation, scale, se_channels) for dilation in (2, 3, 4)
        )
        self.mfa = nn.Sequential(nn.Conv1d(3 * channels, mfa_channels, 1), nn.ReLU())
        self.pool = AttentiveStatsPooling(mfa_channels, attention_channels, global_context=True)
        self.pool_bn = nn.BatchNorm1d(2 * mfa_channels)
        self.fc = nn.Linear(2 * mfa_channels, embedding_dim)
        self.out_bn = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ecapa_tdnn expects input [N, {self.in_channels}, T], got {list(x.shape)}"
            )
        mask = frame_mask(lengths, x)
        x = self.stem(zero_padding(x, mask))
        outs = []
        for block in self.blocks:
            x = block(x, mask)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=1))
        return self.out_bn(self.fc(self.pool_bn(self.pool(x, mask))))

    def trunk(self) -> nn.Module:
        """Everything before the pooling: the frame-level network."""
        return nn.ModuleList([self.stem, self.blocks, self.mfa])


# The factory name the tests and older code use; the class's signature is the one option list.
ecapa_tdnn = ECAPATDNN
