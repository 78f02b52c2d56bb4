"""AudioFeatures ("fbank"): waveform crops on the CPU, batched Kaldi fbank + CMN on the device.

Training: each utterance gives one random `crop_seconds` crop per step (utterances shorter than the
crop are tiled — repeated end to end — first), so batches have equal lengths.
Evaluation: the whole utterance. Utterances longer than `max_eval_seconds` are centre-cropped to it
here: `prepare` returns one tensor per sample, so it cannot split a recording into several items,
and the backbones' statistics pooling over one long crop already averages frame statistics the way
averaging chunk embeddings would. Utterances shorter than `min_seconds` are tiled up to it so
every input has enough frames for the backbone's context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.plugin.contract import Kind, Opt, expect_tensor
from metaemb.core.plugin.interfaces import Features
from metaemb.plugins.audio.fbank import KaldiFbank


def tile_to(wave: Tensor, n: int) -> Tensor:
    """Repeat `wave` end to end until it has at least `n` samples."""
    if wave.numel() == 0:
        raise DataError("cannot tile an empty waveform.")
    reps = -(-n // wave.numel())
    return torch.cat([wave] * reps) if reps > 1 else wave  # = wave.repeat(reps), 30× faster


class AudioFeatures(Features):
    """80-dim Kaldi log-mel filterbank with per-utterance CMN, computed batched on the device.

    forward([N, T] waveforms, lengths in samples) → ([N, n_mels, frames], frame lengths).
    `fbank` is the filterbank's option table ([features.fbank]: n_mels, sample_rate, window,
    dither, cmn, … — KaldiFbank's own parameters, not restated here); its dither (int16 units)
    is added in training mode only, and the default 0 keeps features deterministic.
    """

    accepts = Kind("waveform", rate=Opt("fbank.sample_rate"))
    yields = Kind("feature-matrix", channels=Opt("fbank.n_mels"))  # [n_mels, frames] each
    parts: ClassVar[dict[str, Any]] = {"fbank": KaldiFbank}  # a fixed part: [features.fbank]

    def __init__(
        self,
        fbank: dict[str, Any] | None = None,
        crop_seconds: float = 2.0,
        max_eval_seconds: float = 100.0,
        min_seconds: float = 0.5,
    ) -> None:
        super().__init__()
        if crop_seconds <= 0 or max_eval_seconds <= 0 or min_seconds < 0:
            raise ConfigError(
                "features: crop_seconds and max_eval_seconds must be > 0 and min_seconds ≥ 0; got "
                f"{crop_seconds}, {max_eval_seconds}, {min_seconds}."
            )
        self.fbank = KaldiFbank(**(fbank or {}))
        self.sample_rate = self.fbank.sample_rate
        self.crop_seconds = float(crop_seconds)
        self.max_eval_seconds = float(max_eval_seconds)
        self.min_seconds = float(min_seconds)
        self.out_channels = self.fbank.n_mels
        self.crop_samples = round(self.crop_seconds * self.sample_rate)
        self.max_eval_samples = round(self.max_eval_seconds * self.sample_rate)
        self.min_samples = max(self.fbank.size, round(self.min_seconds * self.sample_rate))

    def prepare(self, raw: Any, train: bool) -> Tensor:
        wave = expect_tensor(raw, "a mono waveform [T]", "features 'fbank'", ndim=1, floating=True)
        wave = wave.to(torch.float32)
        if wave.numel() == 0:
            raise DataError(
                "empty waveform reached the fbank features (0 samples after the frontend)."
            )
        if train:
            wave = tile_to(wave, self.crop_samples)
            start = int(torch.randint(0, wave.numel() - self.crop_samples + 1, ()).item())
            return wave[start : start + self.crop_samples].contiguous()
        if wave.numel() > self.max_eval_samples:
            start = (wave.numel() - self.max_eval_samples) // 2
            return wave[start : start + self.max_eval_samples].contiguous()
        return tile_to(wave, self.min_samples)[: max(wave.numel(), self.min_samples)]

    def train_crop(self) -> int:
        """`prepare(raw, train=True)` keeps `crop_samples` consecutive samples starting at
        torch.randint(0, T − crop + 1) when T ≥ crop: the sample pipeline may then read only
        that window (PreparedDataset), drawing the same number."""
        return self.crop_samples

    def collate(self, items: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        lengths = torch.tensor([int(x.numel()) for x in items], dtype=torch.long)
        if len(items) and bool((lengths == lengths[0]).all()):  # training crops: no padding
            return torch.stack([x.to(torch.float32) for x in items]), lengths
        batch = torch.zeros(len(items), int(lengths.max()) if len(items) else 0)
        for i, x in enumerate(items):
            batch[i, : x.numel()] = x
        return batch, lengths

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.fbank(x, lengths)

    def baseline_embedding(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Mean log-mel vector of each utterance, before CMN (after CMN it would be zero)."""
        feats, flen = self.fbank(x, lengths, cmn=False)
        mask = (torch.arange(feats.shape[-1], device=feats.device)[None, :] < flen[:, None]).float()
        return (feats * mask[:, None, :]).sum(-1) / flen[:, None].clamp(min=1)

    def input_spec(self) -> dict[str, Any]:
        return {
            "kind": "kaldi_fbank",
            **self.fbank.config(),
            "dither": self.fbank.dither,
            "crop_seconds": self.crop_seconds,
            "max_eval_seconds": self.max_eval_seconds,
            "min_seconds": self.min_seconds,
        }
