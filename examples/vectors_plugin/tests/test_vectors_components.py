"""The vectors plugin's components, one kind at a time: what each receives, returns and refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metaemb_vectors.backbones import IdentityBackbone, VectorMLP
from metaemb_vectors.features import VectorFeatures
from metaemb_vectors.folder import NpyFolder, NpyMatrixFolder

from metaemb.core import ConfigError, DataError


# -- sample folder -------------------------------------------------------------------------------
def test_folder_scans_identities_and_loads_float32_vectors(demo):
    folder = NpyFolder(demo)
    assert folder.num_identities == 12 and len(folder) == 60
    assert folder.samples[0].path == "id00/000.npy" and folder.samples[0].identity == "id00"
    x, label = folder[7]
    expected = np.load(demo / folder.samples[7].path)
    assert x.dtype == torch.float32 and x.shape == (32,) and label == 1
    assert torch.equal(x, torch.from_numpy(expected))
    train, val = folder.split(0.25, seed=0)
    assert not set(train.identities) & set(val.identities)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.zeros((4, 8), np.float32), "shape (4, 8)"),
        (np.array([1.0, np.nan], np.float32), "NaN or infinite"),
        (np.array(["a", "b"]), "not numbers"),
        (np.zeros(0, np.float32), "is empty"),
        (np.array([{"x": 1}], dtype=object), "not a readable .npy"),
        (b"not an npy file", "not a readable .npy"),
    ],
)
def test_unusable_files_are_data_errors_naming_the_file(demo, content, message):
    bad = demo / "id03" / "bad.npy"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        np.save(bad, content, allow_pickle=True)
    folder = NpyFolder(demo)
    index = next(i for i, s in enumerate(folder.samples) if s.path == "id03/bad.npy")
    with pytest.raises(DataError, match=r"bad\.npy") as err:
        folder[index]
    assert message in str(err.value)


def test_matrix_folder_loads_channels_by_frames_and_transposes_kaldi_order(tmp_path):
    m = np.arange(12, dtype=np.float64).reshape(3, 4)  # [channels, frames]
    for ident in ("a", "b"):
        (tmp_path / ident).mkdir()
        np.save(tmp_path / ident / "x.npy", m)
    x, _ = NpyMatrixFolder(tmp_path)[0]
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(m).float())
    y, _ = NpyMatrixFolder(tmp_path, transpose=True)[0]
    assert torch.equal(y, torch.from_numpy(m.T).float())
    np.save(tmp_path / "b" / "flat.npy", np.ones(5))
    folder = NpyMatrixFolder(tmp_path)
    index = next(i for i, s in enumerate(folder.samples) if s.path == "b/flat.npy")
    with pytest.raises(DataError, match=r"flat\.npy.*2-D \[channels, frames\]"):
        folder[index]


# -- features ------------------------------------------------------------------------------------
def test_features_check_the_size_and_say_which_option_to_set():
    f = VectorFeatures(size=32)
    assert f.out_channels == 32
    assert f.prepare(torch.ones(32), train=False).shape == (32,)
    with pytest.raises(DataError, match=r"features\.size=20"):
        f.prepare(torch.ones(20), train=False)
    with pytest.raises(DataError, match="1-D vectors"):
        f.prepare(torch.ones(40, 8), train=False)  # a feature matrix is not silently flattened
    with pytest.raises(ConfigError, match=r"features\.size"):
        VectorFeatures(size=0)


def test_features_noise_only_in_training_and_length_norm_is_exact():
    torch.manual_seed(0)
    f = VectorFeatures(size=4, noise=0.1)
    v = torch.tensor([3.0, 0.0, 4.0, 0.0])
    assert torch.equal(f.prepare(v, train=False), v)
    assert not torch.equal(f.prepare(v, train=True), v)
    g = VectorFeatures(size=4, length_norm=True)
    x, lengths = g(torch.stack([v, 2 * v]))
    assert lengths is None
    expected = torch.tensor([0.6, 0.0, 0.8, 0.0]) * 2.0  # unit length × √dim
    assert torch.allclose(x, expected.expand(2, 4))
    assert g.input_spec() == {"kind": "vector", "size": 4, "length_norm": True}


# -- backbones -----------------------------------------------------------------------------------
def test_backbones_return_pooled_features_of_their_declared_width():
    x = torch.randn(5, 32)
    mlp = VectorMLP(in_channels=32, hidden=24, layers=2)
    assert mlp(x).shape == (5, mlp.feature_dim) == (5, 24)
    ident = IdentityBackbone(in_channels=32)
    assert ident.feature_dim == 32 and torch.equal(ident(x), x)
    assert VectorMLP(in_channels=32, layers=0)(x).shape == (5, 128)
    with pytest.raises(ConfigError, match="hidden"):
        VectorMLP(in_channels=32, hidden=0)
