"""Speed perturbation ("speed"): resample each utterance by a factor, which changes tempo and
pitch together (sox `speed`, as Kaldi and WeSpeaker do), and treat each non-unit factor as a new
set of identities: speaker s at factor k becomes class s + k·S (S = training speakers), so the
classifier has S·len(factors) classes. The factor is drawn per speaker per batch, so batches of
P speakers × K utterances keep their structure.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import Tensor

from metaemb.core.errors import ConfigError
from metaemb.plugins.audio.augment import WaveAugmentation
from metaemb.plugins.audio.io import torchaudio_functional


def speed_perturb(x: Tensor, factor: float) -> Tensor:
    """Play [..., T] waveforms `factor` times faster: T/factor samples, pitch × factor."""
    if factor == 1.0:
        return x
    AF = torchaudio_functional()
    ratio = Fraction(factor).limit_denominator(100)
    # Reading ratio.numerator samples where ratio.denominator were: resample num → den.
    return AF.resample(x, ratio.numerator, ratio.denominator)


class SpeedPerturb(WaveAugmentation):
    """Speed perturbation 0.9 / 1.0 / 1.1 (uniformly drawn), each factor a new identity set."""

    def __init__(
        self, factors: tuple[float, ...] = (0.9, 1.0, 1.1), new_identities: bool = True
    ) -> None:
        super().__init__()
        factors = tuple(float(f) for f in factors)
        if (
            not factors
            or any(not 0.5 <= f <= 2.0 for f in factors)
            or len(set(factors)) < len(factors)
        ):
            raise ConfigError(
                f"augment.speed.factors must be distinct factors in [0.5, 2.0]; got {factors}."
            )
        # Factor 1.0 (if present) keeps the original labels: it goes first.
        self.factors = sorted(factors, key=lambda f: (f != 1.0, f))
        self.new_identities = bool(new_identities)
        self.base: int | None = None

    def num_classes(self, num_identities: int) -> int:
        self.base = int(num_identities)
        return self.base * len(self.factors) if self.new_identities else self.base

    def forward(
        self, x: Tensor, lengths: Tensor | None, labels: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        n, t = x.shape
        dev = x.device
        if lengths is None:
            lengths = torch.full((n,), t, dtype=torch.long, device=dev)
        speakers, inverse = torch.unique(labels, return_inverse=True)
        k = torch.randint(len(self.factors), (speakers.numel(),), device=dev)[inverse]
        out = torch.zeros_like(x)
        new_len = lengths.clone()
        for i, f in enumerate(self.factors):
            rows = torch.nonzero(k == i).flatten()
            if rows.numel() == 0:
                continue
            y = speed_perturb(x[rows], f)
            m = min(t, y.shape[-1])
            out[rows, :m] = y[:, :m]
            new_len[rows] = torch.clamp(torch.ceil(lengths[rows].double() / f).long(), max=t)
        if self.new_identities:
            if self.base is None:
                raise RuntimeError("SpeedPerturb.num_classes must be called before training.")
            labels = labels + k * self.base
        return out, new_len, labels
