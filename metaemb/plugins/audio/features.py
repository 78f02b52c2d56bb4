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

import math
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.plugin.contract import Kind, Opt, expect_tensor
from metaemb.core.plugin.interfaces import Features
from metaemb.plugins.audio.fbank import KaldiFbank

# The shortest crop: the x-vector TDNN's frame context, t−7 … t+7 (frame1–3: kernel 5, kernel 3
# dilation 2, kernel 3 dilation 3 → 1 + 4 + 4 + 6 = 15 frames); 0.165 s with 25/10 ms frames. A
# shorter crop gives features whose frames all see padding (ECAPA's stem and one dilated conv per
# block span 23 frames, its Res2 chains far more, so 2–3 s crops are usual for it).
CONTEXT_FRAMES = 15
# The longest crop (and min_seconds): training crops tile every shorter utterance to this length
# and a batch holds batch_size of them, so a value in milliseconds by mistake (2000) exhausts the
# memory; speaker-recognition recipes crop 2–4 s, and segments longer than a minute add nothing.
MAX_CROP_SECONDS = 60.0


def check_seconds(key: str, value: float, low: float, high: float) -> None:
    """ConfigError naming `key` unless low ≤ value ≤ high (a finite number of seconds)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and math.isfinite(value) and low <= value <= high:
        return
    rng = f"at least {low:.3g} s" + ("" if math.isinf(high) else f" and at most {high:g} s")
    low_side, high_side = (value < low, value > high) if number else (True, True)
    why = ""
    if low > 0 and low_side:
        why += (
            f" Below {low:.3g} s a crop holds fewer than the {CONTEXT_FRAMES} fbank frames of "
            "the x-vector's context."
        )
    if high == MAX_CROP_SECONDS and high_side:
        why += (
            f" Above {high:g} s, shorter utterances are only repeated end to end, and a batch "
            "holds batch_size such crops (a value in milliseconds by mistake exhausts the memory)."
        )
    raise ConfigError(f"{key} must be a number of seconds, {rng}; got {value!r}.{why}")


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
    # evaluation's crop of long recordings, changeable after training (--features-set)
    test_options: ClassVar[tuple[str, ...]] = ("max_eval_seconds",)
    view_options: ClassVar[tuple[str, ...]] = ()  # a crop, not a view: no part of the digest

    def __init__(
        self,
        fbank: dict[str, Any] | None = None,
        crop_seconds: float = 2.0,
        max_eval_seconds: float = 100.0,
        min_seconds: float = 0.5,
    ) -> None:
        super().__init__()
        self.fbank = KaldiFbank(**(fbank or {}))
        shortest = (self.fbank.size + (CONTEXT_FRAMES - 1) * self.fbank.shift) / (
            self.fbank.sample_rate
        )
        check_seconds("features.crop_seconds", crop_seconds, shortest, MAX_CROP_SECONDS)
        check_seconds("features.min_seconds", min_seconds, 0.0, MAX_CROP_SECONDS)
        self._shortest = shortest
        self.sample_rate = self.fbank.sample_rate
        self.crop_seconds = float(crop_seconds)
        self.max_eval_seconds = max_eval_seconds
        self.min_seconds = float(min_seconds)
        self.out_channels = self.fbank.n_mels
        self.crop_samples = round(self.crop_seconds * self.sample_rate)
        self.min_samples = max(self.fbank.size, round(self.min_seconds * self.sample_rate))

    @property
    def max_eval_seconds(self) -> float:
        return self._max_eval_seconds

    @max_eval_seconds.setter
    def max_eval_seconds(self, value: float) -> None:
        """Checked when set, also after training (`--features-set max_eval_seconds=600`)."""
        check_seconds("features.max_eval_seconds", value, self._shortest, math.inf)
        self._max_eval_seconds = float(value)
        self.max_eval_samples = round(self._max_eval_seconds * self.sample_rate)

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
            _note_cropped_once(wave.numel() / self.sample_rate, self.max_eval_seconds)
            start = (wave.numel() - self.max_eval_samples) // 2
            return wave[start : start + self.max_eval_samples].contiguous()
        if wave.numel() < self.min_samples:
            _note_tiled_once(wave.numel() / self.sample_rate, self.min_seconds)
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


_cropped_noted = False


def _note_cropped_once(seconds: float, kept: float) -> None:
    """Say (once per process) that a recording longer than `max_eval_seconds` is embedded from
    its middle: the rest (30 s of another voice in a CN-Celeb enrolment file) never counts."""
    global _cropped_noted
    if _cropped_noted:
        return
    _cropped_noted = True
    warnings.warn(
        f"recordings longer than features.max_eval_seconds = {kept:g} s (of what the frontend "
        f"keeps: the speech, after a VAD) are embedded from their middle {kept:g} s (the first "
        f"met has {seconds:.1f} s). To keep more, give evaluate, embed or export "
        f"--features-set max_eval_seconds={600 if kept < 600 else math.ceil(seconds)} (memory "
        "grows with it). Said once per process (so once per data-loader worker).",
        stacklevel=2,
    )


_tiled_noted = False


def _note_tiled_once(seconds: float, least: float) -> None:
    """Say (once per process) that a recording shorter than `min_seconds` is embedded as
    itself repeated to that length: a 0.2 s test segment gets an ordinary-looking embedding."""
    global _tiled_noted
    if _tiled_noted:
        return
    _tiled_noted = True
    warnings.warn(
        f"recordings shorter than features.min_seconds = {least:g} s (of what the frontend "
        f"keeps: the speech, after a VAD) are embedded as themselves repeated to {least:g} s "
        f"(the first met has {seconds:.2f} s); such short trials score less reliably. Said once "
        "per process (so once per data-loader worker).",
        stacklevel=2,
    )
