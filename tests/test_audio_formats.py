"""Compressed audio through PyAV (the `audio-formats` extra): AAC in .m4a as VoxCeleb2 ships it,
decoded, mixed down and resampled exactly; a clear one-line error naming the extra without it."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from metaemb.core.errors import DataError
from metaemb.plugins.audio.folder import AudioFolder
from metaemb.plugins.audio.io import read_audio


def write_m4a(path: Path, wave: np.ndarray, rate: int) -> None:
    """Encode [channels, T] float audio as AAC in an MP4 container with PyAV itself."""
    av = pytest.importorskip("av", reason="PyAV (metaemb[audio-formats]) is not installed")
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate, layout=layout)
        stream.bit_rate = 128000
        for i in range(0, wave.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(wave[:, i : i + 1024], dtype=np.float32),
                format="fltp",
                layout=layout,
            )
            frame.sample_rate = rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def peak_hz(wave: torch.Tensor, rate: int) -> float:
    spec = torch.fft.rfft(wave * torch.hann_window(wave.numel()))
    return float(spec.abs().argmax()) * rate / wave.numel()


def test_m4a_decodes_to_the_encoded_tone(tmp_path):
    rate = 16000
    t = np.arange(rate) / rate
    wave = 0.4 * np.sin(2 * np.pi * 440 * t)[None]
    write_m4a(tmp_path / "tone.m4a", wave, rate)
    got = read_audio(tmp_path / "tone.m4a", rate)
    assert got.dtype == torch.float32 and got.dim() == 1
    assert abs(got.numel() - rate) <= 2048  # AAC frames of 1024 samples (+ priming)
    assert abs(peak_hz(got, rate) - 440) < 2
    assert float(got.abs().max()) == pytest.approx(0.4, abs=0.05)


def test_m4a_stereo_441k_is_mixed_down_and_resampled(tmp_path):
    rate = 44100
    t = np.arange(rate) / rate
    wave = np.stack([0.3 * np.sin(2 * np.pi * 1000 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)])
    write_m4a(tmp_path / "st.m4a", wave, rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = read_audio(tmp_path / "st.m4a", 16000)
    assert abs(got.numel() - 16000) <= 1000
    assert abs(peak_hz(got, 16000) - 1000) < 2
    with pytest.raises(DataError, match="44100 Hz"):
        read_audio(tmp_path / "st.m4a", 16000, on_rate_mismatch="error")


def test_m4a_segment_and_folder_scan(tmp_path):
    rate = 16000
    wave = 0.3 * np.sin(2 * np.pi * 300 * np.arange(2 * rate) / rate)[None]
    (tmp_path / "id1" / "sess").mkdir(parents=True)
    (tmp_path / "id2").mkdir()
    write_m4a(tmp_path / "id1" / "sess" / "00001.m4a", wave, rate)
    write_m4a(tmp_path / "id2" / "00001.m4a", wave, rate)
    folder = AudioFolder(tmp_path)
    assert [s.path for s in folder.samples] == ["id1/sess/00001.m4a", "id2/00001.m4a"]
    seg = read_audio(tmp_path / "id2" / "00001.m4a", rate, start=0.5, end=1.0)
    assert seg.numel() == rate // 2


def test_m4a_without_pyav_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "x.m4a"
    path.write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` fail
    with pytest.raises(DataError) as err:
        read_audio(path, 16000)
    msg = str(err.value)
    assert "metaemb[audio-formats]" in msg and str(path) in msg and "\n" not in msg


def test_damaged_m4a_is_a_data_error_naming_the_file(tmp_path):
    pytest.importorskip("av", reason="PyAV (metaemb[audio-formats]) is not installed")
    path = tmp_path / "bad.m4a"
    path.write_bytes(b"not an mp4 file at all" * 10)
    with pytest.raises(DataError, match=r"bad\.m4a"):
        read_audio(path, 16000)
