"""ImageFolder loading/errors and ImageFeatures geometry, normalisation and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from metaemb.core.errors import ConfigError, DataError
from metaemb.plugins.vision.features import ImageFeatures
from metaemb.plugins.vision.folder import ImageFolder, read_image


def _write(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(0)
    for ident in ("bob", "alice"):
        for k, ext in enumerate(("png", "bmp", "ppm", "jpg", "tiff", "webp")):
            _write(
                tmp_path / ident / f"{k}.{ext}", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
            )
    _write(tmp_path / "alice" / "sub" / "grey.pgm", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    (tmp_path / "alice" / "notes.txt").write_text("not an image")
    return tmp_path


def test_scan_finds_every_extension_sorted_and_nested(tree):
    folder = ImageFolder(tree)
    assert folder.identities == ["alice", "bob"]
    paths = [s.path for s in folder.samples]
    assert "alice/sub/grey.pgm" in paths and not any(p.endswith(".txt") for p in paths)
    assert len(folder) == 13
    assert paths == sorted(paths)


def test_load_returns_rgb_uint8_chw_matching_pixels(tree):
    pixels = np.arange(20 * 30 * 3, dtype=np.uint32).reshape(20, 30, 3).astype(np.uint8)
    _write(tree / "bob" / "exact.png", pixels)
    x, label = ImageFolder(tree)[[s.path for s in ImageFolder(tree).samples].index("bob/exact.png")]
    assert x.dtype == torch.uint8 and x.shape == (3, 20, 30)
    assert torch.equal(x, torch.from_numpy(pixels).permute(2, 0, 1))
    assert label == 1
    grey = read_image(tree / "alice" / "sub" / "grey.pgm")
    assert grey.shape == (3, 8, 8) and torch.equal(grey[0], grey[2])


def test_corrupt_and_missing_images_name_the_path(tree):
    bad = tree / "bob" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"broken\.png"):
        read_image(bad)
    with pytest.raises(DataError, match=r"nothere\.jpg"):
        read_image(tree / "nothere.jpg")
    empty = tree / "bob" / "empty.png"  # an interrupted copy: said so (H19 F10)
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png' is empty \(0 bytes\)"):
        read_image(empty)


def test_identity_without_images_is_an_error(tree):
    (tree / "carol").mkdir()
    (tree / "carol" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="carol"):
        ImageFolder(tree)


# ---------------------------------------------------------------------------------------------
def test_prepare_normalises_exactly_and_keeps_aspect_by_centre_crop():
    img = torch.zeros(3, 40, 80, dtype=torch.uint8)
    img[:, :, 20:60] = 255  # the centre square is white, the side bands black
    img[0, :, 20:60] = 51
    x = ImageFeatures(image_size=40).prepare(img, train=False)
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.full((40, 40), (51 / 255 - 0.5) / 0.5))
    assert torch.allclose(x[1:], torch.ones(2, 40, 40))


def test_prepare_accepts_pil_and_resizes_with_antialiasing():
    pil = Image.fromarray(np.full((128, 128, 3), 200, dtype=np.uint8))
    x = ImageFeatures(image_size=32).prepare(pil, train=False)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x, torch.full_like(x, (200 / 255 - 0.5) / 0.5), atol=1e-6)
    # A one-pixel checkerboard averages to grey when antialiased (aliasing would keep extremes).
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    y = ImageFeatures(image_size=16).prepare(np.stack([board] * 3, -1), train=False)
    assert y.abs().max() < 0.05


def test_eval_is_deterministic_and_train_is_seeded():
    gen = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=gen)
    feats = ImageFeatures(
        image_size=64, color_jitter=0.3, blur=0.5, noise=0.05, occlusion=0.5, shift=0.1
    )
    assert torch.equal(feats.prepare(img, False), feats.prepare(img, False))
    torch.manual_seed(7)
    a = torch.stack([feats.prepare(img, True) for _ in range(4)])
    torch.manual_seed(7)
    b = torch.stack([feats.prepare(img, True) for _ in range(4)])
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    assert a.min() >= -1 and a.max() <= 1


def test_flip_and_shift_move_pixels_as_specified():
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    img[:, 10, 5] = 255  # a single bright pixel
    flip_only = ImageFeatures(image_size=32, flip=True, shift=0.0)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        x = flip_only.prepare(img, True)
        seen.add(tuple(int(v) for v in (x[0] > 0).nonzero()[0]))
    assert seen == {(10, 5), (10, 26)}
    shift_only = ImageFeatures(image_size=32, flip=False, shift=0.1)  # pad 3 px
    offsets = set()
    for seed in range(40):
        torch.manual_seed(seed)
        x = shift_only.prepare(img, True)
        r, c = (int(v) for v in (x[0] > 0).nonzero()[0])
        offsets.add((r - 10, c - 5))
    assert all(abs(dr) <= 3 and abs(dc) <= 3 for dr, dc in offsets) and len(offsets) > 5


def test_augmentations_off_leave_training_input_unchanged():
    img = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    plain = ImageFeatures(image_size=24, flip=False, shift=0.0)
    assert torch.equal(plain.prepare(img, True), plain.prepare(img, False))


def test_occlusion_paints_one_flat_rectangle():
    img = torch.randint(
        0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    occ = ImageFeatures(image_size=32, flip=False, shift=0.0, occlusion=1.0)
    torch.manual_seed(3)
    diff = (occ.prepare(img, True) != occ.prepare(img, False)).any(0)
    rows, cols = diff.nonzero().T
    box = diff[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert box.float().mean() > 0.95  # a filled rectangle (a pixel may equal the fill by chance)
    assert 0.04 * 32 * 32 <= box.numel() <= 0.26 * 32 * 32


def test_input_spec_and_option_errors():
    spec = ImageFeatures(image_size=48).input_spec()
    assert spec["image_size"] == 48 and spec["mean"] == [0.5] * 3 and spec["std"] == [0.5] * 3
    with pytest.raises(ConfigError, match=r"features\.shift"):
        ImageFeatures(shift=0.7)
    with pytest.raises(DataError, match="3 channels"):
        ImageFeatures().prepare(torch.zeros(4, 8, 8, dtype=torch.uint8), False)


def test_registered_through_the_vision_plugin():
    from metaemb.core.plugin.manager import registry

    assert registry("sample_folders").get("image") is ImageFolder
    assert registry("features").get("image") is ImageFeatures


@pytest.mark.parametrize("size", [4, 100_000])
def test_image_sizes_outside_8_to_4096_are_refused_by_name(size):
    """100000 px used to end in a 30 GB allocation traceback at the first batch."""
    from metaemb.core.plugin.components import build

    with pytest.raises(
        ConfigError, match=r"'features.image_size' is out of range \(8 ≤ image_size ≤ 4096"
    ):
        build("features", "image", {"image_size": size})


def test_image_features_take_grey_uint8_and_refuse_other_values_naming_the_image_kind():
    """Grey pixels are repeated to three channels, from a tensor or an array alike; floats and
    16-bit arrays are refused (a cast would wrap or zero them) with what the kind is."""
    from metaemb.plugins.vision.features import to_uint8_chw

    grey = torch.arange(20, dtype=torch.uint8).reshape(4, 5)
    for raw in (grey, grey[None], grey.numpy()):
        out = to_uint8_chw(raw)
        assert out.shape == (3, 4, 5) and torch.equal(out[2], grey)
    bad = (torch.rand(1, 4, 5), np.full((4, 5), 300, np.uint16), np.random.rand(4, 5, 3))
    for raw in bad:
        with pytest.raises(DataError, match=r"expect uint8 pixels.*an `image` sample folder"):
            to_uint8_chw(raw)
    with pytest.raises(DataError, match=r"3 channels first; got a tensor of shape \(4, 5, 1\)"):
        to_uint8_chw(grey[..., None])


def test_tar_shards_given_to_a_folder_of_loose_files_say_so(tmp_path):
    """Shards given to a run trained on loose files were "a data folder that does not exist"
    (a pattern) or "not a folder of <identity>/<image> files" (one .tar) (R6 F9)."""
    for n in range(2):
        (tmp_path / f"train-{n}.tar").write_bytes(b"")
    with pytest.raises(DataError, match=r"is a pattern of files, not a folder\. It names packed "
                       r"files \(tar shards\?\).*--folder"):  # fmt: skip
        ImageFolder(tmp_path / "train-{0..1}.tar")
    with pytest.raises(DataError, match=r"not a folder of <identity>/<image> files\. It names "
                       r"packed files"):  # fmt: skip
        ImageFolder(tmp_path / "train-0.tar")
