"""Built-in synthetic voices: a deterministic source-filter generator (the speaker demo dataset).

Identity lives in stable cues: each speaker has a pitch range, a vocal-tract length (all formants
scaled), a personal vowel space, formant bandwidths, a spectral tilt, a personal spectral colour
(a smooth ±4 dB shape over the mel scale: the fine differences of vocal tracts and voice sources
that formants alone do not describe), breathiness, a speaking rate and a level of jitter and
shimmer. Nuisance varies per utterance: the phone sequence (most vowels are drawn anywhere in the
vowel space, not from a fixed inventory), pauses, intonation, a small drift of every trait (as a
person's voice varies between recordings), coloured background noise at a random SNR and the
gain.

There is deliberately no random channel (equaliser) per utterance. An earlier version had one, to
make the no-learning baseline weak; it taught the network to ignore the long-term spectral shape,
which is the strongest cue of real recorded voices, and the model transferred worse to real
speech than a spectral average (see docs/speaker.md, "Does the default model transfer"). For the
same reason the background is quiet (30–60 dB SNR, as in read or studio speech): louder random
noise made the long-term spectrum of one synthetic speaker vary more than real recordings do.

Synthesis is vectorised per utterance: per-frame spectral envelopes (formant resonances, tilt,
frication bands) shape the STFT of a glottal pulse train and of white noise, then overlap-add.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from metaemb.core.errors import ConfigError, DataError

WIN = 512  # synthesis STFT window (32 ms at 16 kHz)
HOP = WIN // 4
COLOUR_TERMS = 12  # cosine shapes of the spectral colour
COLOUR_DB = 4.0  # its standard deviation over frequency, dB
COLOUR_SCALE = float(np.sqrt(COLOUR_TERMS / 2))  # Σ c_k cos(·) then has sd COLOUR_DB
MANIFEST = "voices.json"  # at the root, outside every speaker folder: the scan ignores it
VERSION = 3  # bump when the generator's output changes, so caches regenerate

# Vowel formant targets F1–F3 (Hz, adult average; Peterson & Barney style).
VOWELS = np.array(
    [
        [270, 2290, 3010],  # i
        [390, 1990, 2550],  # ɪ
        [530, 1840, 2480],  # ɛ
        [660, 1720, 2410],  # æ
        [730, 1090, 2440],  # ɑ
        [570, 840, 2410],  # ɔ
        [440, 1020, 2240],  # ʊ
        [300, 870, 2240],  # u
        [640, 1190, 2390],  # ʌ
    ],
    dtype=np.float64,
)
# Voiced consonants: formants F1–F3, voicing amplitude.
SONORANTS = np.array(
    [
        [250, 1000, 2200, 0.45],  # m
        [250, 1400, 2500, 0.45],  # n
        [360, 1300, 2700, 0.7],  # l
        [420, 1300, 1600, 0.7],  # r
        [300, 700, 2200, 0.7],  # w
        [270, 2200, 3000, 0.7],  # j
    ],
    dtype=np.float64,
)
# Noise bands of fricatives and bursts: centre (Hz), bandwidth (Hz), level.
FRICATIVES = np.array(
    [
        [5800, 2500, 1.0],  # s
        [3200, 1600, 1.0],  # ʃ
        [6500, 6000, 0.35],  # f
        [4200, 3000, 0.6],  # θ
    ]
)
BURSTS = np.array([[1200, 1500, 0.8], [4000, 2500, 0.8], [2300, 1200, 0.8]])  # p, t, k


@dataclass(frozen=True)
class Voice:
    """One speaker's stable traits (drawn once per speaker from the seed)."""

    f0: float  # median pitch, Hz
    f0_range: float  # intonation spread, semitones
    formant_scale: float  # 1 / relative vocal-tract length
    vowel_offsets: tuple[tuple[float, ...], ...]  # personal log-factors per vowel and formant
    f4: float
    f5: float
    bandwidth: float  # formant bandwidth factor
    tilt: float  # source spectral tilt, dB per octave
    breath: float  # aspiration noise level relative to voicing
    rate: float  # phone-duration factor (> 1 is slower)
    jitter: float = 0.01  # relative pitch perturbation per 8 ms frame
    shimmer: float = 0.08  # relative amplitude perturbation per glottal pulse
    colour: tuple[float, ...] = ()  # spectral colour: dB weights of cos(πk·mel/mel_max), k = 1…


def draw_voice(rng: np.random.Generator) -> Voice:
    """A speaker: traits spread widely enough that each voice is distinguishable."""
    return Voice(
        f0=float(np.exp(rng.uniform(np.log(80.0), np.log(280.0)))),
        f0_range=float(rng.uniform(1.0, 4.0)),
        formant_scale=float(rng.uniform(0.82, 1.2)),
        vowel_offsets=tuple(tuple(rng.normal(0.0, 0.03, 3).tolist()) for _ in VOWELS),
        f4=float(rng.uniform(3250.0, 3900.0)),
        f5=float(rng.uniform(4300.0, 5200.0)),
        bandwidth=float(rng.uniform(0.6, 1.6)),
        tilt=float(rng.uniform(-15.0, -6.0)),
        breath=float(rng.uniform(0.02, 0.4)),
        rate=float(rng.uniform(0.75, 1.35)),
        jitter=float(rng.uniform(0.003, 0.02)),
        shimmer=float(rng.uniform(0.03, 0.15)),
        colour=tuple((rng.normal(0.0, 1.0, COLOUR_TERMS) * COLOUR_DB / COLOUR_SCALE).tolist()),
    )


def drift(voice: Voice, rng: np.random.Generator) -> Voice:
    """The same person on another day: every trait moves a little (≈ 1.5 % vocal-tract length,
    1.5 dB/octave tilt, 30 % breathiness, 10 % bandwidth, a quarter of the spectral colour)."""
    formant_scale = voice.formant_scale * float(np.exp(rng.normal(0.0, 0.015)))
    tilt = voice.tilt + float(rng.normal(0.0, 1.5))
    breath = voice.breath * float(np.exp(rng.normal(0.0, 0.3)))
    bandwidth = voice.bandwidth * float(np.exp(rng.normal(0.0, 0.1)))
    colour = np.asarray(voice.colour)
    colour = colour + rng.normal(0.0, 1.0, colour.size) * 0.25 * COLOUR_DB / COLOUR_SCALE
    return replace(
        voice,
        formant_scale=formant_scale,
        tilt=tilt,
        breath=breath,
        bandwidth=bandwidth,
        colour=tuple(colour.tolist()),
    )


# ---------------------------------------------------------------------------------------------
# Phone timeline → per-frame synthesis parameters.
@dataclass
class Track:
    """Per-frame controls (one row per synthesis hop)."""

    formants: np.ndarray  # [F, 3] F1–F3 targets
    voiced: np.ndarray  # [F] voicing amplitude
    aspirate: np.ndarray  # [F] aspiration (shaped by the vocal tract)
    fric: np.ndarray  # [F] frication amplitude
    fric_band: np.ndarray  # [F, 3] centre, bandwidth, level of the frication band


def phone_timeline(voice: Voice, n_frames: int, sr: int, rng: np.random.Generator) -> Track:
    """Random syllables (C)V(C) in words and phrases, separated by pauses, until n_frames."""
    ms = 1000.0 * HOP / sr  # frame length in ms
    rate = voice.rate * rng.uniform(0.9, 1.1)
    rows: list[tuple[int, np.ndarray, float, float, float, np.ndarray]] = []
    silence_band = np.zeros(3)
    neutral = VOWELS.mean(0)

    def add(dur_ms: float, formants, voiced=0.0, aspirate=0.0, fric=0.0, band=silence_band):
        rows.append(
            (max(1, round(dur_ms * rate / ms)), np.asarray(formants), voiced, aspirate, fric, band)
        )

    def consonant() -> None:
        kind = rng.integers(4)
        if kind == 0:  # sonorant
            s = SONORANTS[rng.integers(len(SONORANTS))]
            add(rng.uniform(50, 90), s[:3], voiced=s[3], aspirate=voice.breath * s[3])
        elif kind == 1:  # fricative, sometimes voiced
            band = FRICATIVES[rng.integers(len(FRICATIVES))]
            v = 0.3 if rng.random() < 0.4 else 0.0
            add(rng.uniform(60, 120), neutral, voiced=v, fric=1.0, band=band)
        else:  # plosive: closure then burst
            band = BURSTS[rng.integers(len(BURSTS))]
            add(rng.uniform(30, 70), neutral, voiced=0.04 if rng.random() < 0.5 else 0.0)
            add(rng.uniform(10, 25), neutral, fric=1.2, band=band)

    add(rng.uniform(100, 400) / rate, neutral)  # leading silence
    total = rows[0][0]
    while total < n_frames:
        for _word in range(rng.integers(2, 6)):  # a phrase of words
            for _syl in range(rng.integers(1, 4)):
                if rng.random() < 0.75:
                    consonant()
                add(rng.uniform(70, 170), vowel(voice, rng), voiced=1.0, aspirate=voice.breath)
                if rng.random() < 0.3:
                    consonant()
            add(rng.uniform(0, 80), neutral)  # gap between words
        add(rng.uniform(200, 600) / rate, neutral)  # pause between phrases
        total = sum(r[0] for r in rows)

    lens = np.array([r[0] for r in rows])
    track = Track(
        formants=np.repeat(np.stack([r[1] for r in rows]), lens, axis=0)[:n_frames],
        voiced=np.repeat([r[2] for r in rows], lens)[:n_frames],
        aspirate=np.repeat([r[3] for r in rows], lens)[:n_frames],
        fric=np.repeat([r[4] for r in rows], lens)[:n_frames],
        fric_band=np.repeat(np.stack([r[5] for r in rows]), lens, axis=0)[:n_frames],
    )
    # Coarticulation: formants glide (≈ 40 ms), amplitudes ramp (≈ 16 ms).
    track.formants = smooth(track.formants, 5)
    track.voiced, track.aspirate, track.fric = (
        smooth(a, 2) for a in (track.voiced, track.aspirate, track.fric)
    )
    return track


def vowel(voice: Voice, rng: np.random.Generator) -> np.ndarray:
    """F1–F3 of one vowel token: 30 % one of the inventory's vowels, 70 % a point anywhere in the
    vowel space (a log-domain mix of them), with the speaker's own offsets and a token wobble."""
    if rng.random() < 0.3:
        weights = np.eye(len(VOWELS))[rng.integers(len(VOWELS))]
    else:
        weights = rng.dirichlet(np.full(len(VOWELS), 0.3))
    log_f = weights @ (np.log(VOWELS) + np.asarray(voice.vowel_offsets))
    return np.exp(log_f + rng.normal(0.0, 0.04, 3))


def smooth(a: np.ndarray, width: int) -> np.ndarray:
    """Moving average along the first axis, same length (edges repeat)."""
    kernel = np.ones(width) / width
    pad = [(width // 2, width - 1 - width // 2)] + [(0, 0)] * (a.ndim - 1)
    padded = np.pad(a, pad, mode="edge")
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, padded)


# ---------------------------------------------------------------------------------------------
# Spectral envelopes and synthesis.
def resonance(freqs: np.ndarray, centre: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
    """|H(f)| of a second-order resonance, 1 at DC: F² / sqrt((F² − f²)² + (B f)²)."""
    f2 = centre**2
    return f2 / np.sqrt((f2 - freqs**2) ** 2 + (bandwidth * freqs) ** 2)


def vocal_tract(voice: Voice, formants: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """[F, bins] magnitude of the vocal tract (F1–F5 cascade) for per-frame F1–F3 targets."""
    k = voice.formant_scale
    n = formants.shape[0]
    centres = np.concatenate(
        [formants * k, np.full((n, 1), voice.f4 * k), np.full((n, 1), voice.f5 * k)], axis=1
    )
    centres = centres.astype(freqs.dtype)
    bws = (50.0 + 0.06 * centres) * np.float32(voice.bandwidth)
    mag = np.ones((n, freqs.size), dtype=freqs.dtype)
    for i in range(centres.shape[1]):
        mag *= resonance(freqs[None, :], centres[:, i : i + 1], bws[:, i : i + 1])
    return mag


def spectral_colour(colour: tuple[float, ...], freqs: np.ndarray) -> np.ndarray:
    """[bins] gain of a speaker's spectral colour: Σ_k c_k·cos(πk·mel(f)/mel(f_max)) dB."""
    if not colour:
        return np.ones_like(freqs)
    mel = 2595.0 * np.log10(1.0 + freqs / 700.0)
    k = np.arange(1, len(colour) + 1)
    db = np.cos(np.pi * np.outer(mel / mel[-1], k)) @ np.asarray(colour)
    return (10.0 ** (db / 20.0)).astype(freqs.dtype)


def frames_of(x: np.ndarray) -> np.ndarray:
    """[F, WIN] hann-windowed frames with hop HOP (x already padded)."""
    view = np.lib.stride_tricks.sliding_window_view(x.astype(np.float32), WIN)[::HOP]
    return view * np.hanning(WIN + 1)[:-1].astype(np.float32)


def overlap_add(frames: np.ndarray, n: int) -> np.ndarray:
    """Inverse of frames_of for hann windows at 75 % overlap (window² sums to 1.5)."""
    frames = frames * np.hanning(WIN + 1)[:-1]
    n_frames = frames.shape[0]
    out = np.zeros((n_frames + WIN // HOP) * HOP)
    step = WIN // HOP
    for k in range(step):
        block = frames[k::step].reshape(-1)
        out[k * HOP : k * HOP + block.size] += block
    return out[:n] / 1.5


def fast_length(n: int) -> int:
    """The smallest 2^a·3^b·5^c ≥ n."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def pulse_train(f0: np.ndarray, sr: int) -> np.ndarray:
    """Glottal impulses at the instantaneous pitch f0 [samples]; power independent of f0."""
    phase = np.cumsum(f0 / sr)
    pulses = np.zeros_like(f0)
    pulses[1:] = np.diff(np.floor(phase))
    return pulses * np.sqrt(sr / f0)


def utterance(voice: Voice, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One utterance of `n` samples at rate `sr`: speech in coloured noise at a random gain."""
    voice = drift(voice, rng)
    pad = WIN // 2
    n_frames = (n + 2 * pad - WIN) // HOP + 1
    track = phone_timeline(voice, n_frames, sr, rng)
    freqs = np.fft.rfftfreq(WIN, 1.0 / sr).astype(np.float32)  # the STFT part runs in float32

    # Pitch: speaker median, utterance shift, phrase declination and a slow random wander.
    t = np.arange(n_frames)
    shift = rng.normal(0.0, 0.7)
    wander = smooth(rng.normal(0.0, 1.0, n_frames), 25) * 5.0
    semitones = shift + voice.f0_range * np.clip(wander, -2, 2) - 0.8 * (t / n_frames)
    f0 = voice.f0 * 2.0 ** (semitones / 12.0)
    f0 = f0 * np.exp(rng.normal(0.0, voice.jitter, n_frames))
    f0_samples = np.interp(np.arange(n + 2 * pad), (t * HOP + pad), f0)
    pulses = pulse_train(f0_samples, sr)
    pulses *= np.exp(rng.normal(0.0, voice.shimmer, pulses.size))  # only the pulses are nonzero
    source = frames_of(pulses)
    noise = frames_of(rng.standard_normal(n + 2 * pad))

    tract = vocal_tract(voice, track.formants, freqs)
    tilt = np.maximum(freqs, 100.0) / 100.0
    glottal = tilt ** np.float32(voice.tilt / 6.02)
    aspiration = tilt ** np.float32((voice.tilt + 6.0) / 6.02)
    band = track.fric_band.astype(np.float32)
    fric = resonance(freqs[None, :], np.maximum(band[:, :1], 1.0), np.maximum(band[:, 1:2], 1.0))
    fric = fric * band[:, 2:3] * 0.05
    voiced, aspirate, frication = (
        a.astype(np.float32)[:, None] for a in (track.voiced, track.aspirate, track.fric)
    )
    tract = tract * spectral_colour(voice.colour, freqs)
    env_voiced = voiced * tract * glottal
    env_noise = aspirate * tract * aspiration * np.float32(0.3) + frication * fric
    spec = np.fft.rfft(source, axis=1) * env_voiced + np.fft.rfft(noise, axis=1) * env_noise
    speech = overlap_add(np.fft.irfft(spec, n=WIN, axis=1), n + 2 * pad)[pad : pad + n]

    # Background noise: coloured (0 to −6 dB/octave), at a random SNR.
    m = fast_length(n)  # FFT-friendly length (a prime n would make the FFTs slow)
    full = np.fft.rfftfreq(m, 1.0 / sr)
    octaves = np.log2(np.maximum(full, 50.0) / 1000.0)
    colour = 10.0 ** (rng.uniform(-6.0, 0.0) * octaves / 20.0)
    s = np.fft.rfft(speech, n=m)
    b = np.fft.rfft(rng.standard_normal(m)) * colour
    snr_db = rng.uniform(30.0, 60.0)
    b *= np.sqrt(np.sum(np.abs(s) ** 2) / max(np.sum(np.abs(b) ** 2), 1e-20) / 10 ** (snr_db / 10))
    y = np.fft.irfft(s + b, n=m)[:n]
    peak = float(np.max(np.abs(y))) or 1.0
    return (y * (10.0 ** (rng.uniform(-18.0, -1.0) / 20.0) / peak)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """What a generated folder holds (its manifest): regenerating with equal Spec is a no-op."""

    speakers: int
    utterances_per_speaker: int
    seconds: tuple[float, float]
    sample_rate: int
    seed: int
    version: int = VERSION


def generate_voices(
    out: Path,
    speakers: int = 200,
    utterances_per_speaker: int = 8,
    seconds: float | tuple[float, float] = (2.0, 4.0),
    sample_rate: int = 16000,
    seed: int = 0,
) -> Path:
    """Write `<out>/<speaker>/<utt>.wav` (16-bit mono) for a deterministic set of synthetic voices.

    `seconds` is one duration or a (min, max) range drawn per utterance. Generation happens in a
    temporary sibling folder renamed into place, so `out` is either absent or complete; calling
    again with the same arguments returns at once.
    """
    import soundfile as sf

    out = Path(out)
    lo, hi = (seconds, seconds) if isinstance(seconds, int | float) else tuple(seconds)
    spec = Spec(
        int(speakers),
        int(utterances_per_speaker),
        (float(lo), float(hi)),
        int(sample_rate),
        int(seed),
    )
    if spec.speakers < 2 or spec.utterances_per_speaker < 1:
        raise ConfigError(
            f"demo data 'speaker': need speakers ≥ 2 and utterances_per_speaker ≥ 1, got "
            f"{speakers} and {utterances_per_speaker}."
        )
    if not 0.2 <= spec.seconds[0] <= spec.seconds[1] <= 600:
        raise ConfigError(
            f"demo data 'speaker': seconds must be from 0.2 to 600 (min ≤ max; a recording's "
            f"length in seconds, not milliseconds), got {seconds}."
        )
    if spec.sample_rate < 8000:
        raise ConfigError(f"demo data 'speaker': sample_rate must be ≥ 8000, got {sample_rate}.")
    if existing_matches(out, spec):
        return out

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        width = len(str(spec.speakers - 1))
        for i in range(spec.speakers):
            voice = draw_voice(np.random.default_rng([spec.seed, i]))
            folder = tmp / f"spk{i:0{max(3, width)}d}"
            folder.mkdir()
            for j in range(spec.utterances_per_speaker):
                rng = np.random.default_rng([spec.seed, i, j + 1])
                n = round(rng.uniform(*spec.seconds) * spec.sample_rate)
                wave = utterance(voice, n, spec.sample_rate, rng)
                sf.write(folder / f"utt{j:03d}.wav", wave, spec.sample_rate, subtype="PCM_16")
        (tmp / MANIFEST).write_text(json.dumps(asdict(spec), indent=2) + "\n")
        try:
            os.replace(tmp, out)
        except OSError:
            if not existing_matches(out, spec):  # another process won the race: fine if equal
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


generate_voices.version = VERSION  # type: ignore[attr-defined]  # part of the demo cache key


def existing_matches(out: Path, spec: Spec) -> bool:
    """True when `out` already holds this exact dataset; an error when it holds something else."""
    if not out.exists():
        return False
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
        return False
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise DataError(
            f"'{out}' exists and is not a synthetic voice folder (no {MANIFEST}); choose another "
            f"output folder or remove it."
        )
    try:
        found = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        raise DataError(
            f"'{manifest}' is unreadable ({err}); remove '{out}' to regenerate."
        ) from None
    wanted = json.loads(json.dumps(asdict(spec)))
    if found != wanted:
        raise DataError(
            f"'{out}' holds a different synthetic voice set ({found}); wanted {wanted}. "
            f"Remove it or choose another output folder."
        )
    return True
