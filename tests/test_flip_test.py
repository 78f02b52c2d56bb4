"""Test-time views (Features.test_views): the flip test of face verification protocols.

Outside training the model embeds each view of a batch and averages them: point embeddings by
their mean, a GME by the mean of its natural parameters (one observation, not two). The image
features' `test_flip` option makes the views an image and its mirror; `--features-set
test_flip=true` switches it on for a run trained without it (F4 F3, P21 F1).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from metaemb.core.config import resolve
from metaemb.core.data.pipeline import build_model
from metaemb.core.gme.algebra import GME
from metaemb.core.train.model import average_views


def test_the_model_averages_an_image_and_its_mirror_outside_training_only():
    cfg = resolve("face", sets=["features.image_size=16", "model.dim=8", "features.test_flip=true"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        one = model.head(model.backbone(x, None))
        mirror = model.head(model.backbone(x.flip(-1), None))
        assert torch.allclose(model(x), (one + mirror) / 2, atol=1e-6)
        model.features.test_flip = False
        assert torch.allclose(model(x), one, atol=1e-6)
        model.features.test_flip = True
        model.train()
        model.features.flip = False  # no random training flip: one view, as trained
        assert not torch.allclose(model(x), (one + mirror) / 2, atol=1e-4)


def test_views_of_a_gme_average_its_natural_parameters():
    a, b = torch.randn(2, 4), torch.rand(2, 4) + 0.1
    g = average_views([GME(a, b), GME(3 * a, 3 * b)])
    assert isinstance(g, GME)
    assert torch.allclose(g.a, 2 * a) and torch.allclose(g.b, 2 * b)


def test_embed_and_evaluate_with_a_flip_test_on_a_run_trained_without_it(
    tiny_face_run, tmp_path, capsys
):
    """embed --features-set test_flip=true gives the mean of the embeddings of the files and of
    their mirrored copies; evaluate writes beside the plain evaluation and records it."""
    data, run = tiny_face_run
    mirrored = tmp_path / "mirrored"
    shutil.copytree(data, mirrored)
    for png in mirrored.glob("*/*.png"):
        with Image.open(png) as im:
            Image.fromarray(np.asarray(im)[:, ::-1].copy()).save(png)
    out = {}
    for name, folder, extra in (("plain", data, []), ("mirror", mirrored, []),
                                ("flip", data, ["--features-set", "test_flip=true"])):  # fmt: skip
        args = ["embed", run, folder, "--out", tmp_path / f"{name}.pt", "--workers", "0", *extra]
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
        out[name] = torch.load(tmp_path / f"{name}.pt", weights_only=True)
    assert out["flip"]["paths"] == out["plain"]["paths"] == out["mirror"]["paths"]
    want = (out["plain"]["embeddings"] + out["mirror"]["embeddings"]) / 2
    assert torch.allclose(out["flip"]["embeddings"], want, atol=1e-5)
    assert not torch.allclose(out["flip"]["embeddings"], out["plain"]["embeddings"], atol=1e-4)

    code, _, err = run_cli(["evaluate", run, "--workers", "0"], capsys)
    assert code == 0, err
    args = ["evaluate", run, "--workers", "0", "--features-set", "test_flip=true"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    [flipped] = [p for p in run.glob("eval-validation-*") if (p / "metrics.json").is_file()]
    assert flipped.name.startswith("eval-validation-features-")  # named as what it is (R12 F6)
    flip_result = json.loads((flipped / "metrics.json").read_text())
    assert flip_result["features_set"] == flip_result["test_options"] == {"test_flip": True}
    plain_result = json.loads((run / "eval-validation" / "metrics.json").read_text())
    assert "test_options" not in plain_result  # one view: nothing to record (H25 F11)
    assert (run / "eval-validation" / "metrics.json").is_file()  # the plain one is kept
    # the run's own value is no other reading: the plain folder, no tag
    args = ["evaluate", run, "--workers", "0", "--features-set", "test_flip=false"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert len(list(run.glob("eval-validation*"))) == 2
    # a measure records it too
    args = ["evaluate", run, "--workers", "0", "--measure", "class", "--features-set",
            "test_flip=true"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    [measured] = run.glob("eval-class-features-*/metrics.json")
    assert json.loads(measured.read_text())["features_set"] == {"test_flip": True}


def test_features_set_refuses_an_option_that_changes_training(tiny_face_run, tmp_path, capsys):
    _, run = tiny_face_run
    args = ["evaluate", run, "--workers", "0", "--features-set", "image_size=64"]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    said = " ".join(err.split())
    assert "--features-set image_size: the run's features 'image' let test_flip be set" in said


@pytest.mark.parametrize("fmt", ["onnx"])
def test_an_export_with_the_flip_test_holds_it_in_its_graph(tiny_face_run, tmp_path, capsys, fmt):
    ort = pytest.importorskip("onnxruntime")
    data, run = tiny_face_run
    target = tmp_path / "flip.onnx"
    args = ["export", run, "--out", target, "--features-set", "test_flip=true"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    info = json.loads(target.with_name("flip.onnx.json").read_text())
    assert info["features_set"] == {"test_flip": True}
    args = ["embed", run, data, "--out", tmp_path / "flip.pt", "--workers", "0",
            "--features-set", "test_flip=true"]  # fmt: skip
    assert run_cli(args, capsys)[0] == 0
    want = torch.load(tmp_path / "flip.pt", weights_only=True)
    first = data / want["paths"][0]
    with Image.open(first) as im:
        x = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
    x = (x - 0.5) / 0.5
    session = ort.InferenceSession(str(target))
    got = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    assert np.allclose(got[0], want["embeddings"][0].numpy(), atol=1e-4)


def test_features_set_with_a_reference_model_is_refused(tmp_path, capsys):
    """A --reference model has no test views: its evaluation recorded the flip test and tagged
    its folder, with scores identical to the plain one (R12 F2)."""
    args = ["evaluate", "--reference", "dlib-resnet", "--data", tmp_path, "--features-set",
            "test_flip=true"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "a --reference model embeds one view" in " ".join(err.split())


def test_neighbours_embeds_its_probes_as_the_collection_was(tiny_face_run, tmp_path, capsys):
    """A collection embedded with the flip test was searched with one-view probes: a member
    file scored 0.9998 against itself (R12 F5). Probes follow the collection's record."""
    from metaemb.core.deploy.neighbours import find_neighbours

    data, run = tiny_face_run
    coll = tmp_path / "flip.pt"
    args = ["embed", run, data, "--out", coll, "--workers", "0", "--features-set",
            "test_flip=true"]  # fmt: skip
    assert run_cli(args, capsys)[0] == 0
    member = sorted(data.glob("*/*.png"))[5]
    found = find_neighbours(coll, [member], k=1, backend="exact", scorer="cosine", device="cpu")
    [[best]] = found.neighbours
    assert best.path == member.relative_to(data).as_posix()
    assert best.score == pytest.approx(1.0, abs=1e-6)


def test_a_sidecar_records_the_test_options_in_effect_from_training_too():
    """A run trained with test_flip exports the flip in its graph, and its sidecar said nothing
    of it (only an export --features-set recorded it) (R12 F12)."""
    from metaemb.core.deploy.export import _features_set
    from metaemb.plugins.vision.features import ImageFeatures

    assert _features_set(ImageFeatures(test_flip=True)) == {"test_options": {"test_flip": True}}
    assert _features_set(ImageFeatures()) == {}


def test_the_flip_test_is_part_of_which_embeddings_a_model_makes(tiny_face_run, capsys):
    """The same weights with and without the flip test had one digest: a gallery enrolled by a
    run trained with test_flip took the plain run's probes silently (H25 F8). `yes` and `true`
    are one setting, recorded typed (H25 F6)."""
    import contextvars

    from metaemb.core.data.pipeline import features_set_used, use_features_set
    from metaemb.core.deploy.loading import load_run

    _, run = tiny_face_run

    def digest(*items: str) -> tuple[str, dict]:
        use_features_set(list(items))
        loaded = load_run(run, "cpu")
        return loaded.digest, features_set_used(loaded.config)

    plain, none = contextvars.copy_context().run(digest)
    flipped, given = contextvars.copy_context().run(digest, "test_flip=yes")
    same, own = contextvars.copy_context().run(digest, "test_flip=false")
    assert plain != flipped and plain == same
    assert (none, given, own) == ({}, {"test_flip": True}, {})


def test_an_export_with_a_features_set_does_not_replace_the_plain_one(
    tiny_face_run, tmp_path, capsys
):
    """`export RUN --features-set test_flip=true` wrote RUN/best.onnx over the plain export, and
    the plain export over it (H25 F7): without --out it is named beside the plain one."""
    pytest.importorskip("onnx")
    run = tmp_path / "run"
    shutil.copytree(tiny_face_run[1], run)  # the shared run stays as it is
    for extra in ([], ["--features-set", "test_flip=true"], ["--features-set", "test_flip=yes"],
                  ["--features-set", "test_flip=false"]):  # fmt: skip
        code, _, err = run_cli(["export", run, *extra], capsys)
        assert code == 0, err
    [flip] = run.glob("best-features-*.onnx")  # one flip export (yes is true; false the plain)
    assert (run / "best.onnx").is_file()
    assert "features_set" in json.loads(flip.with_name(flip.name + ".json").read_text())
    assert "features_set" not in json.loads((run / "best.onnx.json").read_text())


def test_only_view_options_are_part_of_the_model_digest(tiny_face_run):
    """The digest took every test option a run trained with: a speaker run trained with
    max_eval_seconds=600 (the value the docs recommend) refused its own earlier galleries
    (H25 F17). A view (the flip) is part of it; a cap is not. ModelStamp.of takes the loaded
    run, so the Python recipe stamps what the commands check (H25 F16)."""
    from metaemb.core.deploy.loading import load_run
    from metaemb.core.deploy.stamp import ModelStamp, embedding_digest
    from metaemb.plugins.audio.features import AudioFeatures
    from metaemb.plugins.vision.features import ImageFeatures

    weights = "0123456789abcdef"
    assert embedding_digest(weights, AudioFeatures(max_eval_seconds=600)) == weights
    assert embedding_digest(weights, ImageFeatures()) == weights
    assert embedding_digest(weights, ImageFeatures(test_flip=True)) != weights
    run = load_run(tiny_face_run[1], "cpu")
    plain = run.digest
    run.model.features.test_flip = True  # switched on after the digest was read (R13 F8)
    assert run.digest != plain
    stamp = ModelStamp.of(run, torch.zeros(1, 16))
    assert stamp.digest == run.digest and stamp.config_hash == run.state["config_hash"]
    assert stamp.checkpoint == str(run.path)  # named in refusals (R13 F7)


def test_a_collection_whose_recorded_sets_are_damaged_is_said(tiny_face_run, tmp_path, capsys):
    """neighbours raised a JSONDecodeError traceback on a collection whose features_set record
    was damaged (H25 F13)."""
    from metaemb.core.deploy.neighbours import find_neighbours
    from metaemb.core.errors import MetaembError
    from metaemb.core.eval.retrieval import Collection

    data, run = tiny_face_run
    path = tmp_path / "c.pt"
    assert run_cli(["embed", run, data, "--out", path, "--workers", "0"], capsys)[0] == 0
    member = sorted(data.glob("*/*.png"))[0]
    for damaged in ('{"test_flip": tru', "null", "[1]", '"test_flip=true"'):  # R13 F4 too
        coll = Collection.load(path)
        coll.meta["features_set"] = damaged
        saved = tmp_path / "damaged.pt"
        coll.save(saved)
        with pytest.raises(MetaembError, match=r"damaged.pt': its record of its embed's "
                           r"--features-set is damaged"):  # fmt: skip
            find_neighbours(saved, [member], k=1, backend="exact", device="cpu")


def test_a_features_set_value_of_the_wrong_type_names_the_key(tiny_face_run, capsys):
    """`--features-set test_flip=maybe` said "config key '--features-set.test_flip'" (R12 F8)."""
    _, run = tiny_face_run
    args = ["evaluate", run, "--workers", "0", "--features-set", "test_flip=maybe"]
    code, _, err = run_cli(args, capsys)
    said = " ".join(err.split())
    assert code == 2 and "config key 'features.test_flip': expected true or false" in said


def test_a_view_that_changes_the_batch_is_refused_naming_the_features():
    """A view of another batch size made embed write 2 embeddings for 96 paths, and evaluate
    fail with an IndexError (P23 F1): views keep the input's shape, said by the features."""
    from metaemb.core.errors import PluginError

    cfg = resolve("face", sets=["features.image_size=16", "model.dim=8"])
    model = build_model(cfg).eval()
    model.features.test_views = lambda x: [x, x[:1]]
    with pytest.raises(PluginError, match=r"test_views gave views of shapes .* each view keeps"):
        model(torch.randn(3, 3, 16, 16))

    def broken(x):
        raise IndexError("rotation table out of range")

    model.features.test_views = broken  # named as the features' views (P23 F7)
    with pytest.raises(PluginError, match=r"test_views failed on a batch of shape .*IndexError"):
        model(torch.randn(3, 3, 16, 16))


def test_a_plugins_test_options_are_view_options_unless_it_says_otherwise():
    """A plugin written from the docs, which did not name view_options, got a digest that
    ignored its views (P23 F3): every test option is a view option by default."""
    from metaemb.core.deploy.stamp import embedding_digest
    from metaemb.plugins.vision.features import ImageFeatures

    class Rotated(ImageFeatures):
        test_options = ("test_flip", "test_rotate")

        def __init__(self, test_rotate: bool = False, **kw):
            super().__init__(**kw)
            self.test_rotate = test_rotate

    assert embedding_digest("w", Rotated(test_rotate=True)) != "w"


def test_test_options_are_checked_when_the_plugin_registers():
    """A misspelt test_options entry made --features-set refuse the option it meant, and a view
    option without hash_neutral gave every earlier run a new folder, both found late (P23 F5,
    F6): said when the plugin registers."""
    import warnings

    from metaemb.core.errors import PluginError
    from metaemb.core.plugin.registry import Registry
    from metaemb.plugins.vision.features import ImageFeatures

    class Misspelt(ImageFeatures):
        test_options = ("test_flop",)

    with pytest.raises(PluginError, match=r"test_options names 'test_flop', which is not one"):
        Registry("features").add("misspelt", Misspelt, "palm")

    class Unneutral(ImageFeatures):
        hash_neutral = None  # the flip without its neutral default

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Registry("features").add("unneutral", Unneutral, "palm")
    assert any("view option 'test_flip' has no hash_neutral default" in str(w.message)
               for w in caught)  # fmt: skip
