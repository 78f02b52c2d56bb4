"""Synthetic voices: deterministic, VoxCeleb-like layout, 16 kHz mono, pauses, and a real task
(the no-learning mean-filterbank baseline is weak)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from metaemb.core.errors import ConfigError, DataError
from metaemb.plugins.audio.synthetic import MANIFEST, fast_length, generate_voices


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    out = tmp_path_factory.mktemp("voices") / "set"
    return generate_voices(out, speakers=12, utterances_per_speaker=4, seconds=(1.5, 2.5), seed=3)


def wavs(root):
    return sorted(root.glob("*/*.wav"))


def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Brute force: the threshold where miss and false-alarm rates cross."""
    best = 1.0
    for thr in np.unique(scores):
        miss = np.mean(scores[labels == 1] < thr)
        fa = np.mean(scores[labels == 0] >= thr)
        best = min(best, max(miss, fa))
    return float(best)


def test_layout_format_and_manifest(voices):
    files = wavs(voices)
    assert len(files) == 12 * 4
    assert sorted({f.parent.name for f in files}) == [f"spk{i:03d}" for i in range(12)]
    assert [f.name for f in files[:4]] == [f"utt{j:03d}.wav" for j in range(4)]
    for f in files:
        info = sf.info(f)
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        assert 1.5 <= info.duration <= 2.5 + 1e-3
    manifest = json.loads((voices / MANIFEST).read_text())
    assert manifest["speakers"] == 12 and manifest["seed"] == 3
    assert not list(voices.parent.glob(".set.tmp-*"))  # temporary folder renamed away


def test_same_seed_same_samples_other_seed_differs(voices, tmp_path):
    again = generate_voices(
        tmp_path / "again", speakers=2, utterances_per_speaker=2, seconds=(1.5, 2.5), seed=3
    )
    for f in wavs(again):  # speakers are drawn independently: a subset matches the full set
        a, _ = sf.read(f, dtype="int16")
        b, _ = sf.read(voices / f.relative_to(again), dtype="int16")
        assert np.array_equal(a, b)
    other = generate_voices(tmp_path / "other", speakers=2, utterances_per_speaker=1, seed=4)
    a, _ = sf.read(wavs(other)[0], dtype="int16")
    b, _ = sf.read(wavs(again)[0], dtype="int16")
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_idempotent_and_refuses_other_content(voices, tmp_path):
    before = {f: f.stat().st_mtime_ns for f in wavs(voices)}
    generate_voices(voices, speakers=12, utterances_per_speaker=4, seconds=(1.5, 2.5), seed=3)
    assert {f: f.stat().st_mtime_ns for f in wavs(voices)} == before
    with pytest.raises(DataError, match="different synthetic voice set"):
        generate_voices(voices, speakers=13, utterances_per_speaker=4, seconds=(1.5, 2.5), seed=3)
    foreign = tmp_path / "mine"
    (foreign / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="not a synthetic voice folder"):
        generate_voices(foreign, speakers=2, utterances_per_speaker=1)
    with pytest.raises(ConfigError, match="speakers"):
        generate_voices(tmp_path / "bad", speakers=1)
    with pytest.raises(ConfigError, match="seconds"):
        generate_voices(tmp_path / "bad", seconds=(3.0, 2.0))


def test_utterances_have_pauses_and_vary_in_level(voices):
    """Speech alternates with low-energy stretches (≥ 100 ms, ≥ 10 dB below the loud frames)."""
    with_pause = 0
    peaks = []
    for f in wavs(voices):
        x, _ = sf.read(f, dtype="float32")
        frames = torch.from_numpy(x).unfold(0, 400, 160)
        db = 10 * torch.log10(frames.pow(2).mean(1) + 1e-12)
        quiet = (db < torch.quantile(db, 0.95) - 10).int().tolist()
        run = best = 0
        for q in quiet:
            run = run + 1 if q else 0
            best = max(best, run)
        with_pause += best >= 10
        peaks.append(float(np.abs(x).max()))
    assert with_pause >= 0.8 * len(wavs(voices))
    assert max(peaks) / min(peaks) > 2.0  # random gain per utterance


def median_pitch(x: np.ndarray, sr: int = 16000) -> float:
    """Median f0 of the loudest 40 ms frames by autocorrelation (a channel-independent cue)."""
    frames = np.lib.stride_tricks.sliding_window_view(x, 640)[::160]
    energy = (frames**2).sum(1)
    frames = frames[energy >= np.quantile(energy, 0.7)]
    frames = frames - frames.mean(1, keepdims=True)
    acf = np.fft.irfft(np.abs(np.fft.rfft(frames, 2048, axis=1)) ** 2, axis=1)
    lo, hi = sr // 400, sr // 70
    lag = lo + np.argmax(acf[:, lo:hi], axis=1)
    return float(np.median(sr / lag))


def test_mean_fbank_baseline_is_weak_but_speakers_are_distinct(voices):
    """Cosine of mean Kaldi fbank vectors (the no-learning baseline) must give EER ≥ 20 % (the
    gain, the phones and what all voices share dominate the raw average), while a cue they cannot
    hide (each utterance's median pitch) separates the speakers."""
    means, pitch, speakers = [], [], []
    for f in wavs(voices):
        x, _ = sf.read(f, dtype="float32")
        fb = torchaudio.compliance.kaldi.fbank(
            torch.from_numpy(x)[None] * 32768, num_mel_bins=80, dither=0.0, energy_floor=0.0
        )
        means.append(fb.mean(0))
        pitch.append(np.log(median_pitch(x)))
        speakers.append(f.parent.name)
    same = np.array(speakers)[:, None] == np.array(speakers)[None, :]
    upper = np.triu_indices(len(speakers), 1)
    labels = same[upper].astype(int)

    def cosine_eer(vectors):
        e = torch.nn.functional.normalize(torch.stack(vectors), dim=1)
        return eer((e @ e.T).numpy()[upper], labels)

    baseline = cosine_eer(means)
    centred = cosine_eer([m - torch.stack(means).mean(0) for m in means])
    p = np.array(pitch)
    pitch_eer = eer(-np.abs(p[:, None] - p[None, :])[upper], labels)
    print(f"EER: mean fbank {baseline:.3f} (mean-subtracted {centred:.3f}), pitch {pitch_eer:.3f}")
    assert baseline >= 0.20 and centred >= 0.20
    assert pitch_eer <= 0.35


def test_fast_length():
    for n in (1, 7, 97, 1009, 48001):
        m = fast_length(n)
        assert m >= n and m < 2 * n
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        assert k == 1


def test_vowel_tokens_fill_the_vowel_space_and_voices_drift_a_little():
    """Vowels are drawn across the whole F1–F2 space (not only 9 fixed targets, which a network
    learns as a fingerprint) and stay inside it; a voice on another day moves only slightly."""
    from metaemb.plugins.audio.synthetic import VOWELS, draw_voice, drift, vowel

    rng = np.random.default_rng(0)
    voice = draw_voice(rng)
    tokens = np.array([vowel(voice, rng) for _ in range(3000)])
    lo, hi = VOWELS.min(0), VOWELS.max(0)
    assert np.all(tokens > lo * 0.75) and np.all(tokens < hi * 1.35)
    f1, f2 = tokens[:, 0], tokens[:, 1]
    assert np.ptp(f1) > 0.8 * (hi[0] - lo[0]) and np.ptp(f2) > 0.8 * (hi[1] - lo[1])
    # Most tokens are away from every inventory vowel (> 8 % off in F1 or F2).
    nearest = np.abs(np.log(tokens[:, None, :2] / VOWELS[None, :, :2])).max(2).min(1)
    assert 0.4 < np.mean(nearest > 0.08) < 0.95
    days = [drift(voice, rng) for _ in range(200)]
    scales = np.array([d.formant_scale / voice.formant_scale for d in days])
    assert 0.005 < np.std(np.log(scales)) < 0.03 and days[0].f0 == voice.f0


def test_a_new_generator_version_gets_its_own_demo_folder(tmp_path, monkeypatch):
    """Upgrading metaemb with a changed generator must regenerate the demo voices in a new
    cache folder, not find the old folder and refuse it as 'a different synthetic voice set'."""
    from metaemb.core.config import resolve
    from metaemb.core.data import pipeline
    from metaemb.plugins.audio import synthetic

    cfg = resolve("speaker", sets=[f"data.cache_dir={tmp_path}"])
    built = []

    def build(kind, name, opts, out):  # a generator that writes a folder (checked) instantly
        built.append(out)
        (out / "id0").mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(pipeline, "build", build)
    now = pipeline.data_root(cfg)
    monkeypatch.setattr(synthetic.generate_voices, "version", synthetic.VERSION + 1)
    later = pipeline.data_root(cfg)
    assert (
        built == [now, later] and now != later and now.parent == later.parent == tmp_path / "demo"
    )


def test_each_voice_has_its_own_spectral_colour_which_drifts_a_little():
    """The personal spectral colour spreads ±4 dB over voices and frequencies (real voices'
    long-term spectra differ this way; it is the cue that transfers to recorded speech), and a
    recording on another day moves it by about a quarter."""
    from metaemb.plugins.audio.synthetic import COLOUR_DB, draw_voice, drift, spectral_colour

    freqs = np.fft.rfftfreq(512, 1 / 16000).astype(np.float32)
    rng = np.random.default_rng(1)
    voices = [draw_voice(rng) for _ in range(200)]
    db = np.array([20 * np.log10(spectral_colour(v.colour, freqs)) for v in voices])
    assert abs(np.std(db) - COLOUR_DB) < 0.4
    assert np.mean(np.abs(np.diff(db, axis=1))) < 0.1 * COLOUR_DB  # smooth over frequency
    days = [drift(voices[0], rng) for _ in range(200)]
    moved = np.array([20 * np.log10(spectral_colour(d.colour, freqs)) for d in days]) - db[0]
    assert 0.15 * COLOUR_DB < np.std(moved) < 0.35 * COLOUR_DB


def test_demo_voices_longer_than_ten_minutes_are_refused(tmp_path):
    """seconds=[1e9, 1e9] (milliseconds typed for seconds) grew memory until killed (H17 F13)."""
    with pytest.raises(ConfigError, match=r"seconds must be from 0.2 to 600 .* got"):
        generate_voices(tmp_path / "long", speakers=2, utterances_per_speaker=1,
                        seconds=(1e9, 1e9))  # fmt: skip
    assert not (tmp_path / "long").exists()
