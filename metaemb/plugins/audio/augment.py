"""Speech augmentation components (the Kaldi / WeSpeaker / SpeechBrain recipe), batched on the
training device: additive noise ("noise"), reverberation ("reverb"), telephone band-limiting and
μ-law coding ("telephone"), speed perturbation ("speed", augment_speed.py) and SpecAugment
masking ("specaugment", augment_spec.py).

Every component acts on a [N, T] batch of waveforms with valid `lengths` (padding stays zero)
and applies to each utterance with probability `p`. The engine calls them in training mode only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from metaemb.core.errors import ConfigError
from metaemb.core.plugin.components import described
from metaemb.core.plugin.contract import Kind
from metaemb.core.plugin.interfaces import Augmentation
from metaemb.plugins.audio.augment_sources import (
    FileBank,
    coloured_noise,
    fft_convolve,
    mix_at_snr,
    musan_files,
    power,
    rir_files,
    simulate_rirs,
    uniform,
    valid_mask,
)

WAVEFORM = Kind("waveform")


def _check_range(name: str, lo_hi: Any, low: float | None = None) -> tuple[float, float]:
    vals = [float(v) for v in lo_hi]
    if len(vals) != 2 or vals[0] > vals[1] or (low is not None and vals[0] < low):
        bound = f", both ≥ {low}" if low is not None else ""
        raise ConfigError(f"{name} must be [min, max] with min ≤ max{bound}; got {lo_hi}.")
    return vals[0], vals[1]


def _check_seconds(name: str, value: float, high: float, why: str) -> float:
    """`value` as a float, or a ConfigError naming `name` unless it is in (0, high] seconds:
    each batch holds buffers of that length (a value in milliseconds exhausts the memory)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and 0 < value <= high):
        raise ConfigError(
            f"{name} must be a number of seconds in (0, {high:g}] ({why}); got {value!r}."
        )
    return float(value)


def _check_p(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"augment.{name}.p must be a probability in [0, 1]; got {p}.")
    return float(p)


class WaveAugmentation(Augmentation):
    """Shared set-up of the waveform augmentations: the sample rate comes from the features."""

    stage = "input"
    accepts = WAVEFORM

    def __init__(self) -> None:
        super().__init__()
        self.sample_rate = 16000

    def setup(self, input_spec: dict[str, Any]) -> None:
        """The waveform's sample rate is the features' `input_spec()["sample_rate"]`; features
        that do not give it would leave filters and noise banks at a guessed rate."""
        if "sample_rate" not in input_spec:
            raise ConfigError(
                f"{described(self, 'augmentation')} filters waveforms and needs their sample "
                "rate, but the features' input_spec() has no 'sample_rate' key (keys: "
                f"{', '.join(map(str, input_spec)) or 'none'}); add it to the features' "
                "input_spec()."
            )
        self.sample_rate = int(input_spec["sample_rate"])

    def chosen(self, n: int, p: float, device: torch.device) -> Tensor:
        """[N] bool: which utterances of the batch this augmentation changes."""
        return torch.rand(n, device=device) < p


class AddNoise(WaveAugmentation):
    """Additive noise at a sampled SNR: MUSAN noise/music/babble from `folder`, or built-in coloured
    noise and babble (other utterances of the batch, other speakers only) when it is empty.

    One category is drawn per utterance among those available; its SNR range applies (Kaldi /
    WeSpeaker: noise 0–15 dB, music 5–15 dB, babble of 3–7 speakers 13–20 dB).
    """

    def __init__(
        self,
        folder: str = "",
        p: float = 0.6,
        snr_noise: tuple[float, float] = (0.0, 15.0),
        snr_music: tuple[float, float] = (5.0, 15.0),
        snr_babble: tuple[float, float] = (13.0, 20.0),
        babble_speakers: tuple[int, int] = (3, 7),
        colour_exponent: tuple[float, float] = (0.0, 2.0),
        bank_size: int = 256,
        bank_seconds: float = 6.0,
        refresh: int = 4,
    ) -> None:
        super().__init__()
        self.folder = folder
        self.p = _check_p("noise", p)
        self.snr = {
            "noise": _check_range("augment.noise.snr_noise", snr_noise),
            "coloured": _check_range("augment.noise.snr_noise", snr_noise),
            "music": _check_range("augment.noise.snr_music", snr_music),
            "speech": _check_range("augment.noise.snr_babble", snr_babble),
            "babble": _check_range("augment.noise.snr_babble", snr_babble),
        }
        lo, hi = _check_range("augment.noise.babble_speakers", babble_speakers, low=1)
        self.speakers = (int(lo), int(hi))
        self.exponent = _check_range("augment.noise.colour_exponent", colour_exponent)
        bank_seconds = _check_seconds(
            "augment.noise.bank_seconds",
            bank_seconds,
            60.0,
            "the length of each of bank_size noise segments held on the device; crops are 2–4 s",
        )
        self.bank_args = (int(bank_size), bank_seconds, int(refresh))
        self.bank: FileBank | None = None
        self.categories = ["coloured", "babble"]
        if folder:
            files = musan_files(folder)
            self.categories = sorted(files)
            self._files = files

    def _bank(self, device: torch.device) -> FileBank:
        if self.bank is None:
            size, seconds, refresh = self.bank_args
            self.bank = FileBank(self._files, self.sample_rate, size, seconds, refresh)
        self.bank.ready(device)
        return self.bank

    def forward(
        self, x: Tensor, lengths: Tensor | None, labels: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        n, t = x.shape
        dev = x.device
        which = self.chosen(n, self.p, dev)
        if not bool(which.any()):
            return x, lengths, labels
        mask = valid_mask(x, lengths)
        cat = torch.randint(len(self.categories), (n,), device=dev)
        noise = torch.zeros_like(x)
        snr = torch.zeros(n, device=dev)
        bank = self._bank(dev) if self.folder else None
        for c, name in enumerate(self.categories):
            rows = torch.nonzero(which & (cat == c)).flatten()
            if rows.numel() == 0:
                continue
            snr[rows] = uniform(self.snr[name], rows.numel(), dev)
            if name == "coloured":
                expo = uniform(self.exponent, rows.numel(), dev)
                noise[rows] = coloured_noise(rows.numel(), t, expo, dev)
            elif name == "babble":
                noise[rows] = self._babble(x, mask, labels, rows)
            else:
                assert bank is not None
                noise[rows] = self._from_bank(bank, name, rows.numel(), t)
        mixed = mix_at_snr(x, noise, snr, mask)
        return torch.where(which[:, None], mixed, x), lengths, labels

    def _count(self, k: int, dev: torch.device) -> Tensor:
        lo, hi = self.speakers
        return torch.randint(lo, hi + 1, (k,), device=dev)

    def _babble(self, x: Tensor, mask: Tensor, labels: Tensor, rows: Tensor) -> Tensor:
        """Sum of 3–7 other utterances of the batch (never the same speaker), each at unit power."""
        n = x.shape[0]
        dev = x.device
        unit = x / power(x, mask).clamp(min=1e-20).sqrt()[:, None]
        count = self._count(rows.numel(), dev)
        out = torch.zeros(rows.numel(), x.shape[1], device=dev)
        for j in range(self.speakers[1]):
            other = torch.randint(n, (rows.numel(),), device=dev)
            use = (j < count) & (labels[other] != labels[rows])
            out += unit[other] * use[:, None].to(x.dtype)
        return out

    def _from_bank(self, bank: FileBank, name: str, k: int, t: int) -> Tensor:
        """Noise or music: one bank segment; speech: a babble of several bank segments."""
        idx = bank.entries(name)
        dev = idx.device
        if name != "speech":
            return bank.segments(idx[torch.randint(idx.numel(), (k,), device=dev)], t)
        count = self._count(k, dev)
        out = torch.zeros(k, t, device=dev)
        for j in range(self.speakers[1]):
            seg = bank.segments(idx[torch.randint(idx.numel(), (k,), device=dev)], t)
            seg = seg / seg.square().mean(-1, keepdim=True).clamp(min=1e-20).sqrt()
            out += seg * (j < count)[:, None].to(seg.dtype)
        return out


class Reverb(WaveAugmentation):
    """Reverberation by FFT convolution with a room impulse response: from `folder` (RIRS_NOISES
    layout, or any folder of RIR files; each aligned at its direct-path peak) or simulated with
    the exponential-decay model (RT60 and direct-to-reverberant ratio drawn per utterance).
    The output keeps the input's power, so only the room changes, not the level."""

    def __init__(
        self,
        folder: str = "",
        p: float = 0.5,
        rt60: tuple[float, float] = (0.2, 0.9),
        drr_db: tuple[float, float] = (-2.0, 12.0),
        max_seconds: float = 0.6,
        bank_size: int = 512,
        refresh: int = 4,
    ) -> None:
        super().__init__()
        self.folder = folder
        self.p = _check_p("reverb", p)
        self.rt60 = _check_range("augment.reverb.rt60", rt60, low=0.01)
        self.drr_db = _check_range("augment.reverb.drr_db", drr_db)
        self.max_seconds = _check_seconds(
            "augment.reverb.max_seconds",
            max_seconds,
            10.0,
            "the impulse-response length, convolved with every utterance; rooms decay in ~1 s",
        )
        self.bank_args = (int(bank_size), int(refresh))
        self.bank: FileBank | None = None
        self._files = rir_files(folder) if folder else []

    def impulse_responses(self, n: int, device: torch.device) -> Tensor:
        """[n, L] impulse responses for one batch (from the folder bank or simulated)."""
        length = max(1, round(self.max_seconds * self.sample_rate))
        if self.folder:
            if self.bank is None:
                size, refresh = self.bank_args
                files = {"rir": self._files}
                self.bank = FileBank(files, self.sample_rate, size, self.max_seconds, refresh, True)
            self.bank.ready(device)
            assert self.bank.data is not None
            pick = torch.randint(self.bank.size, (n,), device=device)
            return self.bank.data[pick]
        rt60 = uniform(self.rt60, n, device)
        drr = uniform(self.drr_db, n, device)
        return simulate_rirs(n, length, self.sample_rate, rt60, drr, device)

    def forward(
        self, x: Tensor, lengths: Tensor | None, labels: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        which = self.chosen(x.shape[0], self.p, x.device)
        rows = torch.nonzero(which).flatten()
        if rows.numel() == 0:
            return x, lengths, labels
        mask = valid_mask(x, lengths)[rows]
        dry = x[rows]
        wet = fft_convolve(dry, self.impulse_responses(rows.numel(), x.device)) * mask
        gain = (power(dry, mask) / power(wet, mask).clamp(min=1e-20)).sqrt()
        out = x.clone()
        out[rows] = wet * gain[:, None]
        return out, lengths, labels


class Telephone(WaveAugmentation):
    """Telephone channel: band-pass `low_hz`–`high_hz` (raised-cosine edges, `edge_hz` wide) and,
    with `mulaw`, G.711-style 8-bit μ-law coding (compress, quantise to 256 levels, expand)."""

    def __init__(
        self,
        p: float = 0.2,
        low_hz: float = 300.0,
        high_hz: float = 3400.0,
        edge_hz: float = 100.0,
        mulaw: bool = True,
    ) -> None:
        super().__init__()
        self.p = _check_p("telephone", p)
        if not 0 <= low_hz < high_hz or edge_hz < 0:
            raise ConfigError(
                f"augment.telephone needs 0 ≤ low_hz < high_hz and edge_hz ≥ 0; got "
                f"{low_hz}, {high_hz}, {edge_hz}."
            )
        self.low_hz, self.high_hz, self.edge_hz = float(low_hz), float(high_hz), float(edge_hz)
        self.mulaw = bool(mulaw)

    def setup(self, input_spec: dict[str, Any]) -> None:
        super().setup(input_spec)
        if self.low_hz >= self.sample_rate / 2:  # the whole band above Nyquist: silence
            raise ConfigError(
                f"augment.telephone passes {self.low_hz:g}–{self.high_hz:g} Hz, above the "
                f"highest frequency of {self.sample_rate} Hz audio ({self.sample_rate / 2:g} Hz): "
                "it would silence every input; lower augment.telephone.low_hz/high_hz."
            )

    def band_gain(self, freqs: Tensor) -> Tensor:
        """The pass-band magnitude response at `freqs` (Hz): 1 inside, 0 outside."""
        lo, hi, e = self.low_hz, self.high_hz, max(self.edge_hz, 1e-9)
        rise = ((freqs - (lo - e / 2)) / e).clamp(0, 1)
        fall = (((hi + e / 2) - freqs) / e).clamp(0, 1)
        return (0.5 - 0.5 * torch.cos(torch.pi * rise)) * (0.5 - 0.5 * torch.cos(torch.pi * fall))

    def forward(
        self, x: Tensor, lengths: Tensor | None, labels: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        rows = torch.nonzero(self.chosen(x.shape[0], self.p, x.device)).flatten()
        if rows.numel() == 0:
            return x, lengths, labels
        t = x.shape[-1]
        y = x[rows]
        freqs = torch.fft.rfftfreq(t, 1.0 / self.sample_rate).to(x.device)
        y = torch.fft.irfft(torch.fft.rfft(y, dim=-1) * self.band_gain(freqs), n=t, dim=-1)
        if self.mulaw:
            y = mulaw_roundtrip(y)
        out = x.clone()
        out[rows] = y * valid_mask(x, lengths)[rows]
        return out, lengths, labels


def mulaw_roundtrip(y: Tensor, mu: float = 255.0) -> Tensor:
    """μ-law compress → 8-bit quantise → expand, per row scaled to its peak (G.711-like)."""
    peak = y.abs().amax(-1, keepdim=True).clamp(min=1e-12)
    z = y / peak
    c = torch.sign(z) * torch.log1p(mu * z.abs()) / torch.log1p(torch.tensor(mu))
    c = torch.round((c + 1) * 127.5) / 127.5 - 1
    return peak * torch.sign(c) * torch.expm1(c.abs() * torch.log1p(torch.tensor(mu))) / mu
