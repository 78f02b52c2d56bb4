"""Batched Kaldi-compatible log-mel filterbank on any device.

`torchaudio.compliance.kaldi.fbank` is the reference but takes one utterance at a time on whatever
device the tensor lives on. This module frames a padded batch [N, T] at once (snip_edges=True:
frame t covers samples [t·shift, t·shift + size), utterance of L samples has 1 + (L − size) // shift
frames, none when L < size), applies Kaldi's per-frame chain — dither, DC removal, pre-emphasis
(first sample replicated), window (povey = hann^0.85, or hamming), zero-pad to a power of two,
power spectrum, mel triangles (low 20 Hz … Nyquist, Kaldi mel scale 1127·ln(1 + f/700)), log with
a float32-epsilon floor — then optional per-utterance CMN over valid frames only. Padding frames
are zero in the output. The parity test holds it to ≤ 1e-3 of torchaudio with dither 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from metaemb.core.errors import ConfigError

WINDOWS = ("povey", "hamming", "hanning", "rectangular")
FLOAT_EPS = torch.finfo(torch.float32).eps


MAX_FRAME_MS = 1000.0  # analysis frames are 20–50 ms; a second is already no frame at all


def check_frame_ms(key: str, value: float) -> float:
    """`value` as a float, or a ConfigError naming `key` unless it is a finite number of
    milliseconds in (0, MAX_FRAME_MS] (seconds given by mistake, or 1e400, would overflow)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and 0 < value <= MAX_FRAME_MS):
        raise ConfigError(
            f"{key} must be a number of milliseconds in (0, {MAX_FRAME_MS:g}] (Kaldi uses 25 ms "
            f"frames every 10 ms); got {value!r}."
        )
    return float(value)


def kaldi_mel(freq: Tensor) -> Tensor:
    return 1127.0 * (1.0 + freq / 700.0).log()


def mel_banks(n_mels: int, n_fft: int, sample_rate: float, low: float, high: float) -> Tensor:
    """Kaldi's triangular mel filters [n_mels, n_fft // 2 + 1] (the Nyquist bin gets weight 0).

    Computed in float32 with the same expressions as Kaldi/torchaudio so the weights match bit for
    bit (a float64 computation differs by ~1e-5, which shows up in the parity margin).
    """
    nyquist = 0.5 * sample_rate
    if high <= 0.0:
        high += nyquist
    if not (0.0 <= low < nyquist and 0.0 < high <= nyquist and low < high):
        raise ConfigError(f"fbank: bad low_freq {low} / high_freq {high} for Nyquist {nyquist}.")
    mel_low = 1127.0 * math.log(1.0 + low / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high / 700.0)
    delta = (mel_high - mel_low) / (n_mels + 1)
    b = torch.arange(n_mels, dtype=torch.float32)[:, None]
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = kaldi_mel(sample_rate / n_fft * torch.arange(n_fft // 2, dtype=torch.float32))[None, :]
    banks = torch.clamp(
        torch.minimum((mel - left) / (center - left), (right - mel) / (right - center)), min=0
    )
    return torch.nn.functional.pad(banks, (0, 1)).float()


def window_function(kind: str, size: int) -> Tensor:
    if kind == "povey":
        return torch.hann_window(size, periodic=False, dtype=torch.float64).pow(0.85).float()
    if kind == "hamming":
        return torch.hamming_window(
            size, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float64
        ).float()
    if kind == "hanning":
        return torch.hann_window(size, periodic=False, dtype=torch.float64).float()
    if kind == "rectangular":
        return torch.ones(size)
    raise ConfigError(f"fbank: window must be one of {', '.join(WINDOWS)}; got '{kind}'.")


def num_frames(lengths: Tensor, size: int, shift: int) -> Tensor:
    """Frames per utterance with snip_edges=True: 1 + (L − size) // shift, or 0 when L < size."""
    return torch.where(lengths >= size, 1 + (lengths - size).div(shift, rounding_mode="floor"), 0)


CMN_MODES = ("mean", "level", "none")


def cmn_mode(value: bool | str) -> str:
    """The normalisation a `cmn` option names: true → "mean", false → "none"."""
    if isinstance(value, bool):
        return "mean" if value else "none"
    if value not in CMN_MODES:
        raise ConfigError(f"fbank: cmn must be true, false or one of {CMN_MODES}; got {value!r}.")
    return str(value)


def normalise(feats: Tensor, flen: Tensor, valid: Tensor, mode: str) -> Tensor:
    """[N, F, mels] log-mel, zero past each utterance's `flen` frames → normalised per `mode`."""
    if mode == "none":
        return feats
    count = flen.clamp(min=1).to(feats.dtype)[:, None, None]
    mean = feats.sum(dim=1, keepdim=True) / count  # [N, 1, mels]
    if mode == "level":
        mean = mean.mean(dim=2, keepdim=True)
    return (feats - mean) * valid[..., None].to(feats.dtype)


class KaldiFbank(nn.Module):
    """[N, T] padded waveforms (+ lengths in samples) → ([N, n_mels, frames], frame lengths).

    `int16_scale` multiplies float waveforms in [−1, 1] by 32768 first, as Kaldi assumes int16
    samples (set False if the input already is on that scale). `dither` (Gaussian, per sample, in
    int16 units; Kaldi trains with 1.0) is applied only in training mode and defaults to 0 so
    features are deterministic. `cmn` normalises each utterance over its valid frames: "mean"
    (or true) subtracts the mean of every mel band (Kaldi's CMN: removes the channel, and with it
    the speaker's long-term spectral shape), "level" subtracts one scalar, the mean over frames
    and bands (removes the gain only, keeps the spectral shape), "none" (or false) leaves it.
    """

    def __init__(
        self,
        n_mels: int = 80,
        sample_rate: int = 16000,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        window: str = "povey",
        preemphasis: float = 0.97,
        remove_dc_offset: bool = True,
        low_freq: float = 20.0,
        high_freq: float = 0.0,
        dither: float = 0.0,
        int16_scale: bool = True,
        cmn: bool | Literal["mean", "level", "none"] = True,
    ) -> None:
        super().__init__()
        self.n_mels = int(n_mels)
        self.sample_rate = int(sample_rate)
        frame_length_ms = check_frame_ms("features.fbank.frame_length_ms", frame_length_ms)
        frame_shift_ms = check_frame_ms("features.fbank.frame_shift_ms", frame_shift_ms)
        self.size = int(sample_rate * frame_length_ms * 0.001)
        self.shift = int(sample_rate * frame_shift_ms * 0.001)
        if self.size < 2 or self.shift < 1:
            raise ConfigError(
                f"fbank: frame length {self.size} / shift {self.shift} samples too small."
            )
        if not 0.0 <= preemphasis <= 1.0:
            raise ConfigError(f"fbank: preemphasis must be in [0, 1]; got {preemphasis}.")
        self.n_fft = 2 ** (self.size - 1).bit_length()  # next power of two (512 for 400)
        self.window_type = window
        self.preemphasis = float(preemphasis)
        self.remove_dc_offset = bool(remove_dc_offset)
        self.dither = float(dither)
        self.int16_scale = bool(int16_scale)
        self.cmn = cmn_mode(cmn)
        self.low_freq, self.high_freq = float(low_freq), float(high_freq)
        self.register_buffer("window", window_function(window, self.size), persistent=False)
        banks = mel_banks(self.n_mels, self.n_fft, sample_rate, low_freq, high_freq)
        self.register_buffer("banks", banks.T.contiguous(), persistent=False)  # [bins, mels]

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        return num_frames(lengths, self.size, self.shift)

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, cmn: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """`cmn` overrides the module's setting for one call (None = use it).

        Only the valid frames are computed (gathered into one [frames, size] matrix), so padding
        costs nothing; autocast is disabled because log-mel energies need float32.
        """
        if x.dim() != 2:
            raise ValueError(f"KaldiFbank expects [N, T] waveforms, got shape {tuple(x.shape)}")
        n, t = x.shape
        if lengths is None:
            lengths = torch.full((n,), t, dtype=torch.long)
        elif n and int(lengths.max()) > t:
            raise ValueError(f"lengths {lengths.tolist()} exceed the padded length {t}")
        flen = self.frame_lengths(lengths.to(dtype=torch.long)).to(x.device)
        n_frames = int(flen.max()) if n else 0
        if n_frames == 0:
            return x.new_zeros(n, self.n_mels, 0, dtype=torch.float32), flen
        with torch.autocast(device_type=x.device.type, enabled=False):
            valid = torch.arange(n_frames, device=x.device)[None, :] < flen[:, None]  # [N, F]
            frames = x.float()[:, : (n_frames - 1) * self.shift + self.size]
            packed = self._frames_to_fbank(frames.unfold(1, self.size, self.shift)[valid])
            feats = packed.new_zeros(n, n_frames, self.n_mels)
            feats[valid] = packed
            feats = normalise(feats, flen, valid, self.cmn if cmn is None else cmn_mode(cmn))
        return feats.transpose(1, 2), flen

    def _frames_to_fbank(self, frames: Tensor) -> Tensor:
        """[M, size] raw frames (a fresh copy, modified in place) → [M, n_mels] log-mel."""
        # Scaling by 32768 = 2^15 is exact in floating point, so it is folded into the window
        # (and the dither, which is in int16 units, is scaled down instead).
        scale = 32768.0 if self.int16_scale else 1.0
        if self.dither != 0.0 and self.training:
            frames.add_(torch.randn_like(frames), alpha=self.dither / scale)
        if self.remove_dc_offset:
            frames.sub_(frames.mean(dim=-1, keepdim=True))
        # The FFT input is zero-padded to n_fft: fill the first `size` columns of that buffer.
        buf = frames.new_zeros(frames.shape[0], self.n_fft)
        out = buf[:, : self.size]
        if self.preemphasis != 0.0:
            # y[j] = x[j] − p·x[j−1], with x[−1] = x[0] (Kaldi replicates the first sample).
            torch.sub(frames[:, 1:], frames[:, :-1], alpha=self.preemphasis, out=out[:, 1:])
            torch.mul(frames[:, 0], 1.0 - self.preemphasis, out=out[:, 0])
        else:
            out.copy_(frames)
        out.mul_(self.window * scale if scale != 1.0 else self.window)
        spec = torch.fft.rfft(buf)
        power = spec.real.square() + spec.imag.square()  # [M, bins]
        return torch.matmul(power, self.banks).clamp_min_(FLOAT_EPS).log_()

    def config(self) -> dict[str, object]:
        """The settings that define the features (stored with checkpoints)."""
        return {
            "n_mels": self.n_mels,
            "sample_rate": self.sample_rate,
            "frame_length_samples": self.size,
            "frame_shift_samples": self.shift,
            "n_fft": self.n_fft,
            "window": self.window_type,
            "preemphasis": self.preemphasis,
            "remove_dc_offset": self.remove_dc_offset,
            "low_freq": self.low_freq,
            "high_freq": self.high_freq,
            "int16_scale": self.int16_scale,
            "cmn": self.cmn,
            "snip_edges": True,
        }
