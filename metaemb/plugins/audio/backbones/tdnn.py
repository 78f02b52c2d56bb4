"""The x-vector TDNN (Snyder et al. 2018), exactly the layer table of docs/reference/speaker.md.

    frame1  kernel 5, dilation 1   512     each frame layer: Conv1d → ReLU → BatchNorm
    frame2  kernel 3, dilation 2   512
    frame3  kernel 3, dilation 3   512
    frame4  kernel 1               512
    frame5  kernel 1               1500
    statistics pooling (masked)    3000    mean ‖ std over the valid frames
    segment6  affine               512     ← the backbone output (`feature_dim`), before non-linearity

segment7 (affine + ReLU + BN) and the softmax belong to training: in metaemb the engine's Head
(BN → Dropout → Linear → BN) takes segment7's place and the objective's classifier the softmax's,
so the backbone stops at segment6, the layer the recipe extracts embeddings from. With 80-dim input
the backbone has 4.36 M parameters; with a 512-dim head standing in for segment7, 4.62 M — the
spec's ~4.6 M for the network without its classifier.

Convolutions use zero "same" padding and their inputs are zeroed past each utterance's end, so a
padded batch gives exactly the embedding of each utterance alone, for any length ≥ 1 frame.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaemb.core.errors import ConfigError
from metaemb.core.plugin.contract import Kind
from metaemb.core.plugin.interfaces import Backbone
from metaemb.plugins.audio.backbones.pooling import StatsPooling, frame_mask, zero_padding


class FrameLayer(nn.Module):
    """One TDNN frame layer: dilated Conv1d → ReLU → BatchNorm, padded to keep the length."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            in_ch, out_ch, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2
        )
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm1d(out_ch)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.conv.kernel_size[0] > 1:
            x = zero_padding(x, mask)
        return self.bn(self.relu(self.conv(x)))


class XVector(Backbone):
    """x-vector TDNN: frame1–5, masked statistics pooling, segment6 (the embedding layer).

    `channels` (512), `pool_channels` (1500) and `embedding_dim` (512) are the spec's widths; smaller
    ones give a cheaper network with the same structure (quick CPU runs).
    """

    accepts = Kind("feature-matrix")

    def __init__(
        self,
        in_channels: int = 80,
        channels: int = 512,
        pool_channels: int = 1500,
        embedding_dim: int = 512,
        input_stats: bool = False,
    ) -> None:
        super().__init__()
        for key, value in (
            ("in_channels", in_channels),
            ("channels", channels),
            ("pool_channels", pool_channels),
            ("embedding_dim", embedding_dim),
        ):
            if value < 1:
                raise ConfigError(f"backbone 'xvector': {key} must be ≥ 1, got {value}.")
        self.in_channels = in_channels
        self.feature_dim = embedding_dim
        self.frames = nn.ModuleList(
            [
                FrameLayer(in_channels, channels, 5, 1),
                FrameLayer(channels, channels, 3, 2),
                FrameLayer(channels, channels, 3, 3),
                FrameLayer(channels, channels, 1, 1),
                FrameLayer(channels, pool_channels, 1, 1),
            ]
        )
        self.pool = StatsPooling()
        # input_stats: the input's own mean ‖ std (the long-term spectrum) joins the pooled
        # statistics, batch-normalised, so segment6 can weigh it directly.
        self.input_norm = nn.BatchNorm1d(2 * in_channels) if input_stats else None
        extra = 2 * in_channels if input_stats else 0
        self.segment6 = nn.Linear(2 * pool_channels + extra, embedding_dim)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"xvector expects input [N, {self.in_channels}, T], got {list(x.shape)}"
            )
        mask = frame_mask(lengths, x)
        inputs = x
        for layer in self.frames:
            x = layer(x, mask)
        pooled = self.pool(x, mask)
        if self.input_norm is not None:
            pooled = torch.cat([pooled, self.input_norm(self.pool(inputs, mask))], dim=1)
        return self.segment6(pooled)

    def trunk(self) -> nn.Module:
        """The frame layers: what freezing freezes (segment6 stays trainable)."""
        return self.frames


def xvector(
    in_channels: int = 80,
    channels: int = 512,
    pool_channels: int = 1500,
    embedding_dim: int = 512,
    input_stats: bool = False,
) -> XVector:
    """x-vector TDNN (Snyder et al. 2018): frame1–5, masked stats pooling, segment6 embedding."""
    return XVector(in_channels, channels, pool_channels, embedding_dim, input_stats)
