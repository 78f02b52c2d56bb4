"""SpecAugment-style masking ("specaugment", Park et al. 2019) of the network input features
[N, F, T]: up to `freq_masks` bands of up to `freq_width` bins and up to `time_masks` spans of up
to `time_width` frames (inside each utterance's valid frames) are set to `value` (0: the mean
after CMN). WeSpeaker's defaults: one mask of each, ≤ 8 bins and ≤ 10 frames, probability 0.6.
A time mask also covers at most `time_max_fraction` of its utterance's valid frames (the paper's
upper bound p; torchaudio's `TimeMasking(p=…)`), so a short utterance is never blanked out, and
a frequency mask at most `freq_max_fraction` of the bins, so narrow inputs (5 pen channels, not
80 mel bands) are never wiped whole; neither cap binds on 40 or more bins at the defaults.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from metaemb.core.errors import ConfigError
from metaemb.core.plugin.contract import Kind
from metaemb.core.plugin.interfaces import Augmentation

FEATURE_MATRIX = Kind("feature-matrix")


def band_mask(size: int, starts: Tensor, widths: Tensor) -> Tensor:
    """[N, size] bool: True on [start, start + width) of each row (several bands per row when
    starts/widths are [N, M])."""
    pos = torch.arange(size, device=starts.device)
    if starts.dim() == 1:
        starts, widths = starts[:, None], widths[:, None]
    inside = (pos[None, None, :] >= starts[..., None]) & (
        pos[None, None, :] < (starts + widths)[..., None]
    )
    return inside.any(1)


class SpecAugment(Augmentation):
    """Frequency and time masking of the features, per utterance with probability `p`."""

    stage = "features"
    accepts = FEATURE_MATRIX
    # The values that reproduce the behaviour from before each option existed.
    hash_neutral: ClassVar[dict[str, float]] = {"time_max_fraction": 1.0, "freq_max_fraction": 1.0}

    def __init__(
        self,
        p: float = 0.6,
        freq_masks: int = 1,
        freq_width: int = 8,
        time_masks: int = 1,
        time_width: int = 10,
        value: float = 0.0,
        time_max_fraction: float = 0.2,
        freq_max_fraction: float = 0.2,
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0 or min(freq_masks, freq_width, time_masks, time_width) < 0:
            raise ConfigError(
                "augment.specaugment needs p in [0, 1] and non-negative mask counts and widths."
            )
        for key, share in (
            ("time_max_fraction", time_max_fraction),
            ("freq_max_fraction", freq_max_fraction),
        ):
            if not 0.0 < share <= 1.0:
                what = "an utterance's frames" if key.startswith("time") else "the bins"
                raise ConfigError(
                    f"augment.specaugment.{key} = {share}: give the largest share of {what} one "
                    "mask may cover, in (0, 1]."
                )
        self.p = float(p)
        self.freq = (int(freq_masks), int(freq_width))
        self.time = (int(time_masks), int(time_width))
        self.value = float(value)
        self.time_max_fraction = float(time_max_fraction)
        self.freq_max_fraction = float(freq_max_fraction)

    def draw(self, n: int, count: int, width: int, limit: Tensor) -> tuple[Tensor, Tensor]:
        """Random [n, count] starts and widths (0 … width) of bands inside [0, limit)."""
        dev = limit.device
        widths = torch.randint(0, width + 1, (n, count), device=dev)
        widths = torch.minimum(widths, limit[:, None])
        room = (limit[:, None] - widths + 1).clamp(min=1)
        starts = (torch.rand(n, count, device=dev) * room).long()
        return starts, widths

    def masks(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """The [N, F] frequency and [N, T] time masks for one batch (True = masked)."""
        n, f, t = x.shape
        dev = x.device
        chosen = torch.rand(n, device=dev) < self.p
        frames = lengths.to(dev) if lengths is not None else torch.full((n,), t, device=dev)
        widest = min(self.freq[1], int(f * self.freq_max_fraction))
        fs, fw = self.draw(n, self.freq[0], widest, torch.full((n,), f, device=dev))
        ts, tw = self.draw(n, self.time[0], self.time[1], frames.long())
        tw = torch.minimum(tw, (frames * self.time_max_fraction).floor().long()[:, None])
        fmask = band_mask(f, fs, fw * chosen[:, None]) if self.freq[0] else torch.zeros(n, f)
        tmask = band_mask(t, ts, tw * chosen[:, None]) if self.time[0] else torch.zeros(n, t)
        return fmask.to(dev, torch.bool), tmask.to(dev, torch.bool)

    def forward(
        self, x: Tensor, lengths: Tensor | None, labels: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        if x.dim() != 3:
            raise ConfigError(
                f"augment.specaugment masks [N, F, T] feature matrices; got a {x.dim()}-d batch."
            )
        fmask, tmask = self.masks(x, lengths)
        hit = fmask[:, :, None] | tmask[:, None, :]
        return x.masked_fill(hit, self.value), lengths, labels
