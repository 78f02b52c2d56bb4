"""Windowed training reads (core/data/dataset.py): once the energy VAD's decision for a file is
cached, a training item reads only the window of the file its random crop needs. Every item must
equal the one made the usual way (read all → VAD cut → prepare's crop) under the same RNG state,
and draw the same random numbers; files that cannot be windowed take the usual way."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch

from metaemb.core.data.dataset import PreparedDataset, crop_pieces
from metaemb.plugins.audio.features import AudioFeatures
from metaemb.plugins.audio.folder import AudioFolder
from metaemb.plugins.audio.vad import EnergyVAD

RATE = 16000


def bursts(seconds: list[float], seed: int) -> np.ndarray:
    """Alternating silence and tone of the given durations (silence first): several speech runs."""
    rng = np.random.default_rng(seed)
    parts = []
    for k, sec in enumerate(seconds):
        n = int(sec * RATE)
        if k % 2:
            t = np.arange(n) / RATE
            parts.append(
                0.3 * np.sin(2 * np.pi * (150 + 40 * k) * t) + 0.01 * rng.standard_normal(n)
            )
        else:
            parts.append(1e-4 * rng.standard_normal(n))
    return np.concatenate(parts).astype(np.float32)


def corpus(root):
    """Two speakers: multi-run WAV (PCM 16 and float), FLAC, a short one (tiled), stereo and
    8 kHz ones (not windowed: read whole)."""
    files = {
        "a/runs.wav": (bursts([0.3, 0.6, 0.2, 0.5, 0.4, 0.7, 0.2], 1), RATE, "PCM_16"),
        "a/float.wav": (bursts([0.1, 1.2, 0.3, 0.4], 2), RATE, "FLOAT"),
        "a/short.wav": (bursts([0.2, 0.3, 0.2], 3), RATE, "PCM_16"),
        "b/runs.flac": (bursts([0.5, 0.4, 0.1, 0.9, 0.3], 4), RATE, "PCM_16"),
        "b/stereo.wav": (np.stack([bursts([0.2, 1.0, 0.2], 5)] * 2, axis=1), RATE, "PCM_16"),
        "b/slow.wav": (bursts([0.2, 1.5, 0.2], 6)[::2].copy(), 8000, "PCM_16"),
    }
    for name, (wave, rate, subtype) in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, wave, rate, subtype=subtype)
    return AudioFolder(root)


def items(ds: PreparedDataset, seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    out = [ds[i][0] for i in range(len(ds))]
    return [*out, torch.rand(4)]  # and the RNG stream after them


def test_windowed_items_equal_the_usual_ones(tmp_path, recwarn):
    folder = corpus(tmp_path / "data")
    features = AudioFeatures(crop_seconds=0.5)
    vad = EnergyVAD(cache_dir=tmp_path / "cache")
    windowed = PreparedDataset(folder, vad, features, train=True)
    usual = PreparedDataset(AudioFolder(tmp_path / "data"), vad, features, train=True)
    usual.crop = None  # the usual way only
    assert windowed.crop == RATE // 2
    cold = items(windowed, 0)  # no cached decision yet: the usual way, computing them
    assert all(torch.equal(a, b) for a, b in zip(cold, items(usual, 0), strict=True))

    reads = []
    load = folder.load
    folder.load = lambda path: reads.append(path.name) or load(path)
    for seed in range(5):  # many crops: windows over one run and over several
        got, want = items(windowed, seed), items(usual, seed)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), seed
    # only the files that cannot be windowed (short → tiled, stereo, 8 kHz) were read whole
    assert sorted(set(reads)) == ["short.wav", "slow.wav", "stereo.wav"], sorted(set(reads))
    fresh = EnergyVAD(cache_dir=tmp_path / "cache")  # disk hits in a new process
    again = PreparedDataset(folder, fresh, features, train=True)
    assert all(torch.equal(a, b) for a, b in zip(items(again, 9), items(usual, 9), strict=True))


def test_evaluation_and_uncached_frontends_read_whole_files(tmp_path):
    folder = corpus(tmp_path / "data")
    features = AudioFeatures(crop_seconds=0.5)
    assert PreparedDataset(folder, EnergyVAD(cache_dir=tmp_path), features, False).crop is None
    nocache = PreparedDataset(folder, EnergyVAD(), features, train=True)
    reads = []
    load = folder.load
    folder.load = lambda path: reads.append(path.name) or load(path)
    nocache[0], nocache[0]
    assert len(reads) == 2  # without a cache the decision is not known before reading


def test_crop_pieces_match_slicing_the_concatenation():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        cuts = sorted(set(torch.randint(0, 200, (8,), generator=g).tolist()))
        ranges = [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if a < b]
        timeline = [p for s, e in ranges for p in range(s, e)]
        if not timeline:
            continue
        length = int(torch.randint(1, len(timeline) + 1, (), generator=g))
        start = int(torch.randint(0, len(timeline) - length + 1, (), generator=g))
        got = [p for s, e in crop_pieces(ranges, start, length) for p in range(s, e)]
        assert got == timeline[start : start + length]


def test_reads_equal_libsndfile_float_reads(tmp_path):
    """read_audio / read_window scale 16-bit PCM in numpy: the values libsndfile's float read
    gives, for every int16 value (both ends included), in WAV and FLAC, and other subtypes."""
    from metaemb.plugins.audio.io import read_audio, read_window

    ramp = np.arange(-32768, 32768, dtype=np.int16)
    rng = np.random.default_rng(0)
    for name, data, subtype in [
        ("all16.wav", ramp, "PCM_16"),
        ("all16.flac", rng.permutation(ramp), "PCM_16"),
        ("deep.wav", (rng.standard_normal(RATE) * 0.2).astype(np.float32), "PCM_24"),
        ("float.wav", (rng.standard_normal(RATE) * 0.2).astype(np.float32), "FLOAT"),
    ]:
        sf.write(tmp_path / name, data, RATE, subtype=subtype)
        want = sf.read(tmp_path / name, dtype="float32")[0]
        got = read_audio(tmp_path / name).numpy()
        assert got.dtype == np.float32 and np.array_equal(got, want), name
        window = read_window(tmp_path / name, RATE, lambda n: (n // 3, n // 3 + 1000))
        assert np.array_equal(window.numpy(), want[len(want) // 3 :][:1000]), name
