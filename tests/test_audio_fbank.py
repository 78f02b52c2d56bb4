"""Batched fbank parity with torchaudio's Kaldi fbank, and the AudioFeatures pipeline around it."""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from metaemb.core.errors import ConfigError, DataError
from metaemb.plugins.audio.fbank import KaldiFbank
from metaemb.plugins.audio.features import AudioFeatures


def utterances(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate([16000, 8123, 400, 559, 23456]):
        t = torch.arange(n) / 16000
        tone = 0.3 * torch.sin(2 * math.pi * (150 + 170 * i) * t) * (1 + torch.sin(7 * t))
        out.append((tone + 0.02 * torch.randn(n, generator=g)).float())
    out.append((0.5 * torch.randn(12000, generator=g)).clamp(-1, 1))  # white noise
    # Low-level noise (a few int16 steps), then digital silence: the epsilon floor of the log.
    quiet = torch.cat([3 / 32768 * torch.randn(3000, generator=g), torch.zeros(3000)])
    out.append(quiet)
    return out


def pad(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([w.numel() for w in waves])
    x = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        x[i, : w.numel()] = w
    return x, lengths


@pytest.mark.parametrize("window", ["povey", "hamming"])
def test_batched_parity_with_torchaudio(window):
    waves = utterances()
    x, lengths = pad(waves)
    feats, flen = KaldiFbank(window=window, cmn=False)(x, lengths)
    assert feats.shape == (len(waves), 80, int(flen.max()))
    worst = 0.0
    for i, w in enumerate(waves):
        ref = kaldi.fbank(w[None] * 32768, num_mel_bins=80, window_type=window, dither=0.0)
        assert int(flen[i]) == ref.shape[0]
        worst = max(worst, float((feats[i, :, : flen[i]].T - ref).abs().max()))
        assert feats[i, :, flen[i] :].abs().max() == 0 if flen[i] < feats.shape[-1] else True
    assert worst <= 1e-3
    # The digitally silent tail of the last utterance sits exactly on the log(float eps) floor.
    floor = math.log(torch.finfo(torch.float32).eps)
    last = feats[-1, :, flen[-1] - 5 : flen[-1]]
    assert torch.allclose(last, torch.full_like(last, floor))


def test_cmn_uses_valid_frames_only_and_short_inputs():
    waves = utterances()
    x, lengths = pad(waves)
    fb = KaldiFbank()
    feats, flen = fb(x, lengths)
    for i, w in enumerate(waves):
        ref = kaldi.fbank(w[None] * 32768, num_mel_bins=80, dither=0.0, subtract_mean=True)
        assert float((feats[i, :, : flen[i]].T - ref).abs().max()) <= 1e-3
    # Shorter than one window: no frames, not an error.
    empty, n = fb(torch.zeros(2, 399), torch.tensor([399, 10]))
    assert empty.shape == (2, 80, 0) and n.tolist() == [0, 0]
    assert fb(torch.zeros(1, 1000), torch.tensor([399]))[1].tolist() == [0]


def test_level_normalisation_removes_gain_and_keeps_spectral_shape():
    waves = utterances()[:-1]  # not the digital silence: the log's epsilon floor is not a gain
    x, lengths = pad(waves)
    raw, flen = KaldiFbank(cmn=False)(x, lengths)
    level, _ = KaldiFbank(cmn="level")(x, lengths)
    louder, _ = KaldiFbank(cmn="level")(x * 4.0, lengths)
    torch.testing.assert_close(louder, level, atol=2e-3, rtol=0)  # gain (+12 dB) removed
    for i in range(len(waves)):
        r, lv = raw[i, :, : flen[i]], level[i, :, : flen[i]]
        torch.testing.assert_close(lv, r - r.mean(), atol=1e-4, rtol=0)  # one scalar per utterance
        band_means = lv.mean(1)
        assert float(band_means.std()) > 0.5  # the long-term spectral shape is still there
        assert abs(float(band_means.mean())) < 1e-4
        assert float(level[i, :, flen[i] :].abs().sum()) == 0.0  # padding frames stay zero
    assert KaldiFbank(cmn=True).cmn == "mean" and KaldiFbank(cmn=False).cmn == "none"
    with pytest.raises(ConfigError, match="cmn"):
        KaldiFbank(cmn="variance")


def test_autocast_does_not_lower_precision():
    x, lengths = pad(utterances()[:3])
    fb = KaldiFbank()
    ref, _ = fb(x, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = fb(x, lengths)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="exceed"):
        fb(x, lengths + 1)


def test_int16_scaling_is_explicit():
    w = utterances()[0][None]
    a, _ = KaldiFbank(cmn=False)(w)
    b, _ = KaldiFbank(cmn=False, int16_scale=False)(w * 32768)
    torch.testing.assert_close(a, b)
    # Float-scale input without the ×32768 differs by 2·ln(32768) in every (non-floored) bin.
    c, _ = KaldiFbank(cmn=False, int16_scale=False)(w)
    assert abs(float((a - c).median()) - 2 * math.log(32768)) < 1e-3


def test_dither_only_in_training_mode():
    w = utterances()[0][None]
    fb = KaldiFbank(dither=1.0)
    fb.eval()
    torch.testing.assert_close(fb(w)[0], KaldiFbank()(w)[0])
    fb.train()
    assert not torch.equal(fb(w)[0], fb(w)[0])
    with pytest.raises(ConfigError, match="window"):
        KaldiFbank(window="kaiser")


def test_features_training_crops_tile_short_utterances():
    feats = AudioFeatures(crop_seconds=0.5)
    torch.manual_seed(0)
    short = torch.arange(3000, dtype=torch.float32)
    crop = feats.prepare(short, train=True)
    assert crop.numel() == 8000
    # A crop of the tiled waveform: consecutive samples follow the repetition.
    assert torch.equal(crop, torch.cat([short] * 4)[int(crop[0]) : int(crop[0]) + 8000])
    long = torch.arange(40000, dtype=torch.float32)
    starts = {int(feats.prepare(long, train=True)[0]) for _ in range(20)}
    assert len(starts) > 1 and all(0 <= s <= 32000 for s in starts)


def test_features_eval_full_capped_and_min_length():
    feats = AudioFeatures(max_eval_seconds=1.0, min_seconds=0.1)
    w = torch.arange(24000, dtype=torch.float32)
    assert torch.equal(feats.prepare(w[:10000], train=False), w[:10000])
    from metaemb.plugins.audio import features

    features._cropped_noted = False  # said once per process, and said (S5 F7)
    # ... of what the frontend keeps (speech after a VAD), not of the recording (H22 F8b)
    with pytest.warns(UserWarning, match=r"longer than features.max_eval_seconds = 1 s \(of what "
                      r"the frontend keeps.*middle 1 s \(the first met has 1.5 s\)"):  # fmt: skip
        capped = feats.prepare(w, train=False)
    assert torch.equal(capped, w[4000:20000])  # centre crop
    features._tiled_noted = False  # a short segment repeated is said too (S6 F4)
    with pytest.warns(UserWarning, match=r"shorter than features.min_seconds = 0.1 s .* repeated "
                      r"to 0.1 s \(the first met has 0.03 s\)"):  # fmt: skip
        tiny = feats.prepare(w[:500], train=False)
    assert tiny.numel() == 1600 and torch.equal(tiny[500:1000], w[:500])
    # the evaluation cap can change after training (--features-set), checked as at training
    feats.max_eval_seconds = 1.25
    assert feats.prepare(w, train=False).numel() == 20000
    with pytest.raises(ConfigError, match=r"features\.max_eval_seconds"):
        feats.max_eval_seconds = -1
    with pytest.raises(DataError):
        feats.prepare(torch.zeros(0), train=False)


def test_features_collate_forward_and_baseline():
    feats = AudioFeatures().eval()
    waves = [w for w in utterances() if w.numel() >= 8000]
    items = [feats.prepare(w, train=False) for w in waves]
    x, lengths = feats.collate(items)
    assert x.shape == (len(items), max(i.numel() for i in items))
    assert lengths.tolist() == [i.numel() for i in items]
    out, flen = feats(x, lengths)
    assert out.shape[1] == feats.out_channels == 80
    for i in range(len(items)):  # CMN: every valid utterance has zero mean per band
        assert out[i, :, : flen[i]].mean(-1).abs().max() < 1e-4
    base = feats.baseline_embedding(x, lengths)
    for i, w in enumerate(items):
        ref = kaldi.fbank(w[None] * 32768, num_mel_bins=80, dither=0.0).mean(0)
        assert float((base[i] - ref).abs().max()) < 1e-3
    spec = feats.input_spec()
    assert spec["n_mels"] == 80 and spec["sample_rate"] == 16000 and spec["window"] == "povey"


@pytest.mark.parametrize(
    ("options", "key", "reason"),
    [
        ({"crop_seconds": 1e9}, "features.crop_seconds", "Above 60 s"),
        ({"crop_seconds": 3000}, "features.crop_seconds", "in milliseconds by mistake"),
        ({"crop_seconds": 0.01}, "features.crop_seconds", "fewer than the 15 fbank frames"),
        ({"crop_seconds": math.nan}, "features.crop_seconds", "got nan"),
        ({"min_seconds": 1e9}, "features.min_seconds", "Above 60 s"),
        ({"max_eval_seconds": 0.001}, "features.max_eval_seconds", "15 fbank frames"),
        ({"max_eval_seconds": math.inf}, "features.max_eval_seconds", "got inf"),
    ],
)
def test_seconds_options_out_of_range_are_refused_by_key(options, key, reason):
    with pytest.raises(ConfigError) as err:
        AudioFeatures(**options)
    assert str(err.value).startswith(key) and reason in str(err.value)


def test_shortest_crop_gives_the_context_frames():
    feats = AudioFeatures(crop_seconds=0.165)  # 25 ms + 14 × 10 ms: the lower bound itself
    wave = feats.prepare(torch.randn(16000), train=True)
    assert int(feats.fbank.frame_lengths(torch.tensor([wave.numel()]))) == 15
    assert AudioFeatures(crop_seconds=60).crop_samples == 960000


@pytest.mark.parametrize("option", ["frame_length_ms", "frame_shift_ms"])
@pytest.mark.parametrize("value", [1e400, math.nan, 0, 25000])
def test_fbank_frame_ms_bounded(option, value):
    with pytest.raises(
        ConfigError, match=rf"features\.fbank\.{option} must be a number of milliseconds"
    ):
        KaldiFbank(**{option: value})
