"""Where augmentation signals come from: noise/RIR folders (MUSAN, RIRS_NOISES), coloured noise,
simulated room impulse responses, and the batched signal arithmetic the augmentations share.

Folders are indexed once; a bank of `bank_size` random segments is read into memory (then kept
on the training device) and `refresh` entries are replaced by new random files every batch, so a
large corpus (MUSAN is ~11 GB) is sampled over a run without holding it in memory.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError
from metaemb.plugins.audio.io import AUDIO_EXTENSIONS, read_audio
from metaemb.plugins.audio.synthetic import fast_length

MUSAN_CATEGORIES = ("noise", "music", "speech")
LN_1000 = 6.907755278982137  # ln(10³): a 60 dB energy decay in amplitude terms


# ---------------------------------------------------------------------------------------------
# Batched arithmetic on [N, T] waveforms with valid `lengths`.
def valid_mask(x: Tensor, lengths: Tensor | None) -> Tensor:
    """[N, T] float mask of the valid samples (all ones without lengths)."""
    if lengths is None:
        return torch.ones_like(x)
    t = torch.arange(x.shape[-1], device=x.device)
    return (t[None, :] < lengths.to(x.device)[:, None]).to(x.dtype)


def power(x: Tensor, mask: Tensor) -> Tensor:
    """Mean power of each row over its valid samples → [N]."""
    return (x.square() * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def mix_at_snr(x: Tensor, noise: Tensor, snr_db: Tensor, mask: Tensor) -> Tensor:
    """x + g·noise with g per row so that 10·log10(P_x / P_(g·noise)) = snr_db over valid samples."""
    px = power(x, mask)
    pn = power(noise, mask).clamp(min=1e-20)
    gain = torch.sqrt(px / (pn * 10.0 ** (snr_db / 10.0)))
    return x + gain[:, None] * noise * mask


def uniform(lo_hi: Sequence[float], n: int, device: torch.device) -> Tensor:
    """n draws from U[lo, hi)."""
    lo, hi = float(lo_hi[0]), float(lo_hi[-1])
    return lo + (hi - lo) * torch.rand(n, device=device)


def coloured_noise(n: int, t: int, exponent: Tensor, device: torch.device) -> Tensor:
    """[n, t] noise with power spectrum ∝ 1/f^exponent (0 white, 1 pink, 2 brown), per row."""
    spec = torch.fft.rfft(torch.randn(n, t, device=device), dim=-1)
    f = torch.arange(spec.shape[-1], device=device, dtype=torch.float32).clamp(min=1.0)
    spec = spec * f[None, :] ** (-exponent[:, None] / 2.0)
    return torch.fft.irfft(spec, n=t, dim=-1)


def fft_convolve(x: Tensor, h: Tensor) -> Tensor:
    """Linear convolution of each row of x [N, T] with h [N, L], truncated to T samples."""
    size = fast_length(x.shape[-1] + h.shape[-1] - 1)  # 2^a·3^b·5^c: no zero-padding to 2^k
    y = torch.fft.irfft(torch.fft.rfft(x, size) * torch.fft.rfft(h, size), size)
    return y[..., : x.shape[-1]]


def simulate_rirs(
    n: int, length: int, sample_rate: int, rt60: Tensor, drr_db: Tensor, device: torch.device
) -> Tensor:
    """[n, length] room impulse responses from the exponential-decay (Polack) model.

    A unit direct path at t = 0, then after a 1–5 ms pre-delay a diffuse tail of Gaussian noise
    whose amplitude decays as exp(−ln(10³)·t / RT60) (energy falls 60 dB in RT60 seconds),
    scaled so the direct-to-reverberant energy ratio is `drr_db`. Broadband (one RT60 for all
    frequencies): real rooms damp high frequencies faster, which this model leaves out.
    """
    t = torch.arange(length, device=device, dtype=torch.float32) / sample_rate
    delay = uniform((0.001, 0.005), n, device)
    onset = (t[None, :] >= delay[:, None]).float()
    tail = torch.randn(n, length, device=device) * torch.exp(-LN_1000 * t[None, :] / rt60[:, None])
    tail = tail * onset
    tail_energy = tail.square().sum(-1).clamp(min=1e-20)
    tail = tail * torch.sqrt(1.0 / (tail_energy * 10.0 ** (drr_db / 10.0)))[:, None]
    tail[:, 0] = 1.0  # the direct path
    return tail


# ---------------------------------------------------------------------------------------------
def find_audio(root: Path, under: str = "") -> list[Path]:
    """Every audio file below root/under, sorted."""
    base = root / under if under else root
    exts = set(AUDIO_EXTENSIONS)
    return sorted(p for p in base.rglob("*") if p.suffix.lower() in exts and p.is_file())


def musan_files(root: str) -> dict[str, list[Path]]:
    """MUSAN layout `<root>/{noise,music,speech}/…/*.wav` → category → files. A folder without
    those sub-folders is read as one 'noise' category."""
    base = Path(root)
    if not base.is_dir():
        raise ConfigError(
            f"augment.noise.folder '{root}' is not a folder; point it at a MUSAN-layout folder "
            "(noise/, music/, speech/ sub-folders) or leave it empty for built-in noises."
        )
    found = {c: find_audio(base, c) for c in MUSAN_CATEGORIES if (base / c).is_dir()}
    found = {c: files for c, files in found.items() if files}
    if not found:
        files = find_audio(base)
        if not files:
            raise DataError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under '{root}'.")
        found = {"noise": files}
    return found


def rir_files(root: str) -> list[Path]:
    """RIRS_NOISES layout: simulated_rirs/**/*.wav and real_rirs_isotropic_noises/*rir*.wav; any
    other folder: every audio file whose name does not say 'noise'."""
    base = Path(root)
    if not base.is_dir():
        raise ConfigError(
            f"augment.reverb.folder '{root}' is not a folder; point it at RIRS_NOISES (or any folder "
            "of impulse-response files) or leave it empty for simulated rooms."
        )
    if (base / "simulated_rirs").is_dir() or (base / "real_rirs_isotropic_noises").is_dir():
        files = find_audio(base, "simulated_rirs") if (base / "simulated_rirs").is_dir() else []
        real = base / "real_rirs_isotropic_noises"
        if real.is_dir():
            files += [p for p in find_audio(real) if "rir" in p.name.lower()]
    else:
        files = [p for p in find_audio(base) if "noise" not in p.name.lower()]
    if not files:
        raise DataError(f"no impulse-response audio files under '{root}'.")
    return files


class FileBank:
    """A refreshed in-memory bank of segments drawn from audio files (one category per file)."""

    def __init__(
        self,
        files: dict[str, list[Path]],
        sample_rate: int,
        size: int,
        seconds: float,
        refresh: int,
        rir: bool = False,
        seed: int = 0,
    ) -> None:
        self.files = {c: list(paths) for c, paths in sorted(files.items()) if paths}
        self.categories = sorted(self.files)
        self.count = sum(len(p) for p in self.files.values())
        self.sample_rate = sample_rate
        # Every category keeps slots (slot i holds category i mod #categories).
        self.size = max(len(self.categories), min(size, self.count))
        self.samples = max(1, round(seconds * sample_rate))
        self.refresh = refresh
        self.rir = rir
        self.rng = random.Random(seed)
        self.data: Tensor | None = None  # [size, samples], zero-padded
        self.lengths: Tensor | None = None
        self.cats: Tensor | None = None

    def _read(self, path: Path) -> Tensor:
        if self.rir:
            wave = read_audio(path, self.sample_rate)
            peak = int(wave.abs().argmax())
            wave = wave[peak : peak + self.samples]  # align the direct path at t = 0
            return wave / wave.norm().clamp(min=1e-12)
        import soundfile as sf

        try:
            seconds = float(sf.info(str(path)).duration)
        except (RuntimeError, OSError) as exc:
            raise DataError(f"cannot read noise file '{path}': {exc}") from exc
        span = self.samples / self.sample_rate
        start = self.rng.uniform(0.0, max(0.0, seconds - span))
        return read_audio(path, self.sample_rate, start=start, end=start + span)

    def _put(self, slot: int) -> None:
        assert self.data is not None and self.lengths is not None and self.cats is not None
        cat = self.categories[slot % len(self.categories)]
        path = self.rng.choice(self.files[cat])
        wave = self._read(path)[: self.samples].to(self.data.device)
        self.data[slot].zero_()
        self.data[slot, : wave.numel()] = wave
        self.lengths[slot] = wave.numel()
        self.cats[slot] = self.categories.index(cat)

    def ready(self, device: torch.device) -> None:
        """Fill the bank on first use, then replace `refresh` random entries per call."""
        if self.data is None:
            self.data = torch.zeros(self.size, self.samples, device=device)
            self.lengths = torch.ones(self.size, dtype=torch.long, device=device)
            self.cats = torch.zeros(self.size, dtype=torch.long, device=device)
            for slot in range(self.size):
                self._put(slot)
            return
        if self.data.device != device:
            self.data, self.lengths, self.cats = (
                a.to(device) for a in (self.data, self.lengths, self.cats)
            )
        for _ in range(min(self.refresh, self.size) if self.count > self.size else 0):
            self._put(self.rng.randrange(self.size))

    def entries(self, category: str) -> Tensor:
        """Bank indices holding files of `category` (possibly empty)."""
        assert self.cats is not None
        if category not in self.categories:
            return torch.zeros(0, dtype=torch.long, device=self.cats.device)
        return torch.nonzero(self.cats == self.categories.index(category)).flatten()

    def segments(self, index: Tensor, t: int) -> Tensor:
        """[len(index), t] segments of the given entries at random offsets (tiled when short)."""
        assert self.data is not None and self.lengths is not None
        lens = self.lengths[index]
        offset = (torch.rand(index.numel(), device=index.device) * lens).long()
        pos = (offset[:, None] + torch.arange(t, device=index.device)[None, :]) % lens[:, None]
        return self.data[index[:, None], pos]
