"""Mistakes a third-party plugin author makes, each stopped with the component (and plugin)
named instead of a tensor error from deep inside PyTorch or a silently wrong number: a plugin
"series" modality written against docs/plugins.md, with one broken variant per mistake."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from helpers import run_cli
from torch import nn

import metaemb
from metaemb.core.config import resolve
from metaemb.core.data.dataset import PreparedDataset, checked_values
from metaemb.core.data.pipeline import data_root
from metaemb.core.data.samplers import RandomSampler
from metaemb.core.errors import (
    ConfigError,
    DataError,
    MetaembError,
    PluginError,
    UnknownComponentError,
)
from metaemb.core.eval.measures import groups_matrix
from metaemb.core.plugin import manager as plugins
from metaemb.core.plugin.components import build
from metaemb.core.plugin.interfaces import (
    Augmentation,
    Backbone,
    Features,
    Head,
    IdentityFrontend,
    SampleFolder,
)
from metaemb.core.plugin.modality import Modality
from metaemb.core.scoring.cosine import CosineScorer
from metaemb.core.scoring.scorers import PointScorer
from metaemb.core.train.checks.determinism import warn_if_not_deterministic
from metaemb.core.train.checks.first_batch import check_first_batch, check_head_output
from metaemb.core.train.checks.nonfinite import nonfinite_stage
from metaemb.core.train.checks.objective import check_loss, check_objective_parameters
from metaemb.core.train.model import EmbeddingModel
from metaemb.core.train.objectives.softmax import SoftmaxObjective


class SeriesFolder(SampleFolder):
    """[T, 3] sensor series in .npy files."""

    extensions: ClassVar[tuple[str, ...]] = (".npy",)

    def load(self, path: Path) -> np.ndarray:
        return np.load(path)


class SeriesFeatures(Features):
    """[T, 3] array → [3, T] float tensor, standardised per sample."""

    out_channels = 3

    def prepare(self, raw, train):
        x = torch.from_numpy(np.asarray(raw)).T
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)

    def collate(self, items):
        lengths = torch.tensor([x.shape[-1] for x in items])
        batch = torch.zeros(len(items), 3, int(lengths.max()))
        for i, x in enumerate(items):
            batch[i, :, : x.shape[-1]] = x
        return batch, lengths


class NoChannels(SeriesFeatures):
    """The mistake: out_channels left at the base class's 1."""

    out_channels = 1


class Double(SeriesFeatures):
    """Returns float64 (numpy's default) from prepare: narrowed, not a crash."""

    def prepare(self, raw, train):
        return super().prepare(raw, train).double()


class NanFeatures(SeriesFeatures):
    """Divides by zero in forward: NaN from finite input."""

    def forward(self, x, lengths=None):
        return x / 0.0 * 0.0, lengths


class ConvNet(Backbone):
    def __init__(self, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        self.conv = nn.Conv1d(in_channels, width, 3, padding=1)
        self.feature_dim = width

    def forward(self, x, lengths=None):
        h = self.conv(x)  # zero padding: valid steps see what they would see alone
        if lengths is None:
            return h.mean(-1)
        mask = (torch.arange(h.shape[-1])[None, :] < lengths[:, None]).float()[:, None, :]
        return (h * mask).sum(-1) / lengths[:, None].float()


class PoolsPadding(ConvNet):
    """The mistake: pools over padded steps too."""

    def forward(self, x, lengths=None):
        return self.conv(x).mean(-1)


class UnpooledBaseline(SeriesFeatures):
    """The mistake: a baseline that keeps the time axis ([N, C, T], not one vector each)."""

    def baseline_embedding(self, x, lengths=None):
        return self(x, lengths)[0]


class BareTensor(SeriesFeatures):
    """The mistake: forward returns the tensor without the lengths."""

    def forward(self, x, lengths=None):
        return x


class Transposed(SeriesFeatures):
    """The mistake: [N, T, C] instead of [N, C, T]."""

    def forward(self, x, lengths=None):
        return x.transpose(1, 2), lengths


class LongLengths(SeriesFeatures):
    """The mistake: lengths counted past the padding (pooling then reads padding)."""

    def collate(self, items):
        x, lengths = super().collate(items)
        return x, lengths + 5


class ZeroLength(SeriesFeatures):
    """The mistake: an item of no valid steps (pooling divides by zero)."""

    def collate(self, items):
        x, lengths = super().collate(items)
        lengths[0] = 0
        return x, lengths


class Unpooled(ConvNet):
    def forward(self, x, lengths=None):
        return self.conv(x)  # [N, C, T]: forgot to pool


class WrongDim(ConvNet):
    def __init__(self, in_channels: int = 3, width: int = 8) -> None:
        super().__init__(in_channels, width)
        self.feature_dim = width + 1  # declares one more than it gives


class NoDim(nn.Module):
    """A backbone that never sets feature_dim."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, 4, 3)

    def forward(self, x, lengths=None):
        return self.conv(x).mean(-1)


class SeriesPlugin:
    @metaemb.hookimpl
    def register_sample_folders(self, register):
        register("series", SeriesFolder)

    @metaemb.hookimpl
    def register_features(self, register):
        for name, cls in [("series", SeriesFeatures), ("nochannels", NoChannels)]:
            register(name, cls)
        register("double", Double)
        register("nanfeat", NanFeatures)
        register("bare", BareTensor)
        register("unpooledbase", UnpooledBaseline)
        register("transposed", Transposed)
        register("longlengths", LongLengths)
        register("zerolength", ZeroLength)

    @metaemb.hookimpl
    def register_backbones(self, register):
        for name, cls in [("conv", ConvNet), ("unpooled", Unpooled), ("wrongdim", WrongDim)]:
            register(name, cls)
        register("nodim", NoDim)
        register("poolspadding", PoolsPadding)

    @metaemb.hookimpl
    def register_modalities(self, register):
        register(
            "series",
            Modality(
                name="series",
                description="sensor series for the mistakes test",
                sample_folder="series",
                features="series",
                backbone="conv",
                defaults={"train.epochs": 1, "model.dim": 8, "train.batch_size": 8},
            ),
        )


@pytest.fixture
def plugin():
    plugins.reset()
    with plugins.plugin_registered(SeriesPlugin(), "series-test"):
        yield
    plugins.reset()


@pytest.fixture
def series(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(6):
        (tmp_path / "data" / f"id{k}").mkdir(parents=True)
        for i in range(4):
            t = np.arange(40 + 3 * i)[:, None]
            x = np.sin(t * (0.1 + 0.05 * k) + np.arange(3)) + 0.1 * rng.standard_normal((len(t), 3))
            np.save(tmp_path / "data" / f"id{k}" / f"{i}.npy", x)
    return tmp_path / "data"


def train(tmp_path, series, capsys, *sets):
    args = ["train", "--modality", "series", "--data", series, "--runs", tmp_path / "runs"]
    args += ["--workers", "0", "--device", "cpu"]
    for s in sets:
        args += ["--set", s]
    return run_cli(args, capsys)


def test_a_correct_plugin_trains(plugin, tmp_path, series, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # masks its padding: no leak warning
        code, _, err = train(tmp_path, series, capsys)
    assert code == 0, err
    run = next((tmp_path / "runs" / "series").glob("run-*"))
    assert (run / "best.pt").exists()
    # No baseline_name: named after the default baseline it used (sequences: mean+std).
    assert json.loads((run / "baseline.json").read_text())["name"] == "input mean+std over time"
    # On a machine without the plugin, opening the run names the plugin it needs.
    from metaemb.core.checkpoints import load_checkpoint

    assert load_checkpoint(run / "best.pt")["plugins"]["features"].startswith("series-test ")
    plugins.reset()  # the in-process plugin is gone, as on a machine that lacks it
    code, _, err = run_cli(["embed", run, series, "--out", tmp_path / "e.pt"], capsys)
    message = " ".join(err.split())
    assert code == 2 and "was trained with plugin series-test" in message
    assert "which is not installed here (or is disabled)" in message


@pytest.mark.parametrize(
    ("sets", "fragments"),
    [
        (
            ["model.features=nochannels"],
            ["backbone 'conv' (plugin 'series-test') failed", "out_channels = 1", "3 channels"],
        ),
        (["model.backbone=unpooled"], ["backbone 'unpooled' (plugin 'series-test')", "pooled"]),
        (["model.backbone=wrongdim"], ["backbone 'wrongdim'", "[8, 9]"]),
        (["model.backbone=nodim"], ["backbone 'nodim' (plugin 'series-test')", "feature_dim"]),
        (["backbone.width=-1"], ["backbone 'conv' (plugin 'series-test')", "width=-1"]),
        (["model.features=nanfeat"], ["features 'nanfeat' (plugin 'series-test')", "NaN"]),
        (
            ["model.features=bare"],
            ["features 'bare' (plugin 'series-test')", "must return (tensor, lengths or None)"],
        ),
        (
            ["model.features=unpooledbase"],
            [
                "features 'unpooledbase' (plugin 'series-test'): its baseline_embedding gave [",
                "it must give one vector per sample, [N, d]",
            ],
        ),
        (
            ["model.features=longlengths"],
            [
                "features 'longlengths' (plugin 'series-test'): collate returned lengths from",
                "each length counts one item's valid steps, 1 to",
            ],
        ),
        (
            ["model.features=zerolength"],
            ["features 'zerolength' (plugin 'series-test'): collate returned lengths from 0"],
        ),
        (
            ["model.features=transposed"],
            [
                "features 'transposed' (plugin 'series-test'): forward returned lengths from",
                "They fit axis 1: the steps must be the last axis",
                "transpose",
            ],
        ),
    ],
)
def test_each_mistake_names_its_component(plugin, tmp_path, series, capsys, sets, fragments):
    code, _, err = train(tmp_path, series, capsys, *sets)
    message = " ".join(err.split())
    assert code != 0 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in message, message


def test_a_backbone_pooling_over_padding_is_warned_about(plugin, tmp_path, series, capsys):
    with pytest.warns(UserWarning, match=r"backbone 'poolspadding'.*padding leaks") as caught:
        code, _, err = train(tmp_path, series, capsys, "model.backbone=poolspadding")
    assert code == 0, err
    assert len([w for w in caught if "padding leaks" in str(w.message)]) == 1  # once a run


def test_padding_leaks_are_found_when_training_crops_have_one_length(plugin):
    """Fixed-length training crops have no padding to compare; evaluation pads, so the check
    pads a sample itself, also when collate gives lengths None as docs/plugins.md allows (the
    check never ran then). A backbone that masks passes."""
    cfg = resolve("series", sets=["model.backbone=poolspadding"])
    x, lengths = torch.randn(4, 3, 12), torch.full((4,), 12)
    leaky = EmbeddingModel(SeriesFeatures(), PoolsPadding(), nn.Linear(8, cfg.model.dim))
    for given in (lengths, None):  # None: a collate that says "nothing was padded"
        with pytest.warns(UserWarning, match=r"backbone 'poolspadding'.*padding leaks"):
            check_first_batch(leaky, cfg, x, given)
    masked = EmbeddingModel(SeriesFeatures(), ConvNet(), nn.Linear(8, cfg.model.dim))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for given in (lengths, None):
            check_first_batch(masked, resolve("series"), x, given)


def test_padding_leaks_are_found_behind_features_that_trim_a_batch_to_its_longest(plugin):
    """The speaker fbank cuts a batch to its longest length: the one sample the check padded
    alone was cut back, compared with itself and passed (C1 F4)."""

    class Trimming(SeriesFeatures):
        def forward(self, x, lengths=None):
            if lengths is not None:
                x = x[..., : int(lengths.max())]
            return super().forward(x, lengths)

    cfg = resolve("series", sets=["model.backbone=poolspadding"])
    x, lengths = torch.randn(4, 3, 12), torch.full((4,), 12)
    leaky = EmbeddingModel(Trimming(), PoolsPadding(), nn.Linear(8, cfg.model.dim))
    with pytest.warns(UserWarning, match=r"backbone 'poolspadding'.*padding leaks"):
        check_first_batch(leaky, cfg, x, lengths)
    masked = EmbeddingModel(Trimming(), ConvNet(), nn.Linear(8, cfg.model.dim))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_first_batch(masked, resolve("series"), x, lengths)


def test_features_dropping_lengths_are_found_when_training_crops_have_one_length(plugin):
    """Features whose forward returns lengths None, with crops of one length (collate gave
    lengths None): taken for fixed-size features, and evaluation embeddings then depended on
    their batch neighbours (P15 F11). Their collate pads items of two lengths, so they are
    sequences, and a masking backbone behind them still leaks."""

    class DropsLengths(SeriesFeatures):
        def forward(self, x, lengths=None):
            return super().forward(x, lengths)[0], None

    cfg = resolve("series")
    x = torch.randn(4, 3, 12)
    model = EmbeddingModel(DropsLengths(), ConvNet(), nn.Linear(8, cfg.model.dim))
    with pytest.warns(UserWarning, match=r"padding leaks.*The features returned lengths None "
                      r"for a padded batch"):  # fmt: skip
        check_first_batch(model, cfg, x, None)


def test_unscaled_inputs_reaching_the_backbone_are_warned_about(plugin):
    """Raw 16-bit pixels (values of 1e5 after normalisation) trained without a word."""
    cfg = resolve("series")
    model = EmbeddingModel(SeriesFeatures(), ConvNet(3, 8), nn.Linear(8, cfg.model.dim))
    x, lengths = torch.randn(4, 3, 20) * 5e4, torch.full((4,), 20)

    class Raw(SeriesFeatures):
        def forward(self, x, lengths=None):
            return x, lengths  # the mistake: no scaling anywhere

    model.features = Raw()
    with pytest.warns(UserWarning, match=r"gives the backbone values up to .*e\+0[45].*Scale it"):
        check_first_batch(model, cfg, x, lengths)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_first_batch(model, cfg, x / 5e4, lengths)


def test_a_frontend_that_is_not_deterministic_is_warned_about(plugin, series):
    """A frontend adding random noise gave every evaluation other numbers, unexplained."""
    from types import SimpleNamespace

    cfg = resolve("series")
    folder = build("sample_folders", "series", {}, root=series)

    def noisy(raw, path, root):
        return torch.as_tensor(np.asarray(raw)) + torch.randn(np.asarray(raw).shape)

    with pytest.warns(UserWarning, match=r"frontend 'none' \(plugin 'core'\) gave two different"):
        warn_if_not_deterministic(SimpleNamespace(folder=folder, frontend=noisy), cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steady = SimpleNamespace(folder=folder, frontend=IdentityFrontend(),
                                 features=SeriesFeatures())  # fmt: skip
        warn_if_not_deterministic(steady, cfg)

    class EvalNoise(SeriesFeatures):  # the noise is not under `if train:`
        def prepare(self, raw, train):
            x = super().prepare(raw, train)
            return x + 0.3 * torch.randn_like(x)

    noisy_eval = SimpleNamespace(folder=folder, frontend=IdentityFrontend(), features=EvalNoise())
    with pytest.warns(UserWarning, match=r"features 'series' \(plugin 'series-test'\) prepared "
                      r"the same file .* twice with train=False and gave two different"):  # fmt: skip
        warn_if_not_deterministic(noisy_eval, cfg)

    class SteadyNaN(SeriesFeatures):  # deterministic, with a NaN: reported as NaN elsewhere
        def prepare(self, raw, train):
            x = super().prepare(raw, train).clone()
            x[0, 0] = float("nan")
            return x

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nan = SimpleNamespace(folder=folder, frontend=IdentityFrontend(), features=SteadyNaN())
        warn_if_not_deterministic(nan, cfg)


def test_float64_samples_are_narrowed_and_nan_samples_named(plugin, series):
    assert checked_values(torch.ones(3, dtype=torch.float64)).dtype == torch.float32
    assert checked_values(torch.ones(3, dtype=torch.uint8)).dtype == torch.uint8  # left as is
    folder = build("sample_folders", "series", {}, root=series)
    ds = PreparedDataset(folder, IdentityFrontend(), Double(), train=False)
    assert ds[0][0].dtype == torch.float32
    np.save(series / "id0" / "0.npy", np.ones((40, 3)))  # constant: std 0 → NaN after prepare
    bad = PreparedDataset(folder, IdentityFrontend(), SeriesFeatures(), train=False)
    with pytest.raises(DataError, match=r"'id0/0.npy'.*prepared by features SeriesFeatures "
                       r"hold NaN or inf"):  # fmt: skip
        bad[0]
    skip = PreparedDataset(folder, IdentityFrontend(), SeriesFeatures(), False, "skip")
    assert skip[0].path == "id0/0.npy"
    # a frontend that shortens time (differences: T → T − 1) left no step of a 1-row sample:
    # named with its file and skippable, not a collate error naming no file (P19 F1)
    np.save(series / "id0" / "0.npy", np.ones((3, 1)))

    class Differences:
        def __call__(self, raw, path, root):
            return np.diff(raw, axis=1)

    empty = PreparedDataset(folder, Differences(), Double(), train=False)
    with pytest.raises(DataError, match=r"'id0/0.npy'.*prepared by features Double as an empty "
                       r"tensor \(shape \[0, 3\]\)"):  # fmt: skip
        empty[0]
    assert PreparedDataset(folder, Differences(), Double(), False, "skip")[0].path == "id0/0.npy"


def test_features_failing_on_one_file_name_it_and_are_skipped_like_a_bad_file(plugin, series):
    """An IndexError in prepare (no heartbeat found in a short record) was a raw traceback
    naming neither the file nor the features, and --on-bad-sample skip did not skip it."""

    class NoPeak(SeriesFeatures):
        def prepare(self, raw, train):
            return torch.as_tensor(raw)[:, np.flatnonzero(raw[0] > 99)[0]]

    folder = build("sample_folders", "series", {}, root=series)
    failing = PreparedDataset(folder, IdentityFrontend(), NoPeak(), train=False)
    with pytest.raises(DataError, match=r"'id0/0.npy'.*features NoPeak failed on it in prepare: "
                       r"IndexError.*\(with on_bad_sample='skip' it is skipped: train --on-bad-sample "
                       r"skip\)\.$"):  # fmt: skip
        failing[0]
    skip = PreparedDataset(folder, IdentityFrontend(), NoPeak(), False, "skip")
    assert skip[0].path == "id0/0.npy" and "IndexError" in skip[0].error
    # ... but an error of the code (a misspelt attribute) is no bad file: under skip it left a
    # quarter of the data out of training without a word beyond skipped.txt (P20 F3)

    class Misspelt(SeriesFeatures):
        def prepare(self, raw, train):
            return torch.as_tensor(raw).numpyy()

    from metaemb.core.errors import PluginError

    for policy in ("error", "skip"):
        bug = PreparedDataset(folder, IdentityFrontend(), Misspelt(), False, policy)
        with pytest.raises(PluginError, match=r"Misspelt failed in prepare: AttributeError.*"
                           r"error in its code, not in the file"):  # fmt: skip
            bug[0]

    # ... while a library's AttributeError on a damaged file (a corrupt pickle) is a bad file
    # still, skipped under skip (R10 F5)
    class Unpickles(SeriesFeatures):
        def prepare(self, raw, train):
            import pickle

            return pickle.loads(b"\x80\x04\x95\x13\x00\x00\x00\x00\x00\x00\x00\x8c"
                                b"\x08builtins\x8c\x05nosuc\x93.")  # fmt: skip

    damaged = PreparedDataset(folder, IdentityFrontend(), Unpickles(), False, "skip")
    assert "AttributeError" in damaged[0].error


def test_a_network_failing_on_an_evaluation_batch_names_the_files(plugin, series):
    """A backbone refusing a batch of one (training used full batches) was a raw traceback in
    `embed`; and when every sample was skipped, the message did not say why."""
    from metaemb.core.data.embed import extract

    folder = build("sample_folders", "series", {}, root=series)
    ds = PreparedDataset(folder, IdentityFrontend(), SeriesFeatures(), train=False)
    ds.indices = [0]

    def one_refused(x, lengths):
        raise RuntimeError("batch of one not supported")

    with pytest.raises(MetaembError, match=r"the network failed embedding a batch of 1 "
                       r"\('id0/0.npy', inputs \[1, 3, \d+\]\): RuntimeError: batch of one"):  # fmt: skip
        extract(one_refused, ds, "cpu")

    class Always(SeriesFeatures):
        def prepare(self, raw, train):
            raise DataError("no heartbeat found")

    skipped = PreparedDataset(folder, IdentityFrontend(), Always(), False, "skip")
    with pytest.raises(DataError, match=r"could be read and prepared\. First: 'id0/0.npy': .*no "
                       r"heartbeat found"):  # fmt: skip
        extract(lambda x, lengths: x, skipped, "cpu")


def test_features_that_flatten_their_time_axis_are_told_so_not_to_set_out_channels(plugin):
    """[N, 3, 12] flattened to [N, 36] got the hint 'set out_channels' (to 36), which would
    build a backbone for 36 channels of length 1 and train on nonsense."""
    cfg = resolve("series")

    class Flat(SeriesFeatures):
        def forward(self, x, lengths=None):
            return x.flatten(1), None

    model = EmbeddingModel(Flat(), ConvNet(), nn.Linear(8, cfg.model.dim))
    with pytest.raises(ConfigError, match=r"rank-2 batch \[batch, 36\] and declare out_channels = "
                       r"3: the other axis is missing or flattened \(36 = 3 × 12\?\)"):  # fmt: skip
        check_first_batch(model, cfg, torch.randn(4, 3, 12), None)


def test_a_loss_that_is_not_a_scalar_is_refused(plugin):
    cfg = resolve("series")
    with pytest.raises(ConfigError, match=r"objective 'softmax' \(plugin 'core'\).*scalar"):
        check_loss(torch.ones(4), cfg)
    check_loss(torch.ones(3, requires_grad=True).mean(), cfg)
    rebuilt = torch.tensor(float(torch.ones(3, requires_grad=True).mean()))  # gradient lost
    with pytest.raises(ConfigError, match=r"objective 'softmax' \(plugin 'core'\).*no gradient"):
        check_loss(rebuilt, cfg)
    # a new leaf that "requires grad" is a number too: no gradient reaches the weights
    relabelled = torch.tensor(rebuilt.item(), requires_grad=True)
    with pytest.raises(ConfigError, match=r"objective 'softmax' \(plugin 'core'\).*no gradient"):
        check_loss(relabelled, cfg)
    with torch.no_grad():  # evaluation-time losses need none
        check_loss(torch.tensor(1.0), cfg)


def test_an_objective_holding_its_own_weights_is_refused(plugin):
    """Class weights kept in the objective (not in build_classifier) were neither trained nor
    saved, silently; the classifier's weights and a frozen module (a teacher) are fine."""
    cfg = resolve("series")

    class OwnWeights(SoftmaxObjective):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 8))

    classifier = nn.Linear(8, 4)
    with pytest.raises(ConfigError, match=r"objective 'softmax'.*parameters of its own \(weight\)"):
        check_objective_parameters(OwnWeights(), classifier, cfg)
    fine = SoftmaxObjective()
    fine.head = classifier  # an objective that keeps the classifier it built
    fine.teacher = nn.Linear(8, 8).requires_grad_(False)
    check_objective_parameters(fine, classifier, cfg)


def test_a_gme_head_with_negative_precisions_is_refused(plugin):
    """b is a precision: a head whose b layer lacks its softplus would score with negative
    precisions, silently (the first batch is checked)."""
    from metaemb.core.gme.algebra import GME

    cfg = resolve("series", sets=["model.head=gme", "train.objective=gme-bxe"])
    head = type("NegB", (), {"output": "gme"})()
    a, b = torch.randn(4, cfg.model.dim), torch.rand(4, cfg.model.dim)
    check_head_output(head, GME(a, b), cfg, 4, torch.float32)  # b ≥ 0: fine
    negative = b.clone()
    negative[1] = -1.0  # one sample of four
    with pytest.raises(ConfigError, match=r"head 'gme'.*negative precisions b \(25%.*softplus"):
        check_head_output(head, GME(a, negative), cfg, 4, torch.float32)


def test_nan_from_diverged_weights_blames_the_optimisation_not_a_component(plugin):
    cfg = resolve("series")
    net = EmbeddingModel(SeriesFeatures(), ConvNet(), nn.Linear(8, 4))
    x = torch.randn(2, 3, 10)
    assert nonfinite_stage(net, cfg, x, None) is None  # all finite
    with torch.no_grad():
        net.backbone.conv.weight.fill_(float("nan"))
    assert nonfinite_stage(net, cfg, x, None) is None  # weights diverged
    net = EmbeddingModel(NanFeatures(), ConvNet(), nn.Linear(8, 4))
    assert "features 'series'" in nonfinite_stage(net, cfg, x, None)


def test_default_baseline_is_masked_mean_and_std(plugin):
    x = torch.randn(2, 3, 7)
    lengths = torch.tensor([7, 4])
    got = Features.baseline_embedding(SeriesFeatures(), x, lengths)
    for i, n in enumerate(lengths.tolist()):
        v = x[i, :, :n].numpy()
        want = np.concatenate([v.mean(1), v.std(1)])
        np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-5, atol=1e-6)


def test_a_plain_scorer_classifies_by_averaging_its_scores():
    class Neg(metaemb.core.Scorer):
        def score_matrix(self, enroll, test):
            return -torch.cdist(enroll, test)

    emb = torch.randn(6, 4)
    groups, probes = [[0, 1], [2, 3, 4]], emb[[5, 0]]
    got = groups_matrix(Neg(), emb, groups, probes)
    want = torch.stack([-torch.cdist(emb[g], probes).mean(0) for g in groups])
    torch.testing.assert_close(got, want)
    assert isinstance(CosineScorer(), PointScorer)  # point scorers pool their own way
    pooled = groups_matrix(CosineScorer(), emb, groups, probes)
    assert pooled.shape == (2, 2)


class RaisingHook:
    @metaemb.hookimpl
    def register_backbones(self, register):
        register("half-made", ConvNet)
        raise RuntimeError("boom in the hook")


def test_a_raising_hook_is_reported_by_plugin_and_its_half_registrations_dropped(monkeypatch):
    monkeypatch.delenv("METAEMB_STRICT_PLUGINS", raising=False)
    plugins.reset()
    try:
        with plugins.plugin_registered(RaisingHook(), "raiser"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                reg = plugins.registry("backbones")
            assert "half-made" not in reg and "resnet18" in reg
            assert any("plugin 'raiser' failed" in str(w.message) for w in caught)
            failed = {f.name: f.error for f in plugins.state().failed}
            assert "boom in the hook" in failed["raiser"]
            plugins.state().invalidate()
            monkeypatch.setenv("METAEMB_STRICT_PLUGINS", "1")
            with pytest.raises(PluginError, match=r"plugin 'raiser' failed.*boom"):
                plugins.registry("backbones")
    finally:
        plugins.reset()


def test_a_reserved_name_a_kind_never_gets_is_warned_about_at_registration():
    """A backbone's `dim` (meant as its output size) silently kept its default: metaemb passes
    `dim` to heads only, and refuses it as a user option."""

    class DimBackbone(ConvNet):
        def __init__(self, in_channels: int = 3, dim: int = 64) -> None:
            super().__init__(in_channels, dim)

    class DimPlugin:
        @metaemb.hookimpl
        def register_backbones(self, register):
            register("dim-backbone", DimBackbone)

    plugins.reset()
    warned = pytest.warns(UserWarning, match=r"backbone 'dim-backbone' with a parameter 'dim'"
                          r".*backbones get in_channels.*Rename it")  # fmt: skip
    try:
        with plugins.plugin_registered(DimPlugin(), "dim-plugin"), warned:
            assert "dim-backbone" in plugins.registry("backbones")
    finally:
        plugins.reset()

    # a scorer's `dim` (a whitening size) is no option either: scorers get no context (P20 F5)
    from metaemb.core.scoring.cosine import CosineScorer

    class DimScorer(CosineScorer):
        def __init__(self, dim: int = 0) -> None:
            super().__init__()

    class DimScorerPlugin:
        @metaemb.hookimpl
        def register_scorers(self, register):
            register("dim-scorer", DimScorer)

    warned = pytest.warns(UserWarning, match=r"scorer 'dim-scorer' with a parameter 'dim'"
                          r".*scorers get none of them.*Rename it")  # fmt: skip
    try:
        with plugins.plugin_registered(DimScorerPlugin(), "dim-scorer-plugin"), warned:
            assert "dim-scorer" in plugins.registry("scorers")
    finally:
        plugins.reset()


def test_a_skipped_super_init_and_a_string_kind_are_named(tmp_path):
    """A backbone adding layers before super().__init__() showed torch's 'cannot assign module
    before Module.__init__() call'; a sample folder skipping it failed in split with an
    AttributeError traceback; `yields = "feature-matrix"` passed registration."""

    class EarlyLayers(Backbone):
        def __init__(self, in_channels: int = 3) -> None:
            self.conv = nn.Conv1d(in_channels, 4, 3)  # before super().__init__()
            super().__init__()

    class NoInitFolder(SeriesFolder):
        def __init__(self, root: Path, samples=None) -> None:
            self.root = Path(root)  # forgot super().__init__(root, samples)

    class LateAttrs(SeriesFolder):  # super().__init__ first: its scan needs `self.parts`
        def __init__(self, root: Path, samples=None) -> None:
            super().__init__(root, samples)
            self.parts = ("u1",)

        def identity_of(self, path):
            return path.split("/")[0] if path.split("/")[0] in self.parts else None

    class StrYields(SeriesFeatures):
        yields = "feature-matrix"

    class TupleIdentity(SeriesFolder):
        def identity_of(self, path):
            return tuple(path.split("/")[:2])

    class Mistakes:
        @metaemb.hookimpl
        def register_backbones(self, register):
            register("early-layers", EarlyLayers)

        @metaemb.hookimpl
        def register_sample_folders(self, register):
            register("no-init-folder", NoInitFolder)
            register("late-attrs", LateAttrs)
            register("tuple-identity", TupleIdentity)

    class StrKinds:
        @metaemb.hookimpl
        def register_features(self, register):
            register("str-yields", StrYields)

    plugins.reset()
    try:
        with plugins.plugin_registered(Mistakes(), "init-plugin"):
            with pytest.raises(ConfigError, match=r"backbone 'early-layers' \(plugin 'init-plugin'"
                               r"\).*call super\(\).__init__\(\) first"):  # fmt: skip
                build("backbones", "early-layers", {}, in_channels=3)
            with pytest.raises(
                PluginError,
                match=r"sample folder 'no-init-folder'.*SampleFolder "
                r"whose __init__ did not call super\(\).__init__\(\): call it at "
                r"the end of NoInitFolder.__init__",
            ):  # fmt: skip (P16 F12)
                build("sample_folders", "no-init-folder", {}, root=tmp_path)
            (tmp_path / "u1").mkdir()
            np.save(tmp_path / "u1" / "a.npy", np.zeros((4, 3)))
            with pytest.raises(ConfigError, match=r"sample folder 'late-attrs'.*AttributeError.*"
                               r"sets the attributes its identity_of and load use first"):  # fmt: skip
                build("sample_folders", "late-attrs", {}, root=tmp_path)
            with pytest.raises(PluginError, match=r"sample folder 'tuple-identity' \(plugin "
                               r"'init-plugin'\): .*TupleIdentity.identity_of"):  # fmt: skip
                build("sample_folders", "tuple-identity", {}, root=tmp_path)
        plugins.reset()
        refused = pytest.warns(UserWarning, match=r"features 'str-yields' declaring "
                               r"yields='feature-matrix'; declare a Kind")  # fmt: skip
        with refused, plugins.plugin_registered(StrKinds(), "str-plugin"):
            assert "str-yields" not in plugins.registry("features")
    finally:
        plugins.reset()


def test_registration_mistakes_are_named():
    class FactoryModality:
        @metaemb.hookimpl
        def register_modalities(self, register):
            register("fm", lambda: None)

    class Twice:
        @metaemb.hookimpl
        def register_backbones(self, register):
            register("twice", ConvNet)
            register("twice", ConvNet)

    class StringExtensions(SeriesFolder):
        extensions = ".npy"  # read letter by letter, it would match every file ending in "y"

    class BadFolders:
        @metaemb.hookimpl
        def register_sample_folders(self, register):
            register("str-ext", StringExtensions)

    class NoWord(SeriesFolder):
        what = None

    class NoWordFolders:
        @metaemb.hookimpl
        def register_sample_folders(self, register):
            register("no-word", NoWord)

    class QuotedDefault(ConvNet):
        def __init__(self, in_channels: int = 3, width: int = "64") -> None:  # type: ignore[assignment]
            super().__init__(in_channels, int(width))

    class QuotedDefaults:
        @metaemb.hookimpl
        def register_backbones(self, register):
            register("quoted", QuotedDefault)

    from metaemb.core.plugin.contract import Kind, Opt

    class OptTypo(SeriesFeatures):
        yields = Kind("feature-matrix", channels=Opt("velocites"))  # the option is 'velocities'

        def __init__(self, velocities: int = 3) -> None:
            super().__init__()

    class OptTypos:
        @metaemb.hookimpl
        def register_features(self, register):
            register("opt-typo", OptTypo)

    cases = [
        (
            OptTypos(),
            "typo-plugin",
            "features",
            r"features 'opt-typo' whose yields takes channels from Opt\('velocites'\), which is "
            r"not one of its options; did you mean 'velocities'",
        ),
        (
            BadFolders(),
            "ext-plugin",
            "sample_folders",
            r"'str-ext' with extensions='\.npy'.*\(\"\.npy\",\)",
        ),
        (NoWordFolders(), "word-plugin", "sample_folders", r"'no-word' with what=None"),
        (
            FactoryModality(),
            "fm-plugin",
            "modalities",
            r"registered modality 'fm' as function.*Modal",
        ),
        (Twice(), "twice-plugin", "backbones", "'twice-plugin' registers backbone 'twice' tw"),
        (
            QuotedDefaults(),
            "quoted-plugin",
            "backbones",
            r"backbone 'quoted' whose option 'width' defaults to '64', which is not a value of",
        ),
    ]
    for plugin, name, kind, pattern in cases:
        plugins.reset()
        try:
            with plugins.plugin_registered(plugin, name):
                # Skipped with a warning; the built-ins stay usable.
                with pytest.warns(UserWarning, match=pattern):
                    assert len(plugins.registry(kind)) > 0
                plugins.state().invalidate()
                with pytest.MonkeyPatch.context() as mp:
                    mp.setenv("METAEMB_STRICT_PLUGINS", "1")
                    with pytest.raises(PluginError, match=pattern):
                        plugins.registry(kind)
        finally:
            plugins.reset()


def test_a_modality_is_listed_with_its_own_description(plugin):
    assert plugins.registry("modalities").entry("series").description == (
        "sensor series for the mistakes test"
    )


def test_seed_out_of_range_and_relative_roots(plugin, tmp_path, series, monkeypatch):
    with pytest.raises(ConfigError, match=r"train\.seed.*2\*\*32"):
        resolve("series", sets=["train.seed=99999999999999999999"])
    monkeypatch.chdir(series.parent)
    cfg = resolve("series", sets=["data.root=data", f"data.root_absolute={series}"])
    monkeypatch.chdir(tmp_path.parent)  # the run evaluated from another directory
    assert data_root(cfg) == series
    assert cfg.hash() == resolve("series", sets=["data.root=data"]).hash()


def test_device_and_worker_typos_are_refused_plainly(capsys, tmp_path):
    from metaemb.core.errors import MetaembError
    from metaemb.core.train.device import pick_device

    for bad in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(MetaembError, match="--device"):
            pick_device(bad)
    assert pick_device("cpu").type == "cpu"
    code, _, err = run_cli(
        ["embed", tmp_path, tmp_path, "--out", "e.pt", "--workers", "-1"], capsys
    )
    assert code == 2 and "Traceback" not in err and "workers" in err


class NumpySpec(SeriesFeatures):
    """The mistake: a numpy scalar in input_spec (saved, but never loadable)."""

    def input_spec(self):
        return {"kind": "series", "scale": np.float32(1.0)}


class NoLengths(SeriesFeatures):
    """The mistake: pads, but returns lengths None."""

    def collate(self, items):
        return super().collate(items)[0], None


class ListLengths(SeriesFeatures):
    def collate(self, items):
        batch, lengths = super().collate(items)
        return batch, lengths.tolist()


class ListPrepare(SeriesFeatures):
    def prepare(self, raw, train):
        return super().prepare(raw, train).tolist()


class SomeTransposed(SeriesFeatures):
    """The mistake: files of one length come out time-first ([T, C]), hidden in a batch."""

    def prepare(self, raw, train):
        x = super().prepare(raw, train)
        return x.T.contiguous() if x.shape[-1] == 46 else x


class CollateFails(SeriesFeatures):
    """The mistake: collate allocates a batch for another channel count."""

    def collate(self, items):
        lengths = torch.tensor([x.shape[-1] for x in items])
        batch = torch.zeros(len(items), 2, int(lengths.max()))
        for i, x in enumerate(items):
            batch[i, :, : x.shape[-1]] = x
        return batch, lengths


class DoubleOut(ConvNet):
    """The mistake: returns float64 (the head's BatchNorm would fail deep in torch)."""

    def forward(self, x, lengths=None):
        return super().forward(x, lengths).double()


class Required(ConvNet):
    def __init__(self, hidden: int, in_channels: int = 3) -> None:
        super().__init__(in_channels, hidden)


class SeededNet(ConvNet):
    """The mistake: a reserved name as an option (metaemb never passes `seed` to a backbone)."""

    def __init__(self, in_channels: int = 3, width: int = 8, seed: int = 0) -> None:
        super().__init__(in_channels, width)


class MistakesPlugin:
    @metaemb.hookimpl
    def register_features(self, register):
        for name, cls in [("npspec", NumpySpec), ("nolengths", NoLengths),
                          ("listlengths", ListLengths), ("listprepare", ListPrepare),
                          ("collatefails", CollateFails),
                          ("sometransposed", SomeTransposed)]:  # fmt: skip
            register(name, cls)

    @metaemb.hookimpl
    def register_backbones(self, register):
        for name, cls in [("doubleout", DoubleOut), ("required", Required), ("seeded", SeededNet)]:
            register(name, cls)

    @metaemb.hookimpl
    def register_modalities(self, register):
        typo = Modality(name="typo", description="a typo", sample_folder="series",
                        features="series", backbone="conv",
                        options={"backbone": {"conv": {"widht": 4}}},
                        defaults={"train.epochs": 1, "model.dim": 8})  # fmt: skip
        register("typo", typo)


@pytest.mark.parametrize(
    ("sets", "fragments"),
    [
        (
            ["model.features=npspec"],
            ["features 'npspec' (plugin 'mistakes')", "input_spec()['scale'] is a numpy.float32"],
        ),
        (
            ["model.features=nolengths"],
            [
                "features 'nolengths' (plugin 'mistakes')",
                "collate padded them and returned lengths None",
            ],
        ),
        (["model.features=listlengths"], ["collate returned lengths as list", "int64 tensor"]),
        (
            ["model.features=listprepare"],
            ["features 'listprepare' (plugin 'mistakes'): prepare returned a list"],
        ),
        (
            ["model.features=collatefails"],
            [
                "features 'collatefails' (plugin 'mistakes'): collate failed on",
                "RuntimeError: The expanded size",
            ],
        ),
        (  # the odd items are named with their files (P19 F3)
            ["model.features=sometransposed"],
            ["collate failed on", "Unlike the others: 'id", "/2.npy' (46, 3)"],
        ),
        (
            ["model.backbone=doubleout"],
            ["backbone 'doubleout' (plugin 'mistakes') returned a torch.float64 tensor"],
        ),
        (
            ["model.backbone=required"],
            ["backbone 'required' needs the option 'hidden'", "--set backbone.hidden=VALUE"],
        ),
        (
            ["model.backbone=seeded", "backbone.seed=3"],
            ["'seed' is a reserved name", "is never an option"],
        ),
        (["model.backbone=required", "backbone.hidden=4"], []),  # a required option, given
    ],
)
def test_contract_mistakes_of_a_new_data_kind(plugin, tmp_path, series, capsys, sets, fragments):
    with plugins.plugin_registered(MistakesPlugin(), "mistakes"):
        code, _, err = train(tmp_path, series, capsys, *sets)
    message = " ".join(err.split())
    assert "Traceback" not in err and (code == 0) == (not fragments), err
    for fragment in fragments:
        assert fragment in message, message
    runs = list((tmp_path / "runs" / "series").glob("*/last.pt"))
    assert len(runs) == (0 if fragments else 1)  # refused before any checkpoint


def test_a_modalitys_own_option_mistake_names_the_modality(plugin, tmp_path, series, capsys):
    typo = r"modality 'typo' \(plugin 'mistakes'\) sets option 'backbone.widht'.*mean 'width'"
    with (
        plugins.plugin_registered(MistakesPlugin(), "mistakes"),
        pytest.raises(ConfigError, match=typo),
    ):
        resolve("typo", sets=[f"data.root={str(series)!r}"])


def test_a_misspelt_hook_name_is_reported(monkeypatch):
    class WrongHook:
        @metaemb.hookimpl
        def register_backbone(self, register):  # the hook is register_backbones
            register("never", ConvNet)

    monkeypatch.delenv("METAEMB_STRICT_PLUGINS", raising=False)
    plugins.reset()
    wrong = r"plugin 'w\w*' implements 'register_backbone', which is not a metaemb hook"
    try:
        hint = ".*did you mean 'register_backbones'"
        with (
            pytest.warns(UserWarning, match=wrong + hint),
            plugins.plugin_registered(WrongHook(), "wrong"),
        ):
            pass
        monkeypatch.setenv("METAEMB_STRICT_PLUGINS", "1")
        with pytest.raises(PluginError, match=wrong), plugins.plugin_registered(WrongHook(), "w"):
            pass
    finally:
        plugins.reset()


def test_a_module_without_super_init_is_named():
    class NoSuper(ConvNet):
        def __init__(self, in_channels: int = 3) -> None:
            self.width = 8  # forgot super().__init__(): torch would fail on first use

    class P:
        @metaemb.hookimpl
        def register_backbones(self, register):
            register("nosuper", NoSuper)

    expected = r"backbone 'nosuper' \(plugin 'nosuper-plugin'\).*super\(\).__init__\(\).*NoSuper"
    with (
        plugins.plugin_registered(P(), "nosuper-plugin"),
        pytest.raises(PluginError, match=expected),
    ):
        build("backbones", "nosuper", {})


def test_collapsed_validation_embeddings_are_warned_about():
    from metaemb.core.train.validation import warn_if_collapsed

    with pytest.warns(UserWarning, match=r"nearly identical for all 5 samples.*BatchNorm"):
        warn_if_collapsed(torch.ones(5, 8) * 0.3 + 1e-9 * torch.randn(5, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_collapsed(torch.randn(5, 8))


def test_names_a_failed_hook_never_reached_point_at_the_plugin():
    from metaemb.core.errors import UnknownComponentError

    class Clash:
        @metaemb.hookimpl
        def register_backbones(self, register):
            register("resnet18", ConvNet)  # taken by the vision plugin: the hook stops here
            register("later-ok", ConvNet)

    plugins.reset()
    try:
        with plugins.plugin_registered(Clash(), "clash-plugin"):
            with pytest.warns(UserWarning, match="clash-plugin"):
                reg = plugins.registry("backbones")
            with pytest.raises(UnknownComponentError, match=r"unknown backbone 'later-ok'.*"
                               r"Plugin 'clash-plugin' failed registering backbones"):  # fmt: skip
                reg.entry("later-ok")
    finally:
        plugins.reset()


def test_a_modality_choosing_an_unknown_component_is_named():
    class BadModality:
        @metaemb.hookimpl
        def register_modalities(self, register):
            register("typo", Modality(name="typo", description="", sample_folder="image",
                                      features="image", backbone="resnet81"))  # fmt: skip
            register("typo2", Modality(name="typo2", description="", sample_folder="image",
                                       features="image", backbone="resnet18",
                                       defaults={"train.objective": "arcfase"}))  # fmt: skip

    with plugins.plugin_registered(BadModality(), "typo-plugin"):
        for modality, key, name in [("typo", "model.backbone", "resnet81"),
                                    ("typo2", "train.objective", "arcfase")]:  # fmt: skip
            with pytest.raises(ConfigError, match=rf"modality '{modality}' \(plugin 'typo-plugin'"
                               rf"\) chooses {key} = '{name}': unknown"):  # fmt: skip
                resolve(modality)
        resolve("typo", sets=["model.backbone=resnet18"])  # the user's choice replaces it
        with pytest.raises(UnknownComponentError, match="unknown backbone 'resnet19'"):
            resolve("typo", sets=["model.backbone=resnet19"])  # the user's typo: as before


def test_modality_options_for_a_misspelt_component_or_section_are_named():
    """Options are keyed by component name and apply only when it is chosen: options for
    'resnet81' or a section 'backbones' would never apply, without a word."""

    def modality(name: str, options: dict) -> Modality:
        return Modality(name=name, description="", sample_folder="image", features="image",
                        backbone="resnet18", options=options)  # fmt: skip

    class Typos:
        @metaemb.hookimpl
        def register_modalities(self, register):
            register("opt1", modality("opt1", {"backbone": {"resnet81": {"width": 8}}}))
            register("opt2", modality("opt2", {"backbones": {"resnet18": {"width": 8}}}))
            register("opt3", modality("opt3", {"backbone": {"resnet18": {}, "*": {}}}))

    with plugins.plugin_registered(Typos(), "typos-plugin"):
        with pytest.raises(ConfigError, match=r"modality 'opt1' \(plugin 'typos-plugin'\) sets "
                           r"options for backbone 'resnet81', which is not registered.*"
                           r"'resnet18'"):  # fmt: skip
            resolve("opt1")
        with pytest.raises(ConfigError, match=r"section 'backbones', which names no component "
                           r"kind; did you mean 'backbone'"):  # fmt: skip
            resolve("opt2")
        resolve("opt3")


# -- mistakes in the other training components (heads, samplers, augmentations, objectives,
# scorers): each is caught on the first batch or the first validation, by name -----------------
class WideHead(Head):
    """The mistake: ignores `dim` (its output is 2 × dim)."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(in_features, 2 * dim)

    def forward(self, x):
        return self.linear(x)


class DoubleHead(WideHead):
    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__(in_features, dim)
        self.linear = nn.Linear(in_features, dim).double()

    def forward(self, x):
        return self.linear(x.double())


class ClaimsGME(WideHead):
    output = "gme"

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__(in_features, dim)
        self.linear = nn.Linear(in_features, dim)


class NegativeIndex(RandomSampler):
    def all_batches(self):
        return [[-1, *b[1:]] for b in super().all_batches()]


class Singles(RandomSampler):
    def all_batches(self):
        return [[i] for i in range(len(self.labels))]


class Unseeded(RandomSampler):
    def all_batches(self):
        order = list(range(len(self.labels)))
        random.shuffle(order)  # the mistake: not self.generator()
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]


class Halves(Augmentation):
    """The mistake: halves the signal but keeps the old lengths."""

    def forward(self, x, lengths, labels):
        return x[..., ::2], lengths, labels


class DropsHalf(Augmentation):
    def forward(self, x, lengths, labels):
        n = len(x) // 2
        return x[:n], None if lengths is None else lengths[:n], labels[:n]


class NewLabels(Augmentation):
    """The mistake: new identities without saying so in num_classes()."""

    def forward(self, x, lengths, labels):
        return x, lengths, labels + 100


class MakesNaN(Augmentation):
    def forward(self, x, lengths, labels):
        return x * float("nan"), lengths, labels


class NoGrad(SoftmaxObjective):
    def __call__(self, embeddings, labels, classifier):
        return torch.tensor(float(super().__call__(embeddings, labels, classifier).detach()))


class NaNLoss(SoftmaxObjective):
    def __call__(self, embeddings, labels, classifier):
        return super().__call__(embeddings, labels, classifier) * float("nan")


class FewClasses(SoftmaxObjective):
    def build_classifier(self, dim, num_classes):
        return super().build_classifier(dim, 2)  # the mistake: ignores num_classes


class NoSuper(SoftmaxObjective):
    def __init__(self) -> None:  # the mistake: no super().__init__()
        self.scale = 1.0


class AsksForTypo(SoftmaxObjective):
    batch = "p-k"


class NegatedPairs(CosineScorer):
    """The mistake: pairs (trial lists) and block (galleries) disagree."""

    def pairs(self, models, counts, test):
        return -super().pairs(models, counts, test)


class KeptDimPairs(CosineScorer):
    """The mistake: pairs returns [N, 1]; broadcast against [N] it looked like disagreement."""

    def pairs(self, models, counts, test):
        return super().pairs(models, counts, test)[:, None]


class AttributeScorer(CosineScorer):
    def __init__(self) -> None:
        super().__init__()
        self.fitted = False  # a read-only property: AttributeError


class TrainingMistakesPlugin:
    @metaemb.hookimpl
    def register_heads(self, register):
        register("widehead", WideHead)
        register("doublehead", DoubleHead)
        register("claimsgme", ClaimsGME)

    @metaemb.hookimpl
    def register_samplers(self, register):
        register("negindex", NegativeIndex)
        register("singles", Singles)
        register("unseeded", Unseeded)

    @metaemb.hookimpl
    def register_augmentations(self, register):
        register("halves", Halves)
        register("dropshalf", DropsHalf)
        register("newlabels", NewLabels)
        register("makesnan", MakesNaN)

    @metaemb.hookimpl
    def register_objectives(self, register):
        for name, cls in [("nograd", NoGrad), ("nanloss", NaNLoss), ("fewclasses", FewClasses),
                          ("nosuper", NoSuper), ("askstypo", AsksForTypo)]:  # fmt: skip
            register(name, cls)

    @metaemb.hookimpl
    def register_scorers(self, register):
        register("negatedpairs", NegatedPairs)
        register("keptdimpairs", KeptDimPairs)
        register("attributescorer", AttributeScorer)


@pytest.fixture
def mistakes(plugin):
    with plugins.plugin_registered(TrainingMistakesPlugin(), "mistakes"):
        yield


@pytest.mark.parametrize(
    ("sets", "fragments"),
    [
        (["model.head=widehead", "train.objective=triplet"],
         ["head 'widehead' (plugin 'mistakes') returned", "[batch, model.dim] = [8, 8]"]),
        (["model.head=doublehead"], ["head 'doublehead' (plugin 'mistakes')", "float64"]),
        (["model.head=claimsgme", "train.objective=gme-bxe"],
         ["head 'claimsgme'", 'declares output = "gme"']),
        (["train.sampler=negindex"], ["sampler 'negindex' (plugin 'mistakes')", "index -1"]),
        (["train.sampler=singles"], ["sampler 'singles'", "at most 1 sample(s)"]),
        (["train.sampler=unseeded"], ["sampler 'unseeded'", "other batches when asked twice"]),
        (["train.augment=['halves']"],
         ["augmentation 'halves' (plugin 'mistakes') returned lengths", "fit the last axis"]),
        (["train.augment=['dropshalf']"], ["augmentation 'dropshalf'", "4 samples from a batch of 8"]),
        (["train.augment=['newlabels']"], ["augmentation 'newlabels'", "num_classes()"]),
        (["train.augment=['makesnan']"],
         ["augmentation 'makesnan' (plugin 'mistakes') gave NaN or inf values from a finite batch"]),
        (["train.objective=nograd"], ["objective 'nograd' (plugin 'mistakes')", "no gradient"]),
        (["train.objective=nanloss"], ["objective 'nanloss'", "loss of nan from finite embeddings"]),
        (["train.objective=fewclasses"],  # its classifier has 2 classes, the data 6
         ["objective 'fewclasses' (plugin 'mistakes'): labels must be class indices in [0, 2) "
          "(the classifier's classes)"]),
        (["train.objective=nosuper"], ["objective 'nosuper'", "did not call super().__init__()"]),
        (["train.objective=askstypo"],
         ["objective 'askstypo' (plugin 'mistakes') asks for sampler 'p-k'", "did you mean 'pk'?"]),
        (["eval.scorer=negatedpairs"],
         ["scorer 'negatedpairs' (plugin 'mistakes'): its scores of aligned pairs", "differ"]),
        (["eval.scorer=keptdimpairs"],
         ["scorer 'keptdimpairs' (plugin 'mistakes'): score of 6 aligned", "gave [6, 1]",
          "[N] = [6]"]),
        (["eval.scorer=attributescorer"],
         ["scorer 'attributescorer' (plugin 'mistakes') could not be built", "AttributeError"]),
    ],
)  # fmt: skip
def test_each_training_mistake_names_its_component(
    mistakes, tmp_path, series, capsys, sets, fragments
):
    code, _, err = train(tmp_path, series, capsys, *sets)
    message = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in message, message
    assert not list((tmp_path / "runs").glob("*/*/best.pt"))  # stopped before any checkpoint


@pytest.mark.parametrize("scorer", ["negatedpairs", "keptdimpairs"])
def test_a_scorer_that_needs_no_fit_is_checked_before_the_first_epoch(
    mistakes, tmp_path, series, capsys, scorer
):
    """Its pair/matrix check ran at the first validation, after a whole epoch of training."""
    code, out, err = train(tmp_path, series, capsys, f"eval.scorer={scorer}")
    assert code == 2 and f"scorer '{scorer}'" in err
    assert not re.search(r"\b[1-9]\d*/\d+ loss", out), out  # no training step was taken


def test_baseline_named_by_the_modality_only_for_its_own_features(plugin, tmp_path, series, capsys):
    """A modality's baseline name describes its own features' baseline; other features of the
    same modality get theirs (P5: MFCC features were reported as a "mean fbank" baseline)."""

    class Named(SeriesFeatures):
        baseline_name = "mean series"

    class Own:
        @metaemb.hookimpl
        def register_features(self, register):
            register("named", Named)
            register("other", SeriesFeatures)

    with plugins.plugin_registered(Own(), "own"):
        series_modality = plugins.registry("modalities").get("series")
        named = dataclasses.replace(
            series_modality, name="series2", baseline_name="series baseline"
        )

        class Named2:
            @metaemb.hookimpl
            def register_modalities(self, register):
                register("series2", named)

        with plugins.plugin_registered(Named2(), "named"):
            names = {}
            for features in ("series", "other", "named"):
                runs = tmp_path / features
                args = ["train", "--modality", "series2", "--data", series, "--runs", runs,
                        "--workers", "0", "--set", f"model.features={features}"]  # fmt: skip
                assert run_cli(args, capsys)[0] == 0
                [run] = (runs / "series2").iterdir()
                names[features] = json.loads((run / "baseline.json").read_text())["name"]
    assert names == {"series": "series baseline", "other": "input mean+std over time",
                     "named": "mean series"}  # fmt: skip


def test_a_modality_given_a_class_instead_of_a_name_is_refused_when_built():
    """backbone=EcgCNN (the class) listed fine and failed at train as a config-type error."""
    with pytest.raises(PluginError, match=r"modality 'ecg2': backbone = ConvNet is not a name.*"
                       r"register ConvNet under a name"):  # fmt: skip
        Modality(name="ecg2", description="", sample_folder="series", backbone=ConvNet)


def test_the_default_face_model_passes_the_first_batch_checks_silently():
    """Padding one made-up sample of a batch given without lengths is for sequences: an image
    batch padded along its width warned on every default face run."""
    from metaemb.core.data.pipeline import build_model

    plugins.reset()
    cfg = resolve("face", sets=["features.image_size=32", "model.dim=16"])
    model = build_model(cfg).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_first_batch(model, cfg, torch.rand(4, 3, 32, 32) * 2 - 1, None)


def test_an_export_adapter_without_lengths_for_sequence_features_is_refused(plugin):
    """Its examples all of one length, the wrapper check passed and the graph was stamped
    verified, though a zero-padded batch embeds ~6 % off in deployment."""
    from metaemb.core.deploy.export import ExportAdapter, ExportError
    from metaemb.core.deploy.export_checks import _refuse_a_graph_without_lengths

    class NoLengths(ExportAdapter):
        names: ClassVar[list[str]] = ["imu"]

        def shapes(self, spec):
            return [["N", 3, "T"]]

        def wrap(self, model):
            return model

        def example(self, spec, batch, variant):
            return (torch.randn(batch, 3, 10 + variant),)

        def preprocessing(self, spec):
            return []

    cfg = resolve("series")
    model = EmbeddingModel(SeriesFeatures(), ConvNet(), nn.Linear(8, cfg.model.dim))
    with pytest.raises(ExportError, match=r"the run's features take the lengths .* passes none"):
        _refuse_a_graph_without_lengths(model, NoLengths(), {"kind": "series"})

    class WithLengths(NoLengths):
        names: ClassVar[list[str]] = ["imu", "lengths"]

        def example(self, spec, batch, variant):
            return torch.randn(batch, 3, 12), torch.tensor([12, 9, 7][:batch])

    _refuse_a_graph_without_lengths(model, WithLengths(), {"kind": "series"})  # passes
    from metaemb.core.deploy.export_checks import check_declared_shapes

    class Miscounted(WithLengths):  # names one input, example() makes two
        names: ClassVar[list[str]] = ["imu"]

    with pytest.raises(ExportError, match=r"names lists 1 input\(s\) \(imu\), shapes\(\) gives 1 "
                       r"and example\(\) returns 2"):  # fmt: skip
        check_declared_shapes(Miscounted(), {"kind": "series"})


def test_an_augmentation_stretching_time_but_keeping_the_lengths_is_warned_about():
    """A stretch by 2 returning the input's lengths trained silently on the first half of
    each sample (P15 F3); a stretch with its lengths, or lengths-free batches, say nothing."""
    import warnings

    from metaemb.core.train.augment_checks import check_output

    x, labels, lengths = torch.randn(3, 2, 10), torch.arange(3), torch.tensor([10, 7, 4])
    stretched = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="linear")
    with pytest.warns(UserWarning, match=r"augmentation 'a' changed the batch's steps \(10 → 20\) "
                      r"but returned the input's lengths unchanged"):  # fmt: skip
        check_output("augmentation 'a'", (stretched, lengths, labels), x, lengths, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_output("augmentation 'a'", (stretched, lengths * 2, labels), x, lengths, 3)
        check_output("augmentation 'a'", (stretched, None, labels), x, None, 3)
        check_output("augmentation 'a'", (x, lengths, labels), x, lengths, 3)


def test_an_augmentation_with_a_random_stream_of_its_own_is_warned_about():
    """A generator made once in __init__ is not reseeded per epoch: a run resumed after a kill
    trained on other batches, with no word (P17 F2). Global streams are fine, and the check
    leaves the global random state as it found it."""
    import random
    import warnings

    import numpy as np

    from metaemb.core.train.augment_checks import warn_if_not_replayable

    class OwnStream(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gen = torch.Generator().manual_seed(1234)

        def forward(self, x, lengths, labels):
            return x + torch.randn(x.shape, generator=self.gen), lengths, labels

    class GlobalStreams(torch.nn.Module):
        def forward(self, x, lengths, labels):
            noise = torch.randn_like(x) + float(np.random.rand()) + random.random()
            return x + noise, lengths, labels

    class Curriculum(torch.nn.Module):  # per-call state in a buffer: replayable (R5-5)
        def __init__(self):
            super().__init__()
            self.register_buffer("seen", torch.zeros((), dtype=torch.long))

        def forward(self, x, lengths, labels):
            self.seen += 1
            return x + 1e-3 * self.seen * torch.randn_like(x), lengths, labels

    x, labels = torch.randn(3, 2, 10), torch.arange(3)
    curriculum = Curriculum()
    curriculum(x, None, labels)  # the real first call
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_not_replayable("augmentation 'curriculum'", curriculum, x, None, labels)
    assert int(curriculum.seen) == 1  # the trial calls leave no trace
    with pytest.warns(UserWarning, match=r"augmentation 'own' gave two different batches from "
                      r"the same random state and state_dict: it draws from a random stream of "
                      r"its own"):  # fmt: skip
        warn_if_not_replayable("augmentation 'own'", OwnStream(), x, None, labels)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_not_replayable("augmentation 'global'", GlobalStreams(), x, None, labels)
    after = (torch.get_rng_state(), np.random.get_state()[1], random.getstate())
    assert torch.equal(before[0], after[0]) and (before[1] == after[1]).all()
    assert before[2] == after[2]


def test_an_augmentation_returning_float_labels_is_named_and_a_modality_takes_none():
    """Float labels from an augmentation failed in the core softmax ('expected scalar type
    Long'); a Modality with demo_data=None (Python's 'none given') was refused as a class."""
    from metaemb.core.train.augment import check_output

    x, labels = torch.randn(4, 3, 10), torch.arange(4)
    with pytest.raises(ConfigError, match=r"augmentation 'a' returned labels as torch.float32; "
                       r"labels stay int64"):  # fmt: skip
        check_output("augmentation 'a'", (x, None, labels.float()), x, None, 4)
    check_output("augmentation 'a'", (x, None, labels), x, None, 4)
    # dropping mel bins was blamed on the core objective by the backbone's shape error (C1 F11)
    with pytest.raises(ConfigError, match=r"augmentation 'a' returned x of shape \[4, 2, 10\] "
                       r"from \[4, 3, 10\]; an augmentation keeps every axis but the last"):  # fmt: skip
        check_output("augmentation 'a'", (x[:, :2], None, labels), x, None, 4)
    check_output("augmentation 'a'", (x[..., :7], None, labels), x, None, 4)  # time may change
    # crops of one length came without lengths; dropping keys makes them differ: new lengths
    # are the only right answer, where they were refused (P18 F1); losing lengths is not
    check_output("augmentation 'a'", (x[..., :8], torch.tensor([8, 5, 7, 8]), labels), x, None, 4)
    with pytest.raises(ConfigError, match=r"returned lengths None where they were a tensor"):
        check_output("augmentation 'a'", (x, None, labels), x, torch.tensor([10, 9, 8, 7]), 4)
    for bad in (torch.full((4,), 5.0), torch.ones(4, dtype=torch.bool), [8, 5, 7, 8],
                torch.tensor([8, 5, 7, 8], dtype=torch.uint8)):  # fmt: skip
        with pytest.raises(ConfigError, match=r"returned lengths .*; lengths are int64 \[batch\]"):
            check_output("augmentation 'a'", (x, bad, labels), x, None, 4)
    with pytest.raises(ConfigError, match=r"returned a length of 0; every sample keeps"):
        check_output("augmentation 'a'", (x, torch.tensor([8, 0, 7, 8]), labels), x, None, 4)
    m = Modality(name="ecg", description="", sample_folder="series", backbone="conv",
                 demo_data=None, features=None)  # fmt: skip
    assert (m.demo_data, m.features) == ("", "none")


class StepCounter(nn.Module):
    """A classifier with no parameters, only a running statistic (as a memory bank would)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


class CountingObjective(metaemb.core.Objective):
    """A pair-style loss with no class weights that keeps a count between steps."""

    def build_classifier(self, dim, num_classes):
        return StepCounter()

    def __call__(self, embeddings, labels, classifier):
        classifier.steps += 1
        same = (labels[:, None] == labels[None, :]).float()
        sims = nn.functional.normalize(embeddings, dim=1) @ nn.functional.normalize(embeddings).T
        return ((sims - same) ** 2).mean()


class CountingPlugin:
    @metaemb.hookimpl
    def register_objectives(self, register):
        register("counting", CountingObjective)


def test_an_objectives_running_statistics_are_buffers_of_its_classifier(plugin, tmp_path, series,
                                                                        capsys):  # fmt: skip
    """docs/plugins.md: running statistics of an objective live as buffers of the module
    build_classifier returns (one without parameters too), checkpointed and restored."""
    from metaemb.core.checkpoints import load_checkpoint

    with plugins.plugin_registered(CountingPlugin(), "counting-test"):
        code, _, err = train(tmp_path, series, capsys, "train.objective=counting",
                             "train.epochs=1")  # fmt: skip
        assert code == 0, err
        run = next((tmp_path / "runs" / "series").glob("run-*"))
        state = load_checkpoint(run / "last.pt")
        assert int(state["classifier"]["steps"]) == state["step"] > 0


class RunningStats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1))


class StateOnObjective(SoftmaxObjective):
    """The mistake: a running statistic kept on the objective, not on its classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.run = RunningStats()

    def __call__(self, embeddings, labels, classifier):
        with torch.no_grad():
            self.run.mean.mul_(0.9).add_(0.1 * embeddings.norm(dim=1).mean())
        return super().__call__(embeddings, labels, classifier)


class LazyWeights(SoftmaxObjective):
    """The mistake: class weights made in the first call, as a tensor that requires grad."""

    def __init__(self) -> None:
        super().__init__()
        self.w = None

    def __call__(self, embeddings, labels, classifier):
        if self.w is None:
            self.w = torch.randn(64, embeddings.shape[1], requires_grad=True)
        return nn.functional.cross_entropy(embeddings @ self.w.T, labels)


class LazyCentres(SoftmaxObjective):
    """The mistake: centre-loss centres kept as a moving average, made in the first call."""

    def __init__(self) -> None:
        super().__init__()
        self.centres = None

    def __call__(self, embeddings, labels, classifier):
        if self.centres is None:
            self.centres = torch.zeros(64, embeddings.shape[1])
        with torch.no_grad():
            self.centres[labels] = 0.9 * self.centres[labels] + 0.1 * embeddings.detach()
        return super().__call__(embeddings, labels, classifier)


class ObjectiveStatePlugin:
    @metaemb.hookimpl
    def register_objectives(self, register):
        register("stateonobjective", StateOnObjective)
        register("lazyweights", LazyWeights)
        register("lazycentres", LazyCentres)


def test_state_an_objective_keeps_on_itself_is_named(plugin, tmp_path, series, capsys):
    """A running statistic on the objective resumed from scratch (not bit-identical) and
    lazily made class weights were never trained or saved, both without a word (C1)."""
    with plugins.plugin_registered(ObjectiveStatePlugin(), "state-test"):
        code, _, err = train(tmp_path, series, capsys, "train.objective=lazyweights")
        assert code != 0
        assert "objective 'lazyweights' (plugin 'state-test') holds trainable tensors of its " \
               "own (w)" in " ".join(err.split())  # fmt: skip
        with pytest.warns(UserWarning, match=r"objective 'stateonobjective' \(plugin "
                          r"'state-test'\) carries 'run.mean' from epoch to epoch"):  # fmt: skip
            code, _, err = train(tmp_path, series, capsys, "train.objective=stateonobjective",
                                 "train.epochs=2")  # fmt: skip
        assert code == 0, err
        # ... also when it is made in the first call, with no value at the epoch's start (P20 F2)
        with pytest.warns(UserWarning, match=r"objective 'lazycentres' \(plugin 'state-test'\) "
                          r"carries 'centres' from epoch to epoch"):  # fmt: skip
            code, _, err = train(tmp_path, series, capsys, "train.objective=lazycentres",
                                 "train.epochs=2")  # fmt: skip
        assert code == 0, err


@pytest.mark.parametrize("objective", ["softmax", "arcface", "cosface", "triplet", "contrastive",
                                       "gme-bxe", "gme-softmax", "partial-fc"])  # fmt: skip
def test_built_in_objectives_keep_no_state_of_their_own(plugin, tmp_path, series, capsys,
                                                        objective):  # fmt: skip
    sets = ["train.objective=" + objective, "train.epochs=2"]
    if objective.startswith("gme"):
        sets.append("model.head=gme")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = train(tmp_path, series, capsys, *sets)
    assert code == 0, err
    assert not [w for w in caught if "from epoch to epoch" in str(w.message)]


class TrainOnlyWidth(ConvNet):
    """The mistake: a narrower output only in training mode (eval mode passes its checks)."""

    def forward(self, x, lengths=None):
        h = super().forward(x, lengths)
        return h[:, :5] if self.training else h


class MakesNaNBackbone(ConvNet):
    def forward(self, x, lengths=None):
        return super().forward(x, lengths) / 0 * 0


class BackboneMistakesPlugin:
    @metaemb.hookimpl
    def register_backbones(self, register):
        register("trainonlywidth", TrainOnlyWidth)
        register("makesnanbackbone", MakesNaNBackbone)


@pytest.mark.parametrize(
    ("backbone", "fragments"),
    [
        ("trainonlywidth", ["backbone 'trainonlywidth' (plugin 'backbone-mistakes') returned",
                            "[8, 5] in training mode, [batch, 8] (its feature_dim) in eval"]),
        ("makesnanbackbone", ["backbone 'makesnanbackbone' (plugin 'backbone-mistakes') gave "
                              "NaN or inf values from finite features"]),
    ],
)  # fmt: skip
def test_a_backbone_failing_in_training_mode_is_named_not_the_objective_or_head(
    plugin, tmp_path, series, capsys, backbone, fragments
):
    """A backbone wrong only in training mode was blamed on the core objective; one making
    NaN was blamed on the core head's poisoned BatchNorm, after a 'padding leaks' warning of
    a NaN gap (C1 F5, F6)."""
    mistakes = plugins.plugin_registered(BackboneMistakesPlugin(), "backbone-mistakes")
    with mistakes, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = train(tmp_path, series, capsys, f"model.backbone={backbone}",
                             "train.batch_size=8")  # fmt: skip
    message = " ".join(err.split())
    assert code != 0 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in message, message
    assert not [w for w in caught if "padding leaks" in str(w.message)]


def test_a_run_is_built_with_the_defaults_it_trained_with(plugin, tmp_path, series, capsys,
                                                          monkeypatch):  # fmt: skip
    """config.toml keeps only options that were set; a plugin changing a default made
    `evaluate RUN` build another network around the same weights, silently (C1 F8)."""
    from metaemb.core.deploy.loading import load_run

    code, _, err = train(tmp_path, series, capsys, "train.epochs=1")
    assert code == 0, err
    run = next((tmp_path / "runs" / "series").glob("run-*"))
    monkeypatch.setattr(ConvNet.__init__, "__defaults__", (3, 16))  # a new release: width 16
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_run(run)
    said = [str(w.message) for w in caught]
    assert any(re.search(r"trained when some component defaults were different.*backbone "
                         r"'conv': width = 8 \(now 16\)", m) for m in said), said  # fmt: skip
    assert not [m for m in said if "edited by hand" in m], said  # nobody edited config.toml
    assert (
        loaded.model.backbone.feature_dim == 8 and loaded.config.options("backbone")["width"] == 8
    )


def test_factories_of_the_wrong_sort_are_refused_when_the_plugin_registers():
    """42 as a factory was listed, then `train` died in inspect.signature (a traceback); a
    Backbone registered as an objective was explained as a data-kind mismatch; needs =
    "points" gave "trains points embeddings but head 'linear' outputs point embeddings" (C1
    F12, F15, F16)."""
    from metaemb.core.errors import PluginError
    from metaemb.core.plugin.registry import Registry

    with pytest.raises(PluginError, match=r"plugin 'bad' registers objective 'n' with 42 \(a "
                       r"int\), which is not a class or a function"):  # fmt: skip
        Registry("objectives").add("n", 42, "bad")
    with pytest.raises(PluginError, match=r"objective 'w' with class ConvNet, a Backbone; "
                       r"objectives subclass metaemb's Objective"):  # fmt: skip
        Registry("objectives").add("w", ConvNet, "bad")

    class Points(SoftmaxObjective):
        needs = "points"

    with pytest.raises(PluginError, match=r"objective 'p' whose needs is 'points'; it is one of "
                       r"'point', 'gme', 'any'. did you mean 'point'\?"):  # fmt: skip
        Registry("objectives").add("p", Points, "bad")
    Registry("objectives").add("s", SoftmaxObjective, "good")  # the right sort: accepted
    # an nn.Module instance is callable: it was listed, then failed as "forward() missing x"
    with pytest.raises(PluginError, match=r"registers backbone 'i' as an instance of ConvNet; "
                       r"register the class \(ConvNet\)"):  # fmt: skip
        Registry("backbones").add("i", ConvNet(), "bad")


def test_large_objective_state_is_watched_by_fingerprint_not_copied():
    """A memory bank on the objective was cloned up to six times at the start of training
    (R2-4); a large tensor is now compared by a fingerprint that still sees a change."""
    from metaemb.core.train.checks.objective import _same_value, _snapshot

    queue = torch.zeros(100_000, 8)
    before = _snapshot(queue)
    assert isinstance(before, tuple) and before[3].numel() < 8192  # a sample, not a copy
    assert _same_value(before, _snapshot(queue))
    queue[12_345] = 1.0  # one row written, as a queue does each step
    assert not _same_value(before, _snapshot(queue))
    small = torch.zeros(3)
    assert isinstance(_snapshot(small), torch.Tensor)


class NaNFrontend(metaemb.core.Frontend):
    """The mistake: a frontend that divides by zero on every sample."""

    def __call__(self, raw, path, root):
        out = np.array(raw, dtype=np.float64)
        out[0, 0] = np.nan
        return out


class NaNFrontendPlugin:
    @metaemb.hookimpl
    def register_frontends(self, register):
        register("nanfrontend", NaNFrontend)


def test_nan_made_by_a_frontend_is_blamed_on_it_not_the_features(plugin, tmp_path, series,
                                                                 capsys):  # fmt: skip
    """The features that carried a frontend's NaN on were named as its source (P14 F3)."""
    with plugins.plugin_registered(NaNFrontendPlugin(), "nan-frontend"):
        code, _, err = train(tmp_path, series, capsys, "model.frontend=nanfrontend")
    message = " ".join(err.split())
    assert code != 0 and "Traceback" not in err, err
    assert "frontend 'nanfrontend' (plugin 'nan-frontend') gave NaN or inf values" in message


def test_a_collate_failure_on_time_first_items_says_the_time_axis_is_last():
    """prepare returning [T, C] failed in the base collate with torch's 'stack expects each
    tensor to be equal size' and no word on the layout (P15 F7)."""
    from metaemb.core.data.collate import _layout_hint

    time_first = [torch.zeros(288, 3), torch.zeros(309, 3)]
    assert "prepare gives the varying axis last ([channels, steps])" in _layout_hint(time_first)
    unpadded = [torch.zeros(3, 288), torch.zeros(3, 309)]
    assert "pad in their own collate" in _layout_hint(unpadded)
    assert _layout_hint([torch.zeros(3, 5), torch.zeros(3, 5)]) == ""


def test_a_sample_folder_without_extensions_is_named_not_the_data(tmp_path):
    """extensions = () scanned nothing and told the user to remove every identity folder of
    good data (P15 F9); a folder that lists its samples itself (Kaldi's) needs none."""
    from metaemb.core.errors import PluginError
    from metaemb.plugins.audio.folder import AudioFolder

    class NoSuffixes(AudioFolder):
        extensions = ()

    (tmp_path / "spk1").mkdir()
    (tmp_path / "spk1" / "a.wav").write_bytes(b"")
    with pytest.raises(PluginError, match=r"NoSuffixes declares no `extensions`, so scanning"):
        NoSuffixes(tmp_path)


def _folder_plugin(name: str, folder: type) -> object:
    """A plugin registering one sample folder, for the tests of a folder's mistakes."""

    class FolderPlugin:
        @metaemb.hookimpl
        def register_sample_folders(self, register):
            register(name, folder)

    return FolderPlugin()


def test_a_sample_folder_listing_a_file_twice_is_named(tmp_path, capsys):
    """A folder whose samples repeat a file trained on it twice an epoch, and its validation
    and generated trials scored the file against itself, flattering the EER (P16 F4)."""
    import helpers

    from metaemb.plugins.vision.folder import ImageFolder

    class Twice(ImageFolder):
        def __init__(self, root, samples=None):
            super().__init__(root, samples)
            self.samples = self.samples * 2

    data = helpers.demo_faces(tmp_path / "faces", identities=4, images_per_identity=3,
                              image_size=32)  # fmt: skip
    with plugins.plugin_registered(_folder_plugin("twice", Twice), "twice-plugin"):
        args = ["trials", "make", data, "--folder", "twice", "--out", tmp_path / "t.txt"]
        code, _, err = helpers.run_cli(args, capsys)
        said = " ".join(err.split())
        assert code == 2 and "sample folder 'twice' (plugin 'twice-plugin') lists" in said, err
        assert "more than once (of 24 samples)" in said
        args = ["train", "--data", data, "--set", "data.folder=twice", "--runs", tmp_path / "r",
                "--workers", "0"]  # fmt: skip
        code, _, err = helpers.run_cli(args, capsys)
        assert code == 2 and "more than once" in err and not list(tmp_path.rglob("*.pt"))
    assert not (tmp_path / "t.txt").exists()


def test_the_training_folder_read_with_other_folder_options_is_scored(tmp_path, capsys):
    """`evaluate RUN --data <its training folder> --folder-set …` choosing other files said the
    data 'changed … restore the data' (P16 F11): those files are scored as another folder's."""
    import helpers

    from metaemb.plugins.vision.folder import ImageFolder

    class Parts(ImageFolder):
        def __init__(self, root, samples=None, skip: str = "") -> None:
            self.skip = skip
            super().__init__(root, samples)

        def identity_of(self, path):
            name = path.split("/")[0]
            return None if name == self.skip else name

    data = helpers.demo_faces(tmp_path / "faces", identities=6, images_per_identity=3,
                              image_size=32)  # fmt: skip
    with plugins.plugin_registered(_folder_plugin("parts", Parts), "parts-plugin"):
        args = ["train", "--data", data, "--set", "data.folder=parts", "--set",
                "folder.skip=id0005", "--set", "train.epochs=1", "--set", "model.dim=8",
                "--set", "features.image_size=32", "--runs", tmp_path / "r", "--workers", "0"]  # fmt: skip
        assert helpers.run_cli(args, capsys)[0] == 0
        [run] = list((tmp_path / "r" / "face").iterdir())
        args = ["evaluate", run, "--data", data, "--folder-set", "skip=id0000", "--workers", "0",
                "--out", tmp_path / "ev"]  # fmt: skip
        code, out, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    assert "read as other files than in training" in " ".join(out.split())
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["trials"] == "all-identities"


def test_a_scorer_failing_in_fit_is_named_with_its_plugin():
    """A plugin scorer's fit raising RuntimeError (an eigendecomposition not converging) was a
    40-line traceback at the end of the first epoch (P20 F4): named as the scorer's failure."""
    import types

    from metaemb.core.config import resolve
    from metaemb.core.errors import DataError, MetaembError
    from metaemb.core.train.validation import Validator

    class Failing:
        def __init__(self, exc):
            self.exc = exc

        def fit(self, embeddings, labels):
            raise self.exc

    cfg = resolve("speaker")
    emb, labels = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    me = types.SimpleNamespace(config=cfg, scorer=Failing(RuntimeError("eigh failed\nmore")))
    with pytest.raises(MetaembError, match=r"^scorer 'cosine' \(plugin '\w+'\) failed fitting 6 "
                       r"training embeddings of 3 identities: RuntimeError: eigh failed$"):  # fmt: skip
        Validator._fit(me, emb, labels)
    me.scorer = Failing(DataError("within-class covariance is singular"))
    with pytest.raises(DataError, match=r"^scorer 'cosine' .*, fitted on 6 training embeddings: "
                       r"within-class covariance is singular$"):  # fmt: skip
        Validator._fit(me, emb, labels)
