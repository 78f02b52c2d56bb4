"""Energy VAD against a literal loop implementation of the Kaldi algorithm, its cache, and Silero."""

from __future__ import annotations

import math
import os
import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch

from metaemb.core.errors import ConfigError, MetaembError
from metaemb.plugins.audio.vad import (
    EnergyVAD,
    SileroVAD,
    energy_vad_mask,
    frames_to_samples,
    keep_frames,
)

RATE = 16000


def reference_vad(wave, threshold=5.5, mean_scale=0.5, context=2, proportion=0.12):
    """docs/reference/speaker.md's algorithm, written as plainly as possible (25 ms / 10 ms frames at 16 kHz)."""
    x = [float(v) * 32768.0 for v in wave]
    size, shift = 400, 160
    n_frames = 1 + (len(x) - size) // shift if len(x) >= size else 0
    log_e = []
    for t in range(n_frames):
        frame = x[t * shift : t * shift + size]
        mean = sum(frame) / size
        energy = sum((v - mean) ** 2 for v in frame)
        log_e.append(math.log(max(energy, np.finfo(np.float32).eps)))
    thr = threshold + mean_scale * (sum(log_e) / n_frames)
    speech = []
    for t in range(n_frames):
        num = den = 0
        for t2 in range(t - context, t + context + 1):
            if 0 <= t2 < n_frames:
                den += 1
                num += log_e[t2] > thr
        speech.append(num >= den * proportion)
    return speech


def silence_tone_silence(noise: float = 1e-4, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(RATE) / RATE
    wave = np.concatenate([np.zeros(RATE), 0.5 * np.sin(2 * np.pi * 440 * t), np.zeros(RATE)])
    return torch.from_numpy((wave + noise * rng.standard_normal(wave.size)).astype(np.float32))


def test_silence_tone_silence_matches_loop_and_hand_count():
    wave = silence_tone_silence()
    mask = energy_vad_mask(wave)
    assert mask.tolist() == reference_vad(wave.tolist())
    # Frames 98…199 overlap the tone (frame t spans [160t, 160t + 400)); context 2 adds two a side.
    assert torch.nonzero(mask).flatten().tolist() == list(range(96, 202))
    assert mask.numel() == 1 + (3 * RATE - 400) // 160


def test_threshold_formula_mean_term_decides():
    # Two levels: quiet (2/3 of the time, logE ≈ 13) and loud. thr = 5.5 + 0.5·mean ≈ 14.4 rejects
    # the quiet part; without the mean term (mean_scale 0, thr 5.5) it is speech.
    rng = np.random.default_rng(1)
    quiet = 0.00083 * rng.standard_normal(2 * RATE)
    loud = 0.3 * rng.standard_normal(RATE)
    wave = torch.from_numpy(np.concatenate([quiet, loud]).astype(np.float32))
    with_mean = energy_vad_mask(wave)
    without = energy_vad_mask(wave, mean_scale=0.0)
    assert with_mean.tolist() == reference_vad(wave.tolist())
    assert without.tolist() == reference_vad(wave.tolist(), mean_scale=0.0)
    assert not with_mean[:150].any() and with_mean[-50:].all()
    assert without.all()
    kaldi_default = energy_vad_mask(wave, threshold=5.0, context=0, proportion=0.6)
    assert kaldi_default.tolist() == reference_vad(wave.tolist(), 5.0, 0.5, 0, 0.6)


def test_random_signals_match_loop():
    rng = np.random.default_rng(2)
    for n in (400, 401, 2345, 6000):
        env = np.repeat(rng.uniform(0, 1, n // 200 + 1) ** 4, 200)[:n]
        wave = torch.from_numpy((env * rng.standard_normal(n)).astype(np.float32))
        assert energy_vad_mask(wave, context=1, proportion=0.5).tolist() == reference_vad(
            wave.tolist(), context=1, proportion=0.5
        )


def test_frames_to_samples_partition():
    mask = torch.tensor([False, True, False, True])
    keep = frames_to_samples(mask, 1000, 160)  # frame 3 (last) owns [480, 1000)
    assert torch.nonzero(keep).flatten().tolist() == list(range(160, 320)) + list(range(480, 1000))


def write_fixture(tmp_path):
    path = tmp_path / "spk" / "utt.wav"
    path.parent.mkdir()
    wave = silence_tone_silence()
    sf.write(path, wave.numpy(), RATE, subtype="FLOAT")
    return path, wave


def test_energy_frontend_cuts_to_speech_and_caches(tmp_path):
    _, wave = write_fixture(tmp_path)
    cache = tmp_path / "cache"
    vad = EnergyVAD(cache_dir=cache)
    out = vad(wave, "spk/utt.wav", tmp_path)
    torch.testing.assert_close(out, wave[96 * 160 : 202 * 160], rtol=0, atol=0)
    entries = list((cache / "vad").rglob("*.vad"))
    assert len(entries) == 1
    # A hit reuses the stored mask: feeding other audio under the same path gives the cached cut.
    other = torch.ones_like(wave) * 0.1
    assert vad(other, "spk/utt.wav", tmp_path).numel() == (202 - 96) * 160
    # Another configuration is another entry.
    EnergyVAD(cache_dir=cache, context=0)(wave, "spk/utt.wav", tmp_path)
    assert len(list((cache / "vad").rglob("*.vad"))) == 2
    # Audio decoded to another length (e.g. the folder now resamples) is a miss, recomputed.
    head = wave[: 2 * RATE]  # speech frames 96…197, the last frame owning the tail
    assert torch.equal(vad(head, "spk/utt.wav", tmp_path), head[96 * 160 :])


def test_cache_entry_is_recomputed_when_file_changes(tmp_path):
    path, wave = write_fixture(tmp_path)
    vad = EnergyVAD(cache_dir=tmp_path / "cache")
    vad(wave, "spk/utt.wav", tmp_path)
    # Rewrite the file with tone everywhere (same size) and a new mtime: the entry is stale.
    loud = (0.5 * torch.sin(torch.arange(3 * RATE) * 0.2)).float()
    sf.write(path, loud.numpy(), RATE, subtype="FLOAT")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    out = vad(loud, "spk/utt.wav", tmp_path)
    assert out.numel() == loud.numel()
    assert len(list((tmp_path / "cache" / "vad").rglob("*.vad"))) == 1  # overwritten, not added
    # A corrupt entry is recomputed too.
    entry = next((tmp_path / "cache" / "vad").rglob("*.vad"))
    entry.write_bytes(b"garbage")
    fresh = EnergyVAD(cache_dir=tmp_path / "cache")  # no in-memory copy: reads the file
    assert fresh(loud, "spk/utt.wav", tmp_path).numel() == loud.numel()
    assert entry.read_bytes() != b"garbage"  # rewritten


def test_no_speech_keeps_recording_with_warning(tmp_path):
    wave = torch.full((8000,), 0.01)  # constant: every frame has zero energy after mean removal
    with pytest.warns(UserWarning, match=r"no speech in 'x\.wav'"):
        out = EnergyVAD()(wave, "x.wav", tmp_path)
    assert out is wave


def test_silero_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "silero_vad", None)
    with pytest.raises(MetaembError, match=r"pip install 'metaemb\[vad\]'"):
        SileroVAD()


def test_silero_frontend_cuts_segments(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("silero_vad")
    fake.load_silero_vad = lambda: "model"

    def get_speech_timestamps(wave, model, **kw):
        calls.append(kw)
        return [{"start": 100, "end": 300}, {"start": 500, "end": 600}]

    fake.get_speech_timestamps = get_speech_timestamps
    monkeypatch.setitem(sys.modules, "silero_vad", fake)
    (tmp_path / "a.wav").write_bytes(b"x")
    vad = SileroVAD(cache_dir=tmp_path / "cache")
    wave = torch.arange(1000, dtype=torch.float32)
    out = vad(wave, "a.wav", tmp_path)
    assert out.tolist() == list(range(100, 300)) + list(range(500, 600))
    assert calls[0]["sampling_rate"] == 16000 and calls[0]["threshold"] == 0.5
    vad(wave, "a.wav", tmp_path)
    assert len(calls) == 1  # second call served from the cache


@pytest.mark.parametrize(
    "opts, named",
    [
        ({"threshold": 1.5}, "frontend.threshold"),
        ({"threshold": 0}, "frontend.threshold"),
        ({"min_speech_duration_ms": -1}, "frontend.min_speech_duration_ms"),
        ({"min_silence_duration_ms": 10**9}, "frontend.min_silence_duration_ms"),
    ],
)
def test_silero_options_out_of_range_are_named(monkeypatch, opts, named):
    monkeypatch.setitem(sys.modules, "silero_vad", types.ModuleType("silero_vad"))
    with pytest.raises(MetaembError, match=named):
        SileroVAD(**opts)


def test_concurrent_writers_leave_one_valid_entry(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    _, wave = write_fixture(tmp_path)
    vads = [EnergyVAD(cache_dir=tmp_path / "cache") for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda v: v(wave, "spk/utt.wav", tmp_path), vads))
    assert all(torch.equal(o, outs[0]) for o in outs)
    files = [p for p in (tmp_path / "cache" / "vad").rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".vad"  # no temporary files left behind


def test_frames_to_samples_matches_per_sample_owner():
    """The vectorised expansion equals the per-sample definition owner = min(i // shift, F − 1)."""
    g = torch.Generator().manual_seed(3)
    for frames, n in [(1, 5), (4, 1000), (7, 1120), (7, 1119), (10, 400), (98, 16000)]:
        mask = torch.rand(frames, generator=g) > 0.5
        owner = (torch.arange(n) // 160).clamp(max=frames - 1)
        assert torch.equal(frames_to_samples(mask, n, 160), mask[owner])
        for _ in range(20):  # and the run-slicing cut equals the boolean index
            mask = torch.rand(frames, generator=g) > torch.rand(1, generator=g)
            wave = torch.randn(n, generator=g)
            owner_cut = wave[frames_to_samples(mask, n, 160)] if mask.any() else wave[:0]
            assert torch.equal(keep_frames(wave, mask, 160), owner_cut)


def test_cached_decisions_equal_fresh_ones(tmp_path):
    """A disk hit, a memory hit and an uncached run give the same cut; old `.npz` entries are
    ignored; a memory hit is still checked against the file's stamp."""
    g = torch.Generator().manual_seed(5)
    cache = tmp_path / "cache"
    (tmp_path / "spk").mkdir()
    waves = []
    for i in range(4):
        wave = silence_tone_silence() * (0.2 + torch.rand(1, generator=g))
        wave = wave + 0.01 * torch.randn(wave.shape, generator=g)
        sf.write(tmp_path / f"spk/{i}.wav", wave.numpy(), RATE, subtype="FLOAT")
        waves.append(wave)
    (cache / "vad" / "00").mkdir(parents=True)
    (cache / "vad" / "00" / "old.npz").write_bytes(b"PK old format")
    plain = [EnergyVAD()(w, f"spk/{i}.wav", tmp_path) for i, w in enumerate(waves)]
    first = EnergyVAD(cache_dir=cache)
    for _ in range(2):  # compute + store, then memory hits
        for i, w in enumerate(waves):
            assert torch.equal(first(w, f"spk/{i}.wav", tmp_path), plain[i])
    second = EnergyVAD(cache_dir=cache)  # disk hits
    for i, w in enumerate(waves):
        assert torch.equal(second(w, f"spk/{i}.wav", tmp_path), plain[i])
    assert len(list((cache / "vad").rglob("*.vad"))) == 4
    loud = (0.5 * torch.sin(torch.arange(3 * RATE) * 0.2)).float()
    sf.write(tmp_path / "spk/0.wav", loud.numpy(), RATE, subtype="FLOAT")
    assert second(loud, "spk/0.wav", tmp_path).numel() == loud.numel()


def test_cache_sees_a_rewrite_after_the_checksummed_head(tmp_path):
    """A file rewritten in place (same inode, size and mtime) with a change only past the
    checksummed head (its last second) is recomputed: its ctime moved, which the stamp holds."""
    import time

    path, wave = write_fixture(tmp_path)  # 3 s float32: 192 KB
    vad, fresh = EnergyVAD(cache_dir=tmp_path / "cache"), EnergyVAD()
    times = (path.stat().st_atime_ns, path.stat().st_mtime_ns)
    inode = path.stat().st_ino
    assert torch.equal(vad(wave, "spk/utt.wav", tmp_path), fresh(wave, "spk/utt.wav", tmp_path))
    changed = wave.clone()
    changed[2 * RATE :] = 0.5 * torch.sin(torch.arange(RATE) * 0.2)  # speech in the last second
    time.sleep(0.05)  # past a coarse ctime clock's tick
    with open(path, "r+b") as f:  # in place: the bytes after the head only
        f.seek(-RATE * 4, os.SEEK_END)
        f.write(changed[2 * RATE :].numpy().astype("<f4").tobytes())
    os.utime(path, ns=times)
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (inode, times[1])
    from metaemb.plugins.audio.io import read_audio

    reread = read_audio(path)
    assert torch.equal(reread, changed)
    got = vad(reread, "spk/utt.wav", tmp_path)
    assert torch.equal(got, fresh(reread, "spk/utt.wav", tmp_path))
    assert got.numel() > (202 - 96) * 160  # the new speech is kept


def test_memoised_cut_equals_fresh_and_is_not_shared_between_lengths(tmp_path):
    """Memory hits return the same samples as an uncached cut, for every call."""
    _, wave = write_fixture(tmp_path)
    vad = EnergyVAD(cache_dir=tmp_path / "cache")
    want = EnergyVAD()(wave, "spk/utt.wav", tmp_path)
    for _ in range(3):
        assert torch.equal(vad(wave, "spk/utt.wav", tmp_path), want)
    head = wave[: 2 * RATE]
    assert torch.equal(vad(head, "spk/utt.wav", tmp_path), EnergyVAD()(head, "spk/utt.wav", "."))


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"frame_shift_ms": 0}, r"frontend\.frame_shift_ms \(energy VAD\) must be"),
        ({"frame_length_ms": 1e400}, r"frontend\.frame_length_ms \(energy VAD\) must be"),
        ({"frame_length_ms": 25000}, r"frontend\.frame_length_ms .*\(0, 1000\]"),
        ({"frame_shift_ms": 0.01}, r"shorter than 2 samples / 1 sample"),
    ],
)
def test_energy_vad_frame_options_bounded(options, pattern):
    with pytest.raises(ConfigError, match=pattern):
        EnergyVAD(**options)


def test_a_cache_folder_that_cannot_be_written_costs_speed_not_the_run(tmp_path):
    """A shared read-only METAEMB_CACHE stopped `embed`: decisions are computed and used
    anyway, with one warning. (Root ignores permissions, so a file stands where the cache's
    folder must go.)"""
    _, wave = write_fixture(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "vad").write_text("not a folder")
    vad = EnergyVAD(cache_dir=cache)
    with pytest.warns(UserWarning, match="VAD cache folder .* cannot be written") as caught:
        out = vad(wave, "spk/utt.wav", tmp_path)
        again = vad(wave, "spk/utt.wav", tmp_path)
        # a command builds one frontend per data set (training, validation): still said once
        # (a full disk said it 4 to 6 times, H24 F5)
        EnergyVAD(cache_dir=cache)(wave, "spk/utt.wav", tmp_path)
    assert len([w for w in caught if "VAD cache" in str(w.message)]) == 1
    want = EnergyVAD(cache_dir=None)(wave, "spk/utt.wav", tmp_path)
    assert torch.equal(out, want) and torch.equal(again, want)
    assert not list(cache.rglob("*.tmp"))


def test_the_numpy_port_in_the_export_docs_gives_the_frontends_samples(tmp_path):
    """docs/export.md gives the energy VAD in numpy for services without metaemb (E1 F1): on
    speech with silences, with a short tail, shorter than a frame and with no speech, it keeps
    exactly the samples the frontend keeps."""
    import warnings

    from helpers import doc_function

    port = doc_function("docs/export.md", "energy_vad")
    g = torch.Generator().manual_seed(3)
    tone = torch.sin(torch.arange(16000) * 0.05) * 0.3
    quiet = 1e-4 * torch.randn(8000, generator=g)
    cases = {
        "speech and silences": torch.cat([quiet, tone, quiet, tone[:5123], quiet[:777]]),
        "noise": 0.2 * torch.randn(12345, generator=g),
        "shorter than a frame": tone[:300],
        "silence only": torch.zeros(4000),
    }
    options = [{}, {"context": 0, "proportion": 0.5, "mean_scale": 0.0, "threshold": 20.0},
               {"sample_rate": 8000, "frame_shift_ms": 12.5}]  # fmt: skip
    cut = 0
    for opts in options:
        vad = EnergyVAD(**opts, cache_dir=tmp_path / "cache")
        for name, wave in cases.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # no speech: kept whole, with a warning
                ours = vad(wave.clone(), f"{name}-{len(opts)}.wav", tmp_path)
            theirs = port(wave.numpy(), **opts)
            assert np.array_equal(ours.numpy(), theirs), (name, opts)
            cut += len(theirs) < len(wave)
    assert cut >= 3  # silences were cut, not only whole recordings kept
