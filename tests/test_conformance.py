"""Conformance of every registered component, built-in or plugin (the timm-style contract test).

Parametrised over the registries as loaded (so an installed plugin's components are checked too):
- each component's options round-trip through `metaemb list KIND --json`: the listed names are its
  options, and every listed default, read back as a user value, validates to the real default;
- each builds with its defaults where that needs no data (otherwise it is skipped with the reason);
- outputs have the declared shape and type: a backbone fed a batch of its declared input kind
  (made by a registered Features that yields that kind) gives [N, feature_dim]; heads give [N, dim]
  or a GME in float32; objectives give a finite scalar loss that back-propagates; samplers give
  valid, repeatable batches (training's own check); augmentations keep the batch contract on a
  batch of their kind (training's own check); scorers give [N1, N2] matrices and [N] pair scores;
  features yield what they declare.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import run_cli

from metaemb import hookimpl
from metaemb.core.data.collate import checked_batch
from metaemb.core.data.dataset import checked_values
from metaemb.core.errors import ConfigError, DataError
from metaemb.core.gme.algebra import GME
from metaemb.core.plugin.components import build, part_table, validate_options
from metaemb.core.plugin.contract import Kind, declared
from metaemb.core.plugin.interfaces import Augmentation, Backbone, Features, Frontend, SampleFolder
from metaemb.core.plugin.manager import plugin_registered, registry, state
from metaemb.core.plugin.options import options_of, parts_of
from metaemb.core.train.augment_checks import check_output
from metaemb.core.train.checks.batches import check_batches
from metaemb.core.train.checks.input_spec import _not_plain

# -- what to test -------------------------------------------------------------------------------


def components(*kinds: str) -> list:
    return [pytest.param(k, n, id=f"{k}:{n}") for k in kinds for n in registry(k).names()]


ALL = components(*state().registries())  # core kinds and those plugins add


# -- dummy inputs for the raw kinds that folders yield ------------------------------------------
def _raw(kind) -> torch.Tensor | None:
    """One raw sample of a declared Kind, or None when this test knows no such kind."""
    builtin = _builtin_raw(kind)
    return builtin if builtin is not None else next(iter(_examples(kind)), None)


def _raws(kind) -> list:
    """Raw samples of a declared Kind, of different lengths where it varies in length: a
    waveform cut short beside the built-in one, or every example a plugin's folder gives."""
    builtin = _builtin_raw(kind)
    if builtin is None:
        return list(_examples(kind))
    if kind.name == "waveform":
        return [builtin, builtin[: int(0.7 * len(builtin))]]
    return [builtin]


def _builtin_raw(kind) -> torch.Tensor | None:
    """One raw sample of a kind the built-in folders yield (None for any other)."""
    g = torch.Generator().manual_seed(0)
    if kind.name in ("image", "aligned-image"):
        return torch.randint(0, 256, (3, 72, 64), generator=g, dtype=torch.uint8)
    if kind.name == "waveform":
        rate = kind.param("rate") or 16000
        return 0.1 * torch.randn(int(rate), generator=g)  # one second
    if kind.name == "vector":
        return torch.randn(kind.param("size") or 32, generator=g)
    return None


def _examples(kind, through_frontends: bool = True) -> list:
    """Raw samples of a kind only a plugin knows: its sample folder's `examples()`, or, for a
    kind only a frontend makes (an ECG resampled to a fixed rate), the examples of the kind
    the frontend accepts run through it (built with its defaults)."""
    for name in registry("sample_folders").names():
        yields = _kinds("sample_folders", name, "yields", _full("sample_folders", name))
        if yields and any(y.name == kind.name for y in yields):
            found = list(_entry("sample_folders", name).factory.examples())
            if found:
                return found
    return _through_a_frontend(kind) if through_frontends else []


def _through_a_frontend(kind) -> list:
    """Examples of `kind` made by a registered frontend yielding it from a folder's examples
    (one step: a frontend's input is what a folder yields); [] when none can."""
    for name in registry("frontends").names():
        yields = _kinds("frontends", name, "yields", _full("frontends", name))
        if not yields or not any(y.name == kind.name for y in yields):
            continue
        for take in _kinds("frontends", name, "accepts", _full("frontends", name)) or ():
            builtin = _builtin_raw(take)
            raws = [builtin] if builtin is not None else _examples(take, through_frontends=False)
            if not raws:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    frontend = build("frontends", name, {}, root=Path(tmp),
                                     cache_dir=Path(tmp) / "cache")  # fmt: skip
                    return [frontend(r, f"someone/example{i}", Path(tmp))
                            for i, r in enumerate(raws)]  # fmt: skip
                except DataError:  # it needs what an example cannot give (a landmark file)
                    continue
    return []


def _two_lengths(raw, kind) -> tuple | None:
    """A long and a short raw sample: a waveform and its first 60 %, or a plugin's examples."""
    if isinstance(raw, torch.Tensor) and raw.dim() == 1:
        return raw, raw[: len(raw) * 3 // 5]
    found = _examples(kind)
    if len(found) >= 2 and all(isinstance(x, torch.Tensor) for x in found):
        found = sorted(found, key=lambda x: -x.numel())  # the long one first, as promised
    return (found[0], found[-1]) if len(found) >= 2 else None


def _entry(kind: str, name: str):
    return registry(kind).entry(name)


def _kinds(kind: str, name: str, attr: str, options=None):
    return declared(_entry(kind, name), attr, options or {})


@functools.cache
def _listing(kind: str) -> dict:
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        code, _, _ = run_cli(["list", kind, "--json"])
    assert code == 0
    data = json.loads(buf.getvalue())
    return {c["name"]: c for c in data["components"]}


# -- options round-trip through `metaemb list KIND --json` --------------------------------------
@pytest.mark.parametrize(("kind", "name"), ALL)
def test_options_round_trip_through_list_json(kind, name):
    listed = _listing(kind)[name]
    assert listed["plugin"] == _entry(kind, name).plugin
    factory = _entry(kind, name).factory
    if kind == "modalities":
        assert listed["components"]["sample_folder"] == factory.sample_folder
        return
    real = options_of(factory)
    assert sorted(listed["options"]) == sorted(real)
    # a None default means "unset" and cannot be written in TOML: only real values round-trip
    given = {
        k: o["default"]
        for k, o in listed["options"].items()
        if not o["required"] and o["default"] is not None
    }
    back = validate_options(kind, name, given, kind)
    parts = parts_of(factory)
    for key, value in back.items():
        default = real[key].default
        if key in parts and isinstance(parts[key], str):  # a nested part: compare as tables
            value, default = part_table(value), part_table(default)
        if isinstance(default, tuple):
            default = list(default)
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(default, float) and math.isnan(default):
            continue
        assert value == default or str(value) == str(default), (key, value, default)


# -- builds with its defaults --------------------------------------------------------------------
NEEDS_DATA = {
    "sample_folders": "scans a data folder at construction (covered by each folder's tests)",
    "protocols": "reads a trial list from disk (covered by tests/test_trials.py and the protocols' tests)",
    "demo_data": "writes a dataset (covered by each generator's tests)",
}


def _width(kind: str, name: str) -> int:
    """The in_channels a component gets in training: for a backbone, the out_channels of the
    features that feed it (a keystroke backbone may rightly refuse 3); else its own default,
    else 3 (an image's channels)."""
    import inspect

    if kind == "backbones":
        accepted = _kinds(kind, name, "accepts", _full(kind, name))
        found = _features_for(accepted) if accepted else None
        if found is not None:
            return int(found[1].out_channels)
    try:
        param = inspect.signature(_entry(kind, name).factory).parameters.get("in_channels")
    except (TypeError, ValueError):
        param = None
    own = getattr(param, "default", inspect.Parameter.empty)
    return own if isinstance(own, int) and own > 0 else 3


def build_default(kind: str, name: str, tmp_path, **context):
    if kind in NEEDS_DATA:
        pytest.skip(f"{kind}: {NEEDS_DATA[kind]}")
    if kind == "modalities":
        return _entry(kind, name).factory
    ctx = {"root": tmp_path, "cache_dir": tmp_path / "cache", "in_channels": _width(kind, name)}
    ctx |= {"in_features": 16, "dim": 8, "labels": [0, 0, 1, 1, 2, 2, 3, 3] * 4}
    ctx |= {"batch_size": 8, "seed": 0, "rank": 0, "world_size": 1, "out": tmp_path / "out"}
    ctx |= context
    return build_or_skip(kind, name, {}, **ctx)


def build_or_skip(kind: str, name: str, options: dict, **context):
    """build(), where an optional extra that is not installed is a skip, not a failure."""
    try:
        return build(kind, name, options, **context)
    except Exception as exc:
        missing = isinstance(exc, ImportError) or isinstance(exc.__cause__, ImportError)
        if missing or "MissingExtra" in {c.__name__ for c in type(exc).__mro__}:
            pytest.skip(f"{kind} '{name}' needs an optional dependency: {exc}")
        raise


@pytest.mark.parametrize(("kind", "name"), ALL)
def test_builds_with_its_defaults(kind, name, tmp_path):
    obj = build_default(kind, name, tmp_path)
    assert obj is not None
    if kind == "modalities":
        for section, kind_of in [
            ("sample_folder", "sample_folders"),
            ("frontend", "frontends"),
            ("features", "features"),
            ("backbone", "backbones"),
        ]:
            assert getattr(obj, section) in registry(kind_of), (section, getattr(obj, section))
        if obj.demo_data:
            assert obj.demo_data in registry("demo_data")
        from metaemb.core.config import resolve

        resolve(name, None, [])  # its own chain of components fits (contract check included)


# -- declared shapes and types -------------------------------------------------------------------
SMALL = {"image_size": 32}


def _features_for(accepted) -> tuple | None:
    """A registered Features (name, built, raw sample) that yields something `accepted` takes.
    The built-in plugins' come first: a plugin's 1-channel image features also yield
    image-tensor, and a built-in backbone must still be fed what it was written for."""
    builtin = {"core", "vision", "audio"}
    names = sorted(
        registry("features").names(), key=lambda n: _entry("features", n).plugin not in builtin
    )
    for fname in names:
        yields = _kinds("features", fname, "yields", _full("features", fname))
        takes = _kinds("features", fname, "accepts", _full("features", fname))
        if not yields or not takes or any(k.name in ("*", "=") for k in yields):
            continue
        if not any(y.fits(a) for y in yields for a in accepted):
            continue
        for kind in takes:
            raw = _raw(kind)
            if raw is not None:
                # small inputs keep the big backbones quick (only options the features have)
                options = options_of(_entry("features", fname).factory)
                small = {k: v for k, v in SMALL.items() if k in options}
                return fname, build("features", fname, small), raw, kind
    return None


def _full(kind: str, name: str) -> dict:
    from metaemb.core.plugin.components import full_options

    return full_options(kind, name)


def _batch(features, raw, n: int = 2, short=None):
    """A batch as training makes it, through the same checks (prepare's values, collate's
    lengths); `short`, a shorter raw sample, goes second so that collate must pad."""
    features.eval()
    raws = [raw] * n if short is None else [raw, short, *[raw] * (n - 2)]
    items = [checked_values(features.prepare(r, train=False), features) for r in raws]
    x, lengths = checked_batch(features.collate(items), items, features)
    with torch.no_grad():
        return features(x, lengths)


@pytest.mark.parametrize(("kind", "name"), components("features"))
def test_features_turn_a_sample_of_their_declared_kind_into_a_batch(kind, name):
    takes = _kinds(kind, name, "accepts", _full(kind, name))
    f = build(kind, name, {})
    short = None
    if takes and any(k.name == "*" for k in takes):  # accepts anything: a [channels, T] matrix
        raw = torch.randn(f.out_channels, 10)
    else:
        found = next(((r, k) for k in takes or () if (r := _raw(k)) is not None), None)
        if found is None:
            pytest.skip(f"features '{name}' declares no input kind this test can make ({takes})")
        raw, pair = found[0], _two_lengths(*found)
        short = pair[1] if pair else None
    assert _not_plain(f.input_spec(), "input_spec()") is None, "checkpoints hold plain values"
    try:
        x, lengths = _batch(f, raw, n=3, short=short)
    except DataError:  # inputs of one size (a vector): the short one is refused, rightly
        x, lengths = _batch(f, raw, n=3)
    assert isinstance(x, torch.Tensor) and x.shape[0] == 3 and x.is_floating_point()
    assert lengths is None or lengths.shape == (3,)
    if x.ndim >= 2:
        assert x.shape[1] == f.out_channels, "out_channels must be the input width backbones get"


@pytest.mark.parametrize(("kind", "name"), components("frontends"))
def test_frontend_returns_a_sample_or_a_data_error(kind, name, tmp_path):
    """On a sample of its declared kind a frontend returns a tensor sample, or refuses it with a
    DataError (a detector that finds no face, a missing landmark file): never anything else."""
    takes = _kinds(kind, name, "accepts", _full(kind, name))
    if takes and any(k.name == "*" for k in takes):
        raw = torch.randn(3, 10)
    else:
        raw = next((r for r in map(_raw, takes or ()) if r is not None), None)
    if raw is None:
        pytest.skip(f"frontend '{name}' declares no input kind this test can make ({takes})")
    frontend = build_default(kind, name, tmp_path)
    assert isinstance(frontend.key(), str) and frontend.key()
    try:
        out = frontend(raw, "someone/sample.x", tmp_path)
    except DataError as exc:
        assert str(exc)  # a refusal says why
        return
    assert isinstance(out, torch.Tensor) and out.numel() > 0


@pytest.mark.parametrize(("kind", "name"), components("backbones"))
def test_backbone_gives_n_by_feature_dim(kind, name):
    accepted = _kinds(kind, name, "accepts", _full(kind, name))
    if not accepted:
        pytest.skip(f"backbone '{name}' declares no input kind (`accepts`)")
    found = _features_for(accepted)
    if found is None:
        pytest.skip(
            f"backbone '{name}' accepts {accepted}: no registered features yields it from an "
            "input kind this test can make (images, waveforms, vectors, a sample folder's "
            "examples(), or those run through a registered frontend); test it yourself"
        )
    _, features, raw, _ = found
    x, lengths = _batch(features, raw)
    net = build_or_skip(kind, name, {}, in_channels=features.out_channels).eval()
    with torch.no_grad():
        out = net(x, lengths)
    assert out.shape == (2, net.feature_dim) and net.feature_dim > 0
    assert out.dtype == x.dtype, f"backbone '{name}' returns {out.dtype} for {x.dtype} input"
    assert torch.isfinite(out).all()
    assert isinstance(net.trunk(), torch.nn.Module)


@pytest.mark.parametrize(("kind", "name"), components("backbones"))
def test_backbone_embeds_a_padded_sample_as_it_would_alone(kind, name):
    """Evaluation batches utterances of every length together: padding must not leak."""
    accepted = _kinds(kind, name, "accepts", _full(kind, name))
    found = _features_for(accepted) if accepted else None
    if found is None:
        pytest.skip(f"backbone '{name}': no input of its kind that this test can make")
    _, features, raw, raw_kind = found
    pair = _two_lengths(raw, raw_kind)
    if pair is None:
        pytest.skip(f"backbone '{name}' takes fixed-size inputs (nothing is padded)")
    features.eval()
    try:
        long, short = (features.prepare(r, train=False) for r in pair)
    except DataError:  # a vector of one size, say
        pytest.skip(f"the features for '{name}' take inputs of one size (nothing is padded)")
    x, lengths = features.collate([long, short])
    if lengths is None or int(lengths.min()) == int(lengths.max()):
        pytest.skip(f"the features for '{name}' make fixed-size inputs (nothing is padded)")
    net = build_or_skip(kind, name, {}, in_channels=features.out_channels).eval()
    with torch.no_grad():
        batched = net(*features(x, lengths))[1]
        alone = net(*features(*features.collate([short])))[0]
    gap = float((batched - alone).abs().max())
    assert gap <= 1e-4 * max(1.0, float(alone.abs().max())), f"padding leaks: {gap:.3g}"


def _head_output(head_name: str, n: int = 8, dim: int = 8):
    head = build("heads", head_name, {}, in_features=16, dim=dim)
    return head, head(torch.randn(n, 16, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(("kind", "name"), components("heads"))
def test_head_outputs_its_declared_kind(kind, name):
    head, out = _head_output(name)
    if head.output == "gme":
        assert isinstance(out, GME) and out.a.shape == (8, 8) and out.b.shape == (8, 8)
        assert bool((out.b >= 0).all())
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (8, 8)
    parts = (out.a, out.b) if isinstance(out, GME) else (out,)
    assert all(t.dtype == torch.float32 for t in parts), "the backbone's dtype (float32)"


def _embeddings_for(needs: str, n: int = 16, dim: int = 8):
    head = "gme" if needs == "gme" else "linear"
    return _head_output(head, n=n, dim=dim)[1]


@pytest.mark.parametrize(("kind", "name"), components("objectives"))
def test_objective_returns_a_finite_scalar_loss_with_gradients(kind, name):
    obj = build(kind, name, {})
    if obj.teacher_kind() if hasattr(obj, "teacher_kind") else False:
        obj.teacher_outputs = torch.randn(16, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3] * 2)
    emb = _embeddings_for(getattr(obj, "needs", "point"))
    classifier = obj.build_classifier(8, 4)
    loss = obj(emb, labels, classifier)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and torch.isfinite(loss)
    assert loss.requires_grad, "the loss must carry a gradient back to the embeddings"
    loss.backward()


@pytest.mark.parametrize(("kind", "name"), components("samplers"))
def test_sampler_yields_valid_index_batches(kind, name, tmp_path):
    sampler = build_default(kind, name, tmp_path)
    labels = [0, 0, 1, 1, 2, 2, 3, 3] * 4
    if getattr(sampler, "updates_from_embeddings", False):
        sampler.update(torch.randn(len(labels), 8))
    batches = list(sampler)
    assert batches and len(batches) == len(sampler)
    for batch in batches:
        assert len(batch) > 0 and all(0 <= i < len(labels) for i in batch)
    config = SimpleNamespace(train=SimpleNamespace(sampler=name, batch_size=8))
    check_batches(sampler, len(labels), config, twice=True)  # training's own check


def _augmentation_batch(aug) -> tuple | None:
    """A batch as the augmentation meets it in training: the collated output of `prepare` of
    features taking its kind (stage "input"), or the features' output (stage "features")."""
    attr = "accepts" if aug.stage == "input" else "yields"
    builtin = {"core", "vision", "audio"}
    names = sorted(
        registry("features").names(), key=lambda n: _entry("features", n).plugin not in builtin
    )
    for fname in names:
        kinds = _kinds("features", fname, attr, _full("features", fname)) or ()
        if aug.accepts is not None and not any(aug.accepts.fits(k) for k in kinds):
            continue
        takes = _kinds("features", fname, "accepts", _full("features", fname)) or ()
        raws = next((r for k in takes if (r := _raws(k))), None)
        if not raws:
            continue
        features = build("features", fname, {})
        features.eval()
        # samples of different lengths where the kind varies in length: an augmentation that
        # cuts x and keeps the lengths passed on four copies of one sample (P19 F4)
        items = [checked_values(features.prepare(r, train=False), features)
                 for r in (raws * 4)[:4]]  # fmt: skip
        x, lengths = checked_batch(features.collate(items), items, features)
        if aug.stage == "features":
            with torch.no_grad():
                x, lengths = features(x, lengths)
        return features, x, lengths
    return None


@pytest.mark.parametrize(("kind", "name"), components("augmentations"))
def test_augmentation_keeps_the_batch_contract(kind, name, tmp_path):
    aug = build_default(kind, name, tmp_path)
    found = _augmentation_batch(aug)
    if found is None:
        pytest.skip(f"augmentation '{name}': no registered features give a {aug.accepts} batch")
    features, x, lengths = found
    aug.setup(features.input_spec())
    aug.train()
    labels = torch.tensor([0, 1, 2, 3])
    classes = aug.num_classes(4)
    torch.manual_seed(0)
    out = aug(x.float(), lengths, labels)
    check_output(f"augmentation '{name}'", out, x.float(), lengths, classes)  # training's check
    assert torch.isfinite(out[0]).all(), "finite in, finite out"


@pytest.mark.parametrize(("kind", "name"), components("scorers"))
def test_scorer_gives_matrix_and_pair_scores(kind, name):
    scorer = build(kind, name, {})
    needs = getattr(scorer, "needs", "point")
    g = torch.Generator().manual_seed(2)
    # 320 identities × 2: enough for every default (AS-norm's top 300 cohort speakers)
    labels = torch.arange(320).repeat_interleave(2)
    if needs == "gme":
        train = GME(torch.randn(640, 8, generator=g), torch.rand(640, 8, generator=g) + 0.1)
    else:
        centres = 3 * torch.randn(320, 8, generator=g)
        train = centres[labels] + torch.randn(640, 8, generator=g)
    scorer.fit(train, labels)
    a, b = train[:5], train[5:12]
    m = scorer.score_matrix(a, b)
    assert m.shape == (5, 7) and torch.isfinite(m).all()
    pairs = scorer.score(train[:5], train[5:10])
    assert pairs.shape == (5,)
    torch.testing.assert_close(pairs.double(), m[:, :5].diagonal().double(), atol=1e-4, rtol=1e-4)


# -- a plugin's own kind of data: its folder's examples() reach the checks above ------------------
class _TapFolder(SampleFolder):
    """Tap sequences, [T, 2] (interval, pressure): a kind only this plugin knows."""

    extensions = (".tap",)
    yields = Kind("taps")

    def load(self, path):
        raise NotImplementedError  # the conformance checks never read files

    @classmethod
    def examples(cls) -> list:
        g = torch.Generator().manual_seed(0)
        return [torch.rand(n, 2, generator=g) for n in (40, 23)]


class _TapFeatures(Features):
    accepts = Kind("taps")
    yields = Kind("tap-matrix")
    out_channels = 2

    def prepare(self, raw, train):
        return raw.T.float()

    def collate(self, items):
        lengths = torch.tensor([x.shape[-1] for x in items])
        batch = torch.zeros(len(items), 2, int(lengths.max()))
        for i, x in enumerate(items):
            batch[i, :, : x.shape[-1]] = x
        return batch, lengths


class _TapNet(Backbone):
    accepts = Kind("tap-matrix")

    def __init__(self, in_channels: int = 2) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(in_channels, 4, 3, padding=1)
        self.feature_dim = 4

    def forward(self, x, lengths=None):
        h = self.conv(x)
        if lengths is None:
            return h.mean(-1)
        mask = (torch.arange(h.shape[-1])[None, :] < lengths[:, None]).to(h.dtype)[:, None]
        return (h * mask).sum(-1) / lengths[:, None].to(h.dtype)


class _LeakyTapNet(_TapNet):
    def forward(self, x, lengths=None):
        return self.conv(x).mean(-1)  # the padding counts in the mean


class _TapPlugin:
    @hookimpl
    def register_sample_folders(self, register):
        register("taps", _TapFolder)

    @hookimpl
    def register_features(self, register):
        register("taps", _TapFeatures)

    @hookimpl
    def register_backbones(self, register):
        register("tapnet", _TapNet)
        register("leaky-tapnet", _LeakyTapNet)


def test_a_plugins_own_data_kind_is_checked_through_its_examples():
    """Without examples() these checks would skip a new kind; with them, they run and fail on
    a backbone whose pooling counts the padding."""
    with plugin_registered(_TapPlugin(), "taps-plugin"):
        test_features_turn_a_sample_of_their_declared_kind_into_a_batch("features", "taps")
        test_backbone_gives_n_by_feature_dim("backbones", "tapnet")
        test_backbone_embeds_a_padded_sample_as_it_would_alone("backbones", "tapnet")
        with pytest.raises(AssertionError, match="padding leaks"):
            test_backbone_embeds_a_padded_sample_as_it_would_alone("backbones", "leaky-tapnet")


# -- a kind only a plugin frontend makes: the folder's examples run through it -----------------
class _EcgFolder(SampleFolder):
    """Records at their own sampling rates: the frontend resamples them to one."""

    extensions = (".ecgx",)
    yields = Kind("ecg-record")

    def load(self, path):
        raise NotImplementedError

    @classmethod
    def examples(cls) -> list:
        g = torch.Generator().manual_seed(0)
        return [{"fs": fs, "signal": torch.randn(2, fs * 2, generator=g)} for fs in (250, 500)]


class _Resample(Frontend):
    accepts = Kind("ecg-record")
    yields = Kind("ecg-signal")

    def __call__(self, raw, path, root):
        step = raw["fs"] // 250  # to 250 Hz
        return raw["signal"][:, ::step][:, : 250 + raw["fs"] // 5]  # two lengths


class _EcgFeatures(_TapFeatures):
    accepts = Kind("ecg-signal")
    yields = Kind("tap-matrix")

    def prepare(self, raw, train):
        return raw.float()


class _EcgNoise(Augmentation):
    stage = "input"
    accepts = Kind("ecg-signal")

    def forward(self, x, lengths, labels):
        return x + 0.01 * torch.randn_like(x), lengths, labels


class _WidthCheckingNet(_TapNet):
    """Refuses any width but its features' (a key-code channel goes to an embedding)."""

    def __init__(self, in_channels: int = 2) -> None:
        if in_channels != 2:
            raise ConfigError(f"takes the 2 channels of its features, got {in_channels}")
        super().__init__(in_channels)


class _EcgPlugin:
    @hookimpl
    def register_sample_folders(self, register):
        register("ecg-records", _EcgFolder)

    @hookimpl
    def register_frontends(self, register):
        register("ecg-resample", _Resample)

    @hookimpl
    def register_features(self, register):
        register("ecg-features", _EcgFeatures)

    @hookimpl
    def register_backbones(self, register):
        register("ecgnet", _TapNet)
        register("leaky-ecgnet", _LeakyTapNet)
        register("strict-ecgnet", _WidthCheckingNet)

    @hookimpl
    def register_augmentations(self, register):
        register("ecg-noise", _EcgNoise)


def _must_run(check, *args) -> None:
    """Run a conformance check, failing where it would skip (this test is about it not skipping)."""
    try:
        check(*args)
    except pytest.skip.Exception as exc:
        pytest.fail(f"{check.__name__} skipped: {exc}")


def test_a_kind_only_a_plugin_frontend_makes_is_checked_through_it():
    """Features taking a kind only the plugin's frontend makes were skipped, and with them the
    backbone and every augmentation of the modality (P17 F5); the folder's examples() now run
    through the frontend, so they are checked, and a leaky backbone fails."""
    features = test_features_turn_a_sample_of_their_declared_kind_into_a_batch
    padded = test_backbone_embeds_a_padded_sample_as_it_would_alone
    with plugin_registered(_EcgPlugin(), "ecg-plugin"), tempfile.TemporaryDirectory() as tmp:
        _must_run(features, "features", "ecg-features")
        _must_run(test_backbone_gives_n_by_feature_dim, "backbones", "ecgnet")
        _must_run(padded, "backbones", "ecgnet")
        with pytest.raises(AssertionError, match="padding leaks"):
            padded("backbones", "leaky-ecgnet")
        _must_run(test_augmentation_keeps_the_batch_contract, "augmentations", "ecg-noise",
                  Path(tmp))  # fmt: skip
        # built with its features' width, not an image's 3, which it rightly refuses (P18 F5)
        test_builds_with_its_defaults("backbones", "strict-ecgnet", Path(tmp))


def test_mobilenet_batchnorm_momentum_and_the_runs_saved_before_it():
    """torchvision's momentum 0.01 left the running statistics near their start for thousands
    of steps (every sample embedded alike in a short run); 0.1 is the default now, and a saved
    configuration without the option rebuilds with 0.01 and keeps its hash."""
    from metaemb.core.config import from_dict, resolve

    net = build("backbones", "mobilenet_v3_small", {})
    momenta = {m.momentum for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.1}
    old = resolve("face", sets=["model.backbone=mobilenet_v3_small", "backbone.bn_momentum=0.01"])
    saved = old.to_dict()
    saved["backbone"].pop("bn_momentum")
    rebuilt = from_dict(saved)
    assert rebuilt.options("backbone")["bn_momentum"] == 0.01
    assert (
        rebuilt.hash()
        == old.hash()
        != resolve("face", sets=["model.backbone=mobilenet_v3_small"]).hash()
    )
