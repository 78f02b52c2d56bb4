"""Audio reading: resampling, the rate policy, stereo mixdown, and bad files named in errors."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from metaemb.core.errors import ConfigError, DataError
from metaemb.plugins.audio import io
from metaemb.plugins.audio.folder import AudioFolder


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(wave: torch.Tensor, rate: int) -> float:
    spec = torch.fft.rfft(wave.double() * torch.hann_window(wave.numel(), dtype=torch.float64))
    return float(spec.abs().argmax()) * rate / wave.numel()


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_reads_formats_as_float32_mono(tmp_path, fmt):
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, tone(440, 0.5, 16000), 16000, format=fmt)
    wave = io.read_audio(path, 16000)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert wave.numel() == 8000
    assert abs(peak_frequency(wave, 16000) - 440) <= 2


def test_resample_441k_gives_right_length_and_frequency(tmp_path):
    path = tmp_path / "cd.wav"
    sf.write(path, tone(1000, 1.0, 44100), 44100)
    io._warned_rates.clear()
    with pytest.warns(UserWarning, match=r"44100 Hz.*16000 Hz.*windowed-sinc"):
        wave = io.read_audio(path, 16000)
    assert wave.numel() == 16000
    assert abs(peak_frequency(wave, 16000) - 1000) <= 1
    # Amplitude is preserved (a band-limited resampler leaves an in-band tone alone).
    assert abs(float(wave[1000:-1000].abs().max()) - 0.5) < 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the resampling warning is given once per rate pair
        io.read_audio(path, 16000)


def test_upsampled_telephone_audio_has_no_images_above_its_band(tmp_path):
    """8 kHz audio read at 16 kHz: the short Hann resampler left images of the 3–4 kHz band at
    about −27 dB above 4 kHz, several nats in the upper mel bands
    (S5 F4). The resampler is torchaudio's 'kaiser_best'."""
    g = np.random.default_rng(0)
    band = np.fft.irfft(np.fft.rfft(g.standard_normal(8000)) * (np.arange(4001) < 3600))
    path = tmp_path / "tel.wav"
    sf.write(path, (0.3 * band / np.abs(band).max()).astype(np.float32), 8000)
    io._warned_rates.clear()
    with pytest.warns(UserWarning, match="kaiser_best"):
        wave = io.read_audio(path, 16000).double().numpy()
    middle = wave[1000:-1000]
    power = np.abs(np.fft.rfft(middle * np.hanning(len(middle)))) ** 2
    freqs = np.fft.rfftfreq(len(middle), 1 / 16000)
    inside = power[(freqs > 500) & (freqs < 3500)].mean()
    images = power[(freqs > 4400) & (freqs < 7500)].mean()
    assert 10 * np.log10(images / inside) < -70  # the Hann resampler: −27 dB
    # full-band 8 kHz content (white noise) is imaged more: −52…−61 dB, said so in the docs
    noise = g.standard_normal(8000).astype(np.float32) * 0.1
    up = io.resample(torch.from_numpy(noise).double(), 8000, 16000).numpy()[1000:-1000]
    power = np.abs(np.fft.rfft(up * np.hanning(len(up)))) ** 2
    freqs = np.fft.rfftfreq(len(up), 1 / 16000)
    full = (
        power[(freqs > 4400) & (freqs < 7500)].mean() / power[(freqs > 500) & (freqs < 3500)].mean()
    )
    assert 10 * np.log10(full) < -50


def test_nist_sphere_is_read_and_shorten_compression_is_named(tmp_path):
    """SRE and Switchboard ship .sph: read through a Kaldi wav.scp but left out of plain
    folders (S5 F8); shorten-compressed SPHERE, which libsndfile cannot decode, is named."""
    from metaemb.plugins.audio.folder import AudioFolder

    wave = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    (tmp_path / "spk" / "s1").mkdir(parents=True)
    sf.write(tmp_path / "spk" / "s1" / "a.sph", wave, 16000, format="NIST", subtype="PCM_16")
    np.testing.assert_allclose(io.read_audio(tmp_path / "spk" / "s1" / "a.sph").numpy(), wave,
                               atol=2**-15)  # fmt: skip
    assert ".sph" in AudioFolder.extensions
    packed = tmp_path / "b.sph"
    packed.write_bytes(b"NIST_1A\n   1024\nsample_coding -s26 pcm,embedded-shorten-v2.00\n"
                       + b" " * 980 + bytes(64))  # fmt: skip
    with pytest.raises(DataError, match=r"shorten-compressed NIST SPHERE.*sph2pipe"):
        io.read_audio(packed)


def test_rate_error_policy_names_file_and_rates(tmp_path):
    path = tmp_path / "cd.wav"
    sf.write(path, tone(1000, 0.2, 44100), 44100)
    with pytest.raises(DataError, match=r"cd\.wav.*44100 Hz.*16000 Hz"):
        io.read_audio(path, 16000, on_rate_mismatch="error")
    with pytest.raises(ConfigError, match="on_rate_mismatch"):
        io.read_audio(path, 16000, on_rate_mismatch="ignore")


def test_stereo_is_mixed_down_with_warning(tmp_path):
    path = tmp_path / "stereo.wav"
    left, right = tone(300, 0.25, 16000, 0.4), tone(300, 0.25, 16000, 0.2)
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    io._warned_channels.clear()
    with pytest.warns(UserWarning, match=r"stereo\.wav.*2 channels"):
        wave = io.read_audio(path, 16000)
    np.testing.assert_allclose(wave.numpy(), (left + right) / 2, atol=1e-6)
    with warnings.catch_warnings():  # once per channel count: a stereo corpus is not a flood
        warnings.simplefilter("error")
        io.read_audio(path, 16000)


def test_empty_silent_and_corrupt_files_are_named(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(1600, dtype=np.float32), 16000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00not really a wave file")
    with pytest.raises(DataError, match=r"empty\.wav.*empty"):
        io.read_audio(empty)
    with pytest.raises(DataError, match=r"silent\.wav.*silent"):
        io.read_audio(silent)
    with pytest.raises(DataError, match=r"cannot read audio file .*corrupt\.wav"):
        io.read_audio(corrupt)
    with pytest.raises(DataError, match=r"missing\.wav"):
        io.read_audio(tmp_path / "missing.wav")
    zero = tmp_path / "zero.wav"  # a failed copy: 0 bytes, not "format not recognised"
    zero.write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.wav' is empty \(0 bytes\)\.$"):
        io.read_audio(zero)


def test_segment_read(tmp_path):
    path = tmp_path / "ramp.wav"
    data = (np.arange(16000, dtype=np.float32) / 16000) - 0.5
    sf.write(path, data, 16000, subtype="FLOAT")
    wave = io.read_audio(path, 16000, start=0.25, end=0.5)
    np.testing.assert_array_equal(wave.numpy(), data[4000:8000])
    np.testing.assert_array_equal(io.read_audio(path, start=0.75, end=-1).numpy(), data[12000:])


def test_audio_folder_voxceleb_layout(tmp_path):
    for spk, sess, utt in [("id1", "s1", "00001"), ("id1", "s2", "00002"), ("id2", "s1", "00001")]:
        (tmp_path / spk / sess).mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / spk / sess / f"{utt}.wav", tone(200, 0.1, 16000), 16000)
    (tmp_path / "id2" / "notes.txt").write_text("ignored")
    folder = AudioFolder(root=tmp_path)
    assert [s.path for s in folder.samples] == [
        "id1/s1/00001.wav",
        "id1/s2/00002.wav",
        "id2/s1/00001.wav",
    ]
    assert folder.identities == ["id1", "id2"] and folder.labels == [0, 0, 1]
    wave, label = folder[2]
    assert wave.shape == (1600,) and label == 1
    with pytest.raises(ConfigError):
        AudioFolder(root=tmp_path, on_rate_mismatch="nope")


def test_missing_file_and_folder_are_named_as_such(tmp_path):
    with pytest.raises(DataError, match=r"audio file '.*nothere\.wav' does not exist\.$"):
        io.read_audio(tmp_path / "nothere.wav")
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(DataError, match=r"'.*dir\.wav' is a folder"):
        io.read_audio(tmp_path / "dir.wav")


def test_header_rate_below_1000_hz_is_refused_as_damaged(tmp_path):
    sf.write(tmp_path / "rate1.wav", tone(0.1, 100, 1), 1)  # 100 samples "at 1 Hz"
    with pytest.raises(DataError, match=r"'.*rate1\.wav' claims a sample rate of 1 Hz.*damaged"):
        io.read_audio(tmp_path / "rate1.wav")
    sf.write(tmp_path / "rate8k.wav", tone(440, 0.1, 8000), 8000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert io.read_audio(tmp_path / "rate8k.wav").numel() == 1600  # a real rate: resampled


ADTS = bytes([0xFF, 0xF1, 0x50, 0x80, 0x02, 0x1F, 0xFC]) + b"\x21\x10" * 40


def test_compressed_audio_named_wav_says_what_it_holds(tmp_path, monkeypatch):
    path = tmp_path / "x.wav"
    path.write_bytes(ADTS)
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV absent: say which extra decodes it
    with pytest.raises(DataError) as err:
        io.read_audio(path)
    msg = str(err.value)
    assert "x.wav" in msg and "not WAV but AAC (ADTS)" in msg and "'.aac'" in msg
    assert "metaemb[audio-formats]" in msg and "\n" not in msg
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + b"\0" * 64)
    with pytest.raises(DataError, match=r"not WAV but MP4/M4A \(AAC\): give it the suffix '\.m4a'"):
        io.read_audio(path)
    path.write_bytes(b"garbage!" * 8)
    with pytest.raises(DataError, match=r"The content is not WAV \(its first bytes are"):
        io.read_audio(path)


def test_empty_identity_folder_message_reads_well(tmp_path):
    (tmp_path / "spk1").mkdir()
    sf.write(tmp_path / "spk1" / "u.wav", tone(440, 0.1, 16000), 16000)
    (tmp_path / "spk2").mkdir()
    with pytest.raises(DataError) as err:
        AudioFolder(tmp_path)
    msg = str(err.value)
    assert "contain no recording files (.aac," in msg and "file files" not in msg


@pytest.mark.parametrize("rate", [0, -16000, 100, 10**6])
def test_a_folder_sample_rate_out_of_range_is_refused_before_reading(tmp_path, rate):
    """sample_rate=-16000 was accepted and failed on the first file, blaming it (H17 F14)."""
    from metaemb.core.errors import ConfigError
    from metaemb.plugins.audio.folder import AudioFolder

    with pytest.raises(ConfigError, match=rf"folder.sample_rate must be a rate .* got {rate}"):
        AudioFolder(tmp_path, sample_rate=rate)


def test_a_recording_too_long_for_memory_is_named(tmp_path, monkeypatch):
    """A valid 18-hour WAV ran out of memory with a numpy traceback naming no file (H19 F7): the
    file and its length are named, as a DataError that --on-bad-sample skip can skip."""
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(32000, np.float32), 16000)

    def no_memory(f, frames):
        raise MemoryError

    monkeypatch.setattr(io, "read_float32", no_memory)
    with pytest.raises(DataError, match=r"audio file '.*long.wav' \(0.0 h at 16000 Hz\) is too "
                       r"long to decode .*--on-bad-sample skip"):  # fmt: skip
        io.read_audio(path)
