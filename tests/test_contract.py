"""The data contract and component options (issue 12 items 1–2): the five failures a plugin
author met, each now a clear error (or working), plus the resolve-time chain checks."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import metaemb
from metaemb.core.config import resolve
from metaemb.core.config.chain import check_scorer
from metaemb.core.data.dataset import PreparedDataset
from metaemb.core.data.pipeline import data_root
from metaemb.core.errors import ConfigError, DataError, PluginError
from metaemb.core.plugin import manager as plugins
from metaemb.core.plugin.components import build
from metaemb.core.plugin.contract import ANY, SAME, Kind, Opt, check_links
from metaemb.core.plugin.interfaces import Backbone, IdentityFrontend, SampleFolder
from metaemb.core.plugin.modality import Modality
from metaemb.core.plugin.options import options_of


class NpyFolder(SampleFolder):
    """[40, T] feature matrices in .npy files: what the issue's plugin author registered."""

    extensions: ClassVar[tuple[str, ...]] = (".npy",)
    yields = Kind("feature-matrix", channels=40)

    def load(self, path: Path) -> torch.Tensor:
        return torch.from_numpy(np.load(path))


class UndeclaredNpyFolder(NpyFolder):
    """The same folder written before the contract: declares nothing, so only run time checks."""

    yields = None


class MatrixNet(Backbone):
    """A plugin backbone that happens to have a `channels` option, like the x-vector."""

    accepts = Kind("feature-matrix")

    def __init__(self, in_channels: int = 40, channels: int = 64) -> None:
        super().__init__()
        self.channels = channels
        self.net = nn.Conv1d(in_channels, channels, 1)
        self.feature_dim = channels

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x).mean(-1)


class MatrixPlugin:
    @metaemb.hookimpl
    def register_sample_folders(self, register):
        register("npy-test", NpyFolder, description="feature matrices")
        register("npy-undeclared", UndeclaredNpyFolder, description="feature matrices")

    @metaemb.hookimpl
    def register_backbones(self, register):
        register("matrixnet", MatrixNet, description="1x1 conv + mean")

    @metaemb.hookimpl
    def register_modalities(self, register):
        # No demo data, no frontend, no features of its own: the built-in "none" ones serve.
        register(
            "matrices",
            Modality(
                name="matrices",
                description="precomputed feature matrices",
                sample_folder="npy-test",
                backbone="matrixnet",
                defaults={"train.epochs": 1},  # features.channels comes from the folder's kind
            ),
        )


@pytest.fixture
def plugin():
    plugins.reset()
    with plugins.plugin_registered(MatrixPlugin(), "matrix-test"):
        yield
    plugins.reset()


@pytest.fixture
def npy_root(tmp_path):
    for spk in ("a", "b"):
        (tmp_path / spk).mkdir()
        for i in range(2):
            np.save(tmp_path / spk / f"u{i}.npy", np.ones((40, 50), dtype=np.float32))
    return tmp_path


# -- the five failures of issue 12 ---------------------------------------------------------------
def test_energy_vad_on_feature_matrices_fails_at_resolve_naming_both(plugin):
    with pytest.raises(ConfigError) as err:
        resolve("speaker", sets=["data.folder=npy-test"])
    msg = str(err.value)
    assert "frontend 'energy'" in msg and "folder 'npy-test'" in msg
    assert "waveform(rate=16000)" in msg and "feature-matrix(channels=40)" in msg


def test_energy_vad_on_feature_matrices_at_run_time_names_the_file(plugin, npy_root):
    """Undeclared folders pass resolve; the VAD then refuses the matrix with the file named
    (it used to die with a bare IndexError)."""
    cfg = resolve("speaker", sets=["data.folder=npy-undeclared"])
    folder = build("sample_folders", "npy-undeclared", {}, root=npy_root)
    frontend = build("frontends", "energy", {}, cache_dir=None)
    features = build("features", "fbank", {})
    ds = PreparedDataset(
        folder, frontend, features, train=False, on_bad_sample=cfg.data.on_bad_sample
    )
    with pytest.raises(DataError) as err:
        ds[0]
    assert "a/u0.npy" in str(err.value) and "frontend 'energy'" in str(err.value)
    assert "[40, 50]" in str(err.value)
    skipping = PreparedDataset(folder, frontend, features, train=False, on_bad_sample="skip")
    assert "a/u0.npy" in skipping[0].error  # skipped samples are listed by path


def test_fbank_refuses_a_feature_matrix_instead_of_flattening_it(plugin):
    with pytest.raises(ConfigError) as err:
        resolve("speaker", sets=["data.folder=npy-test", "model.frontend=none"])
    msg = str(err.value)
    assert "features 'fbank'" in msg and "folder 'npy-test' (through frontend 'none')" in msg
    # at run time (an undeclared folder): a DataError, never a silently reshaped [32000] wave
    feats = build("features", "fbank", {})
    with pytest.raises(DataError, match=r"features 'fbank' expects a mono waveform.*\[40, 200\]"):
        feats.prepare(torch.zeros(40, 200), train=False)


def test_modality_backbone_options_do_not_leak_into_another_backbone(plugin):
    cfg = resolve(
        "speaker",
        sets=[
            "data.folder=npy-test",
            "model.frontend=none",
            "model.features=none",
            "model.backbone=matrixnet",
        ],
    )
    assert cfg.options("backbone") == {}  # the x-vector's channels=256 stays with the x-vector
    assert cfg.options("features") == {"channels": 40}  # from the folder's feature-matrix kind
    assert build("backbones", "matrixnet", cfg.options("backbone"), in_channels=40).channels == 64
    assert resolve("speaker").options("backbone")["channels"] == 256  # still the x-vector's
    ecapa = resolve("speaker", sets=["model.backbone=ecapa512"])
    assert "embedding_dim" not in ecapa.options("backbone")  # ECAPA keeps its 192


def test_a_modality_needs_no_demo_data_features_or_frontend(plugin, npy_root):
    cfg = resolve("matrices", sets=[f"data.root={npy_root}"])
    assert (cfg.model.frontend, cfg.model.features) == ("none", "none")
    assert cfg.options("features") == {"channels": 40}
    folder = build("sample_folders", "npy-test", {}, root=npy_root)
    features = build("features", "none", cfg.options("features"))
    ds = PreparedDataset(folder, IdentityFrontend(), features, train=True)
    x, label, _ = ds[0]
    assert x.shape == (40, 50) and label == 0
    net = build("backbones", "matrixnet", {}, in_channels=features.out_channels)
    assert net(torch.stack([x, x])).shape == (2, 64)
    cfg.data.root = ""
    with pytest.raises(ConfigError, match="no built-in demo dataset; pass --data"):
        data_root(cfg)
    with pytest.raises(PluginError, match="names no backbone"):
        Modality(name="x", description="", sample_folder="npy-test")


def test_internal_constructor_arguments_are_not_options():
    assert "samples" not in options_of(plugins.registry("sample_folders").get("image"))
    with pytest.raises(ConfigError, match=r"unknown config key 'folder\.samples'"):
        resolve("face", sets=["folder.samples=[1,2]"])


# -- chain checks ---------------------------------------------------------------------------------
def test_head_objective_scorer_fit():
    with pytest.raises(ConfigError, match="objective 'gme-bxe' accepts gme, but head 'linear'"):
        resolve("face", sets=["train.objective=gme-bxe"])
    with pytest.raises(ConfigError, match="scorer 'gme' accepts gme, but head 'linear' yields"):
        resolve("face", sets=["eval.scorer=gme"])
    with pytest.raises(ConfigError, match="backbone 'xvector' accepts feature-matrix, but "):
        resolve("face", sets=["model.backbone=xvector"])
    cfg = resolve("face", sets=["model.head=gme", "train.objective=gme-bxe"])
    assert cfg.eval.scorer == "gme"


def test_sample_rate_has_one_source_of_truth():
    cfg = resolve("speaker", sets=["folder.sample_rate=8000"])
    assert cfg.options("frontend")["sample_rate"] == 8000
    assert cfg.options("features")["fbank"]["sample_rate"] == 8000
    with pytest.raises(ConfigError) as err:  # contradicting values the user set: refused
        resolve("speaker", sets=["folder.sample_rate=8000", "frontend.sample_rate=16000"])
    assert "set folder.sample_rate and frontend.sample_rate to the same value" in str(err.value)


def test_kinds_compare_only_given_parameters():
    assert Kind("waveform", rate=8000).fits(Kind("waveform"))
    assert not Kind("waveform", rate=8000).fits(Kind("waveform", rate=16000))
    assert Kind("image").fits(ANY) and not Kind("image").fits(Kind("waveform"))
    bound = Kind("waveform", rate=Opt("fbank.sample_rate")).bind({"fbank": {"sample_rate": 8000}})
    assert bound == Kind("waveform", rate=8000) and str(bound) == "waveform(rate=8000)"
    check_links([])  # an empty chain is fine
    assert SAME != ANY


def test_one_kind_spelt_two_ways_is_pointed_out():
    from metaemb.core.plugin.contract import Link

    links = [Link("features", "mine", None, (Kind("timing-matrix", channels=3),)),
             Link("backbone", "theirs", (Kind("timing_matrix"),), None)]  # fmt: skip
    with pytest.raises(ConfigError, match=r"'timing_matrix' and 'timing-matrix' look like one "
                       r"kind spelt two ways"):  # fmt: skip
        check_links(links)


def test_a_parameter_fixed_in_both_declarations_gets_advice_too():
    """channels=3 against channels=6, neither bound to an option, ended at 'they do not fit.'"""
    from metaemb.core.plugin.contract import Link

    links = [Link("features", "imu", None, (Kind("imu-matrix", channels=6),)),
             Link("backbone", "bad-bb", (Kind("imu-matrix", channels=3),), None)]  # fmt: skip
    with pytest.raises(ConfigError, match=r"they do not fit. The two declare imu-matrix "
                       r"differently \(channels: features 6, backbone 3\). Choose"):  # fmt: skip
        check_links(links)


def test_nested_part_tables_and_name_key():
    cfg = resolve(
        "speaker",
        sets=["scorer.name=asnorm", "scorer.base.name=plda", "scorer.base.lda_dim=64"],
    )
    assert cfg.eval.scorer == "asnorm"
    assert cfg.options("scorer") == {"base": {"name": "plda", "lda_dim": 64}}
    assert "[scorer.base]" in cfg.to_toml()
    with pytest.raises(ConfigError, match=r"unknown config key 'scorer\.base\.top_n'"):
        resolve("speaker", sets=["scorer.name=asnorm", "scorer.base.top_n=3"])


def test_evaluate_scorer_override_must_fit_the_head():
    cfg = resolve("face")
    with pytest.raises(ConfigError, match="scorer 'gme' accepts gme, but head 'linear' yields"):
        check_scorer(cfg, "gme")
    check_scorer(cfg, "asnorm", {"base": {"name": "plda"}})  # a point scorer fits


def test_a_file_only_quoted_inside_a_library_error_is_still_named_first():
    """A frontend's KeyError('s01_L/3.png') (a missing table row) named the file only inside the
    quoted error, so the message read 'failed on it' with nothing before it (P21 F5)."""
    from metaemb.core.errors import DataError
    from metaemb.core.plugin.contract import name_file

    bare = DataError("frontend 'x' failed on it in its __call__: KeyError: 's01_L/3.png'")
    assert str(name_file(bare, "s01_L/3.png")).startswith("'s01_L/3.png': frontend 'x'")
    named = DataError("image '/data/s01_L/3.png' is corrupt: truncated")
    assert name_file(named, "s01_L/3.png") is named


def test_a_slow_run_shows_its_throughput_not_zero():
    """0.4 samples/s was printed '0 samples/s', as if nothing was processed (P21 F7)."""
    from metaemb.core.train.summary import rate_text

    assert rate_text(0.4) == "0.4 samples/s" and rate_text(123.4) == "123 samples/s"
    assert rate_text(0.04) == "25 s/sample"  # printed "0.0 samples/s" (R11 F11e)
