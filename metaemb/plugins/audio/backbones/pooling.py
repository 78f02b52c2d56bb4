"""Length-aware temporal pooling for speaker backbones.

Utterances of different lengths share a padded batch [N, C, T]; every statistic here is taken over
the valid frames only, so a padded batch gives the same result as each utterance alone. Convolutions
stay exact too when their input is zeroed past each utterance's end (`zero_padding`): a lone
utterance is zero-padded by the convolution itself, so both see the same zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

STD_FLOOR = 1e-5  # variance floor: the standard deviation of a constant input is sqrt(floor)


def frame_mask(lengths: Tensor | None, x: Tensor) -> Tensor | None:
    """[N, 1, T] float mask of valid frames for `x` [N, C, T]; None when every frame is valid."""
    if lengths is None:
        return None
    t = x.shape[-1]
    lengths = lengths.to(device=x.device).long()
    if bool((lengths < 1).any()) or bool((lengths > t).any()):
        raise ValueError(f"frame lengths must be in [1, {t}], got {lengths.tolist()}")
    if bool((lengths == t).all()):
        return None
    steps = torch.arange(t, device=x.device)
    return (steps[None, :] < lengths[:, None]).to(x.dtype).unsqueeze(1)


def zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the frames past each utterance's end (what a lone utterance's conv padding sees)."""
    return x if mask is None else x * mask


def masked_mean_std(
    x: Tensor, mask: Tensor | None, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation over time [N, C] of the valid frames, optionally weighted.

    `weights` [N, C|1, T] must sum to 1 over the valid frames (attention); without them every
    valid frame counts equally. Computed in float32 so bf16 autocast does not lose the variance.
    """
    xf = x.float()
    if weights is None:
        if mask is None:
            weights = torch.full_like(xf[:, :1], 1.0 / xf.shape[-1])
        else:
            m = mask.float()
            weights = m / m.sum(-1, keepdim=True)
    else:
        weights = weights.float()
    mean = (xf * weights).sum(-1)
    var = ((xf - mean.unsqueeze(-1)).pow(2) * weights).sum(-1)
    std = var.clamp(min=STD_FLOOR).sqrt()
    return mean, std


class StatsPooling(nn.Module):
    """x-vector statistics pooling: mean ‖ standard deviation over the valid frames → [N, 2C]."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        mean, std = masked_mean_std(x, mask)
        return torch.cat([mean, std], dim=1).to(x.dtype)


class AttentiveStatsPooling(nn.Module):
    """ECAPA-TDNN attentive statistics pooling with global context (Desplanques et al. 2020).

    Each frame is scored per channel from [h_t ‖ mean ‖ std] (mean/std over the utterance: the
    global context); a softmax over the valid frames gives weights for a weighted mean ‖ std.
    """

    def __init__(self, channels: int, attention_channels: int = 128, global_context: bool = True):
        super().__init__()
        self.global_context = global_context
        in_ch = channels * 3 if global_context else channels
        self.attention = nn.Sequential(
            nn.Conv1d(in_ch, attention_channels, kernel_size=1),
            nn.ReLU(),
            nn.BatchNorm1d(attention_channels),
            nn.Tanh(),
            nn.Conv1d(attention_channels, channels, kernel_size=1),
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        t = x.shape[-1]
        if self.global_context:
            mean, std = masked_mean_std(x, mask)
            stats = [s.to(x.dtype).unsqueeze(-1).expand(-1, -1, t) for s in (mean, std)]
            context = torch.cat([x, *stats], dim=1)
        else:
            context = x
        scores = self.attention(context).float()
        if mask is not None:
            scores = scores.masked_fill(mask == 0, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        mean, std = masked_mean_std(x, mask, weights)
        return torch.cat([mean, std], dim=1).to(x.dtype)
