"""Fault catalogue, bad data at load (issue 13 items 3, 4, 5, 7, 10): each bad input is built on
the fly and the exact behaviour asserted — a correct value against a numpy reference, or a
DataError naming the file that `on_bad_sample = "skip"` turns into a skipped sample."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from faults_helpers import png16
from PIL import Image

from metaemb.core.data.dataset import Bad, PreparedDataset
from metaemb.core.errors import DataError
from metaemb.core.eval.trial_generation import make_trials
from metaemb.core.plugin.interfaces import IdentityFrontend
from metaemb.plugins.audio.folder import AudioFolder
from metaemb.plugins.audio.io import read_audio
from metaemb.plugins.audio.vad import EnergyVAD
from metaemb.plugins.vision.folder import ImageFolder, read_image


# -- helpers ------------------------------------------------------------------------------------
def hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


def faces_folder(root: Path, ids: int = 3, per: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for i in range(ids):
        for j in range(per):
            p = root / f"id{i}" / f"{j}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(p)
    return root


# -- item 3: symlinks -----------------------------------------------------------------------------
def test_symlink_to_root_is_not_a_phantom_identity(tmp_path):
    root = faces_folder(tmp_path / "root")
    plain = ImageFolder(root)
    os.symlink(".", root / "zz")  # the case of the report
    os.symlink("..", root / "id0" / "up")  # a loop inside an identity
    with pytest.warns(UserWarning, match="point at the data root or above"):
        linked = ImageFolder(root)
    assert linked.identities == plain.identities == ["id0", "id1", "id2"]
    assert [s.path for s in linked.samples] == [s.path for s in plain.samples]
    # No image is paired with a copy of itself, so every target trial is a real one.
    trials = make_trials(linked, seed=0)
    assert all(t.enroll[0] != t.test for t in trials)
    assert sum(t.label == 1 for t in trials) == 3  # one pair per identity of 2 images


def test_aliases_and_linked_files_count_once_outside_links_are_followed(tmp_path):
    root = faces_folder(tmp_path / "root")
    outside = faces_folder(tmp_path / "elsewhere", ids=1, per=1) / "id0" / "0.png"
    os.symlink(root / "id1", root / "id9")  # an alias of a whole identity
    os.symlink("0.png", root / "id0" / "0copy.png")  # a second name for a sample
    os.symlink(outside, root / "id2" / "ext.png")  # a sample kept on another disk
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = ImageFolder(root)
    text = " ".join(str(w.message) for w in caught)
    assert "'id9'" in text and "0copy.png = id0/0.png" in text
    assert folder.identities == ["id0", "id1", "id2"]
    paths = [s.path for s in folder.samples]
    assert paths == ["id0/0.png", "id0/1.png", "id1/0.png", "id1/1.png", "id2/0.png",
                     "id2/1.png", "id2/ext.png"]  # fmt: skip
    assert folder.load(folder.abspath("id2/ext.png")).shape == (3, 8, 8)


# -- item 4: bit depths and modes ----------------------------------------------------------------
@pytest.mark.parametrize(("color_type", "channels"), [(0, 1), (2, 3), (4, 2), (6, 4)])
def test_16_bit_png_scales_to_8_bit(tmp_path, color_type, channels):
    rng = np.random.default_rng(color_type)
    ref = rng.integers(0, 65536, (5, 7, channels)).astype(np.uint16)
    ref[0, 0] = 65535  # full scale must stay 255, not clip everything else to white
    ref[0, 1] = 0
    p = png16(tmp_path / "x.png", ref[..., 0] if channels == 1 else ref, color_type)
    got = hwc(read_image(p))
    colour = ref[..., :3] if channels >= 3 else np.repeat(ref[..., :1], 3, axis=2)
    np.testing.assert_array_equal(got, (colour >> 8).astype(np.uint8))


def test_12_bit_data_in_a_16_bit_image_is_warned_about_once(tmp_path):
    """Sensor data of 12 bits (values up to 4095) became 16 grey levels without a word."""
    import warnings

    from metaemb.plugins.vision import imageio

    twelve = np.random.default_rng(0).integers(700, 2400, (6, 4)).astype(np.uint16)
    Image.fromarray(twelve).save(tmp_path / "a.tif")
    Image.fromarray(twelve).save(tmp_path / "b.tif")
    imageio._FEW_LEVELS_WARNED.clear()
    with pytest.warns(UserWarning, match=r"a\.tif. holds values up to \d+ only: .* keeps \d+ "
                      r"grey level"):  # fmt: skip
        read_image(tmp_path / "a.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(tmp_path / "b.tif")  # once per process


def test_other_modes_against_numpy(tmp_path):
    rng = np.random.default_rng(1)
    grey16 = rng.integers(0, 65536, (6, 4)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "i16.tif")  # mode I;16
    assert Image.open(tmp_path / "i16.tif").mode == "I;16"
    np.testing.assert_array_equal(hwc(read_image(tmp_path / "i16.tif"))[..., 0], grey16 >> 8)

    grey32 = rng.integers(0, 65536, (6, 4)).astype(np.int32)
    Image.fromarray(grey32, mode="I").save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    np.testing.assert_array_equal(hwc(read_image(tmp_path / "i32.tif"))[..., 1], grey32 >> 8)

    flt = rng.random((6, 4)).astype(np.float32)
    Image.fromarray(flt, mode="F").save(tmp_path / "f.tif")
    expect = np.round(flt.astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_array_equal(hwc(read_image(tmp_path / "f.tif"))[..., 2], expect)

    la = rng.integers(0, 256, (6, 4, 2)).astype(np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(hwc(read_image(tmp_path / "la.png")), la[..., [0, 0, 0]])

    palette = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    index = rng.integers(0, 256, (6, 4)).astype(np.uint8)
    p = Image.fromarray(index, mode="P")
    p.putpalette(palette.ravel().tolist())
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(hwc(read_image(tmp_path / "p.png")), palette[index])

    cyan = np.zeros((6, 4, 4), np.uint8)
    cyan[..., 0] = 255  # C=255, M=Y=K=0 is pure cyan under any CMYK→RGB convention
    Image.fromarray(cyan, mode="CMYK").save(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(hwc(read_image(tmp_path / "cmyk.tif"))[0, 0], [0, 255, 255])


def test_unmappable_modes_are_refused_naming_the_file(tmp_path):
    Image.fromarray(np.full((3, 3), 2.5, np.float32), mode="F").save(tmp_path / "hdr.tif")
    with pytest.raises(DataError, match=r"hdr\.tif.*outside \[0, 1\]"):
        read_image(tmp_path / "hdr.tif")
    Image.fromarray(np.full((3, 3), 70000, np.int32), mode="I").save(tmp_path / "big.tif")
    with pytest.raises(DataError, match=r"big\.tif.*16-bit range"):
        read_image(tmp_path / "big.tif")


# -- item 10: huge images -------------------------------------------------------------------------
def test_huge_images_are_refused_from_the_header(tmp_path, monkeypatch):
    # A 12000² header over a few real bytes: refused before any pixel is decoded.
    huge = png16(tmp_path / "huge.png", np.zeros((2, 2), np.uint16), 0, size=(12000, 12000))
    with pytest.raises(DataError, match=r"huge\.png' is 12000×12000 \(144\.0 megapixels\)"):
        read_image(huge)
    # Beyond PIL's own bomb limit (2 × 89 MP) PIL refuses at open: still a DataError.
    bomb = png16(tmp_path / "bomb.png", np.zeros((2, 2), np.uint16), 0, size=(20000, 20000))
    with pytest.raises(DataError, match=r"bomb\.png"):
        read_image(bomb, max_pixels=10**12)
    # The limit is a setting.
    Image.new("RGB", (20, 20)).save(tmp_path / "small.png")
    monkeypatch.setenv("METAEMB_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(DataError, match="METAEMB_MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "small.png")
    monkeypatch.setenv("METAEMB_MAX_IMAGE_PIXELS", "400")
    assert read_image(tmp_path / "small.png").shape == (3, 20, 20)


def test_bad_images_are_skipped_not_fatal(tmp_path):
    root = faces_folder(tmp_path / "root")
    png16(root / "id1" / "huge.png", np.zeros((2, 2), np.uint16), 0, size=(12000, 12000))
    folder = ImageFolder(root)

    class Flat(torch.nn.Module):
        def prepare(self, raw, train):
            return raw.float()

    ds = PreparedDataset(folder, IdentityFrontend(), Flat(), False, on_bad_sample="skip")
    items = [ds[i] for i in range(len(ds))]
    bad = [it for it in items if isinstance(it, Bad)]
    assert [b.path for b in bad] == ["id1/huge.png"] and "megapixels" in bad[0].error
    strict = PreparedDataset(folder, IdentityFrontend(), Flat(), False)
    with pytest.raises(DataError, match=r"huge\.png"):
        [strict[i] for i in range(len(strict))]


def test_a_plugin_folder_whose_load_raises_another_error_names_the_file_and_can_skip(tmp_path):
    """A third-party folder's load may raise numpy's ValueError on a corrupt row instead of
    DataError: the file and the folder are named, and `skip` skips it like any bad file."""
    root = faces_folder(tmp_path / "root")

    class Parsing(ImageFolder):
        def load(self, path):
            if path.name == "1.png" and path.parent.name == "id2":
                raise ValueError("could not parse row 7")
            return super().load(path)

    class Flat(torch.nn.Module):
        def prepare(self, raw, train):
            return raw.float()

    folder = Parsing(root)
    ds = PreparedDataset(folder, IdentityFrontend(), Flat(), False, on_bad_sample="skip")
    bad = [it for it in (ds[i] for i in range(len(ds))) if isinstance(it, Bad)]
    assert [b.path for b in bad] == ["id2/1.png"]
    assert "failed to load it: ValueError: could not parse row 7" in bad[0].error
    strict = PreparedDataset(folder, IdentityFrontend(), Flat(), False)
    with pytest.raises(DataError, match=r"'id2/1\.png': sample folder Parsing failed to load"):
        [strict[i] for i in range(len(strict))]


# -- item 5: non-finite audio -------------------------------------------------------------------
def tone(seconds: float = 0.5, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_audio_is_refused_naming_the_file(tmp_path, value):
    wave = tone()
    wave[100] = value
    sf.write(tmp_path / "bad.wav", wave, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match=r"bad\.wav' holds NaN or infinite samples.*sample 100"):
        read_audio(tmp_path / "bad.wav")


def test_non_finite_audio_is_skipped_with_on_bad_sample_skip(tmp_path):
    for spk in ("a", "b"):
        for u in range(2):
            (tmp_path / spk).mkdir(exist_ok=True)
            sf.write(tmp_path / spk / f"{u}.wav", tone(), 16000, subtype="FLOAT")
    wave = tone()
    wave[::7] = np.nan
    sf.write(tmp_path / "b" / "1.wav", wave, 16000, subtype="FLOAT")

    class Flat(torch.nn.Module):
        def prepare(self, raw, train):
            return raw

    ds = PreparedDataset(AudioFolder(tmp_path), IdentityFrontend(), Flat(), False, "skip")
    bad = [it for it in (ds[i] for i in range(len(ds))) if isinstance(it, Bad)]
    assert [b.path for b in bad] == ["b/1.wav"]


# -- item 7: the VAD cache knows which file it describes ------------------------------------------
def test_vad_cache_is_not_shared_by_same_named_files_of_two_datasets(tmp_path):
    speech = tone(1.0)
    quiet = speech.copy()
    quiet[: len(quiet) // 2] *= 1e-4  # the first half is silence here
    a, b = tmp_path / "a" / "spk" / "u.wav", tmp_path / "b" / "spk" / "u.wav"
    for path, wave in ((a, speech), (b, quiet)):
        path.parent.mkdir(parents=True)
        sf.write(path, wave, 16000, subtype="FLOAT")
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # same size, same mtime
    assert a.stat().st_size == b.stat().st_size
    vad = EnergyVAD(cache_dir=tmp_path / "cache")
    fresh = EnergyVAD(cache_dir=None)
    for root in (tmp_path / "a", tmp_path / "b", tmp_path / "a"):
        wave = read_audio(root / "spk" / "u.wav")
        cached = vad(wave, "spk/u.wav", root)
        assert torch.equal(cached, fresh(wave, "spk/u.wav", root)), root
    assert len(vad(read_audio(b), "spk/u.wav", tmp_path / "b")) < len(speech) * 0.75


def test_vad_cache_sees_a_replaced_file_with_the_same_size_and_mtime(tmp_path):
    path = tmp_path / "spk" / "u.wav"
    path.parent.mkdir()
    vad, fresh = EnergyVAD(cache_dir=tmp_path / "cache"), EnergyVAD(cache_dir=None)
    speech = tone(1.0)
    quiet = speech.copy()
    quiet[: len(quiet) // 2] *= 1e-4
    for wave in (speech, quiet):
        sf.write(path, wave, 16000, subtype="FLOAT")
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
        got = vad(read_audio(path), "spk/u.wav", tmp_path)
        assert torch.equal(got, fresh(read_audio(path), "spk/u.wav", tmp_path))


def test_stereo_channels_in_opposite_phase_are_named_not_called_silent(tmp_path):
    from metaemb.plugins.audio.io import read_audio

    x = np.random.default_rng(0).normal(0, 0.1, 16000)
    sf.write(tmp_path / "opp.wav", np.stack([x, -x], 1), 16000)  # int16: cancels to ±1 LSB
    sf.write(tmp_path / "two.wav", np.stack([x, x[::-1]], 1), 16000)  # two sources: fine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the mix-down note
        with pytest.raises(DataError, match="channels that cancel when mixed down"):
            read_audio(tmp_path / "opp.wav", 16000)
        assert read_audio(tmp_path / "two.wav", 16000).shape == (16000,)


def test_a_data_folder_that_is_a_looping_link_is_named_as_one(tmp_path, capsys):
    """`ln -s loopd loopd` as --data was a RuntimeError traceback in train, evaluate, enroll and
    identify, and "does not exist" elsewhere (H21 F16)."""
    import helpers

    loop = tmp_path / "loopd"
    loop.symlink_to("loopd")
    said = "is a symbolic link that loops"
    for args in (["train", "--data", loop, "--runs", tmp_path / "runs"],
                 ["trials", "make", loop, "--out", tmp_path / "t.txt"]):  # fmt: skip
        code, _, err = helpers.run_cli(args, capsys)
        assert code == 2 and said in " ".join(err.split()), err
    from metaemb.core.eval.collect import embed_inputs

    with pytest.raises(DataError, match=said):
        embed_inputs(tmp_path / "no-run", loop)
