"""The core names no modality, and what a modality owns reaches the core only through the registry.

- No file under metaemb/core/ names images, audio, fbank, dlib, LFW or VoxCeleb (case-insensitive,
  as a word or a word part such as `kaldi_fbank`). The exceptions: the table of optional packages
  (core/optional.py), whose entries are PyPI/import names and extras, and the third-party calls
  that hand TensorBoard a rendered plot (`add_image`, PIL's `Image`).
- Hookspecs a plugin adds (`metaemb_hookspecs`, e.g. the vision plugin's landmark sources) work
  whichever plugin registers first, and a third party's landmark source combines with the
  built-in ones in the align frontend.
- Trial-list formats and export adapters are registered components: a plugin's format is read by
  `read_trials` (auto-detected) and a plugin's adapter is what `export` uses for its input kind.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import metaemb
from metaemb import hookimpl
from metaemb.core.plugin import manager

CORE = Path(metaemb.__file__).parent / "core"
WORDS = re.compile(r"(?<![a-z])(images?|audio|fbank|dlib|lfw|voxceleb)(?![a-z])")


def names_modality(line: str) -> bool:
    """CamelCase split into words, lower-cased, then the words above (alone or in a_b_c)."""
    return bool(WORDS.search(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", line).lower()))


# core/optional.py: `"import name": ("extra", "distribution"),` entries of its OPTIONAL table
OPTIONAL_ENTRY = re.compile(r'^\s*"[\w.]+": \("[\w-]+", "[\w.-]+"\),\s*$')
# third-party APIs that pass a rendered plot as a picture (TensorBoard's add_image, PIL's Image)
PLOT_APIS = re.compile(r"\.add_image\(|from PIL import Image$|Image\.open\(")


def modality_words() -> list[str]:
    found = []
    for path in sorted(CORE.rglob("*.py")):
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not names_modality(line):
                continue
            if path.name == "optional.py" and OPTIONAL_ENTRY.match(line):
                continue
            if PLOT_APIS.search(line.strip()):
                continue
            found.append(f"{path.relative_to(CORE.parent)}:{no}: {line.strip()}")
    return found


def test_no_core_module_names_a_modality():
    assert modality_words() == []


def test_the_word_check_would_catch_a_modality():
    for line in ("load the images", "KaldiFbank", "kaldi_fbank", "LFW pairs", "import dlib"):
        assert names_modality(line), line
    for line in ("imagenet-free", "audiology"):  # longer words are not the modality's name
        assert not names_modality(line), line


class ThirdPartyLandmarks:
    """A landmark source from another plugin: every face's landmarks at the template."""

    cacheable = False

    def __init__(self, root=None) -> None:
        self.root = root

    def key(self) -> str:
        return "third-party"

    def __call__(self, raw, path, root):
        from metaemb.plugins.vision.landmarks import Landmarks

        return Landmarks("no_face", None, "mtcnn5", 0)


class LandmarkPlugin:
    @hookimpl
    def register_landmark_sources(self, register) -> None:
        register("third-party", ThirdPartyLandmarks, description="test source")


@pytest.fixture
def fresh_plugins():
    manager.reset()
    yield
    manager.reset()


def test_a_plugin_hookspec_accepts_implementations_registered_before_it(fresh_plugins):
    st = manager.PluginState()
    st.pm.register(LandmarkPlugin(), name="early")  # before the vision plugin adds the spec
    assert "landmark_sources" not in st.kinds
    st.load()
    assert "landmark_sources" in st.kinds
    assert st.registries()["landmark_sources"].names() == ["dlib", "file", "third-party"]
    assert st.pm.hook.register_landmark_sources.spec is not None


def test_a_plugin_landmark_source_combines_with_the_built_ins(fresh_plugins, tmp_path):
    from metaemb.plugins.vision.frontend import AlignFrontend

    with manager.plugin_registered(LandmarkPlugin(), "late"):  # after the vision plugin
        assert manager.registry("landmark_sources").names() == ["dlib", "file", "third-party"]
        front = AlignFrontend(root=tmp_path, source="third-party", crop_size=112)
        assert front.source.key() == "third-party"
        assert "landmark_sources" in manager.kinds()
    assert "third-party" not in manager.registry("landmark_sources")


def test_trial_formats_and_export_adapters_are_registered_by_their_plugins():
    formats = {e.name: e.plugin for e in manager.registry("trial_formats").entries()}
    assert {"kaldi": "audio", "lfw": "vision", "voxceleb": "audio"}.items() <= formats.items()
    adapters = {e.name: e.plugin for e in manager.registry("export_adapters").entries()}
    assert {"image": "vision", "kaldi_fbank": "audio"}.items() <= adapters.items()
    assert "core" not in {*formats.values(), *adapters.values()}  # installed plugins may add more


def test_a_plugin_trial_format_is_detected_and_read(tmp_path):
    from metaemb.core.eval.trials import TrialFormat, TrialList, read_trials, write_trials
    from metaemb.core.plugin.interfaces import Trial

    class Arrows(TrialFormat):
        """`enroll -> test : same|different`"""

        detect_order = 5

        def detect(self, fields):
            return len(fields) == 5 and fields[1] == "->"

        def read(self, path, root):
            out = [
                Trial((f[0],), f[2], int(f[4] == "same"))
                for f in (line.split() for line in path.read_text().splitlines())
            ]
            return TrialList(out, folds=1)

        def write(self, path, trials, **options):
            path.write_text(
                "".join(
                    f"{t.enroll[0]} -> {t.test} : {'same' if t.label else 'different'}\n"
                    for t in trials
                )
            )

    class ArrowPlugin:
        @hookimpl
        def register_trial_formats(self, register):
            register("arrows", Arrows)

    trials = [Trial(("a/1",), "a/2", 1), Trial(("a/1",), "b/1", 0)]
    with manager.plugin_registered(ArrowPlugin(), "arrows"):
        write_trials(tmp_path / "t.txt", trials, "arrows")
        assert (tmp_path / "t.txt").read_text().startswith("a/1 -> a/2 : same")
        assert read_trials(tmp_path / "t.txt") == trials


def test_export_uses_the_adapter_registered_for_the_input_kind():
    from metaemb.core.deploy.export import ExportError, input_kind
    from metaemb.plugins.vision.export import ImageExport

    assert isinstance(input_kind({"kind": "image", "image_size": 16}), ImageExport)
    with pytest.raises(ExportError, match=r"input kind 'npy-vectors'.*register_export_adapters"):
        input_kind({"kind": "npy-vectors"})
    # a misspelt kind gets the closest registered name (P14 F9)
    with pytest.raises(ExportError, match=r"features \(myfeats\) declare input kind 'imgae'; "
                       r"did you mean 'image'\?"):  # fmt: skip
        input_kind({"kind": "imgae"}, "myfeats")


def test_an_adapter_whose_examples_do_not_fit_the_model_is_named():
    import torch

    from metaemb.core.deploy.export import ExportError, example_outputs
    from metaemb.plugins.vision.export import ImageExport

    class GrayPlugin:  # reuses the RGB image adapter for a 1-channel model: 3 channels given
        @hookimpl
        def register_export_adapters(self, register):
            register("gray-test", ImageExport)

    one_channel = torch.nn.Conv2d(1, 4, 3)
    with manager.plugin_registered(GrayPlugin(), "gray-plugin"):
        spec = {"kind": "gray-test", "image_size": 16}
        with pytest.raises(ExportError, match=r"adapter 'gray-test' \(plugin 'gray-plugin'\): the "
                           r"model failed on the adapter's example inputs \(\[2, 3, 16, 16\]\)"):  # fmt: skip
            example_outputs(lambda x: one_channel(x.float()), ImageExport(), spec)
        # example() itself failing (a spec key it expects is missing) is the adapter's fault.
        with pytest.raises(ExportError, match=r"adapter 'gray-test' \(plugin 'gray-plugin'\): "
                           r"its example\(\) failed: KeyError: 'image_size'"):  # fmt: skip
            example_outputs(lambda x: one_channel(x.float()), ImageExport(), {"kind": "gray-test"})


def test_export_of_pass_through_features_says_why_no_graph_layout_is_known():
    """Features 'none' hand samples on unchanged, so no adapter knows the graph's input layout:
    the message says so and what to do, instead of telling the user to edit input_spec()."""
    from metaemb.core.deploy.export import ExportError, input_kind

    with pytest.raises(ExportError, match="features 'none', which pass the folder's samples"):
        input_kind({}, "none")
    with pytest.raises(ExportError, match="has no 'kind'"):
        input_kind({}, "myfeatures")
