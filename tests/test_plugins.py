"""The plugin manager: registries, duplicates, failing plugins, disabling, CLI listing."""

from __future__ import annotations

import json
import sys
import types
from importlib import metadata
from pathlib import Path

import helpers
import pytest
from typer.testing import CliRunner

import metaemb
from metaemb.core.errors import DataError, PluginError, UnknownComponentError
from metaemb.core.plugin import manager as plugins
from metaemb.core.plugin.install_checks import warn_look_alike_groups
from metaemb.core.plugin.interfaces import IdentityFrontend


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch):
    monkeypatch.delenv("METAEMB_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("METAEMB_DISABLE_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


class FrontendPlugin:
    @metaemb.hookimpl
    def register_frontends(self, register):
        register("upside-down", IdentityFrontend, description="test frontend")


def test_builtin_plugins_are_entry_points_and_register_components():
    names = {p.name for p in plugins.state().plugins()}
    assert {"core", "vision", "audio"} <= names
    eps = {ep.name for ep in metadata.entry_points(group="metaemb")}
    assert {"vision", "audio"} <= eps
    assert "none" in plugins.registry("frontends")
    assert "face" in plugins.registry("modalities")


def test_in_process_plugin_registers_and_unregisters():
    with plugins.plugin_registered(FrontendPlugin(), "testplugin"):
        entry = plugins.registry("frontends").entry("upside-down")
        assert entry.plugin == "testplugin"
        assert entry.description == "test frontend"
    assert "upside-down" not in plugins.registry("frontends")


class Dup:
    """A third-party plugin whose frontend takes a built-in name, besides a name of its own."""

    @metaemb.hookimpl
    def register_frontends(self, register):
        register("dup-own", IdentityFrontend)
        register("none", IdentityFrontend)


def test_a_plugin_taking_a_builtin_name_is_skipped_and_metaemb_keeps_working(monkeypatch):
    monkeypatch.delenv("METAEMB_STRICT_PLUGINS", raising=False)
    plugins.reset()
    try:
        with plugins.plugin_registered(Dup(), "dupplugin"):
            with pytest.warns(UserWarning) as caught:
                reg = plugins.registry("frontends")
            msg = " ".join(str(w.message) for w in caught)
            assert "plugin 'dupplugin' registers frontend 'none', a name plugin 'core'" in msg
            assert reg.entry("none").plugin == "core"  # the built-in stays
            with pytest.raises(UnknownComponentError, match="plugin 'dupplugin' registers it"):
                reg.entry("dup-own")  # the plugin's other frontends of that kind are dropped
            assert "resnet18" in plugins.registry("backbones")  # other kinds are untouched
            assert [f.name for f in plugins.state().failed] == ["dupplugin"]
            plugins.state().invalidate()
            monkeypatch.setenv("METAEMB_STRICT_PLUGINS", "1")
            with pytest.raises(PluginError, match="'none', a name plugin 'core' already"):
                plugins.registry("frontends")
    finally:
        plugins.reset()


def test_unknown_name_suggests_closest_and_lists_available():
    with pytest.raises(UnknownComponentError) as err:
        plugins.get("backbones", "resnet81")
    msg = str(err.value)
    assert "unknown backbone 'resnet81'" in msg
    assert "did you mean 'resnet18'?" in msg
    assert "available:" in msg and "mobilenet_v3_small" in msg


def _fake_entry_point(monkeypatch, name, module_name, module):
    if module is not None:
        monkeypatch.setitem(sys.modules, module_name, module)
    ep = metadata.EntryPoint(name=name, value=module_name, group="metaemb")
    real = metadata.entry_points

    def entry_points(**kw):
        # other callers (the vision plugin reads its own entry points) get the real answer
        if kw.get("group") != "metaemb":
            return real(**kw)
        return metadata.EntryPoints([*real(**kw), ep])

    monkeypatch.setattr(plugins.metadata, "entry_points", entry_points)


def test_failing_plugin_is_reported_and_skipped(monkeypatch):
    _fake_entry_point(monkeypatch, "broken", "metaemb_broken_plugin_xyz", None)
    with pytest.warns(UserWarning, match="broken"):
        st = plugins.state()
    assert [f.name for f in st.failed] == ["broken"]
    assert "ModuleNotFoundError" in st.failed[0].error
    assert "resnet18" in plugins.registry("backbones")  # the others still work


@pytest.mark.parametrize("name", ["vision", "core"])
def test_an_entry_point_named_like_a_built_in_plugin_is_skipped_and_named(monkeypatch, name):
    """A third party's entry point `vision` replaced the built-in vision plugin (faces gone,
    no word), or under `core` was dropped without one; the built-ins now always win."""
    import types

    module = types.ModuleType("metaemb_wg_clash")

    @metaemb.hookimpl
    def register_backbones(register):
        register("wg-gru", lambda: None)

    module.register_backbones = register_backbones
    _fake_entry_point(monkeypatch, name, "metaemb_wg_clash", module)
    plugins.reset()
    with pytest.warns(UserWarning, match=rf"plugin entry point '{name}' \(metaemb_wg_clash\) .* "
                      rf"has the name of .*plugin '{name}' and is skipped"):  # fmt: skip
        st = plugins.state()
    names = plugins.registry("backbones").names()
    assert "resnet18" in names and "wg-gru" not in names
    # named with its package: "failed to load vision" read as the built-in failing (P18 F4)
    assert [f.name for f in st.failed] == [f"{name} (from metaemb_wg_clash)"]
    plugins.reset()


def test_a_plugin_in_a_look_alike_entry_point_group_is_named():
    """`[project.entry-points."metaemb.plugins"]` was ignored without a word: the plugin's
    components were then just "unknown"."""
    ep = metadata.EntryPoint(name="zbad4", value="metaemb_bad4", group="metaemb.plugins")
    misdeclared = types.SimpleNamespace(entry_points=[ep])
    with pytest.warns(UserWarning, match=r"'zbad4' \(metaemb_bad4\) are declared in the group "
                      r"'metaemb.plugins', which metaemb does not read.*group 'metaemb'"):  # fmt: skip
        warn_look_alike_groups([*metadata.distributions(), misdeclared])


def test_a_plugin_implementing_no_hook_is_warned_about(monkeypatch):
    """Functions without `@metaemb.hookimpl` are invisible to pluggy: the plugin registered
    nothing, without a word."""
    import types

    module = types.ModuleType("metaemb_undecorated_xyz")

    def register_backbones(register):  # the decorator is missing
        raise AssertionError("never called")

    module.register_backbones = register_backbones
    _fake_entry_point(monkeypatch, "undecorated", "metaemb_undecorated_xyz", module)
    plugins.reset()
    with pytest.warns(UserWarning, match=r"plugin 'undecorated' \(metaemb_undecorated_xyz\) "
                      r"implements no metaemb hook.*register_backbones without `@metaemb.hookimpl"):  # fmt: skip
        plugins.state()
    plugins.reset()
    monkeypatch.setenv("METAEMB_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="implements no metaemb hook"):
        plugins.state()
    plugins.reset()


def test_one_undecorated_hook_beside_decorated_ones_is_warned_about(monkeypatch):
    """A plugin with decorated hooks and one whose decorator was forgotten: its components
    were "unknown" without a reason (P15 F4)."""
    import types

    from metaemb import hookimpl

    module = types.ModuleType("metaemb_half_decorated_xyz")

    @hookimpl
    def register_backbones(register):
        pass

    def register_objectives(register):  # the decorator is missing
        raise AssertionError("never called")

    module.register_backbones = register_backbones
    module.register_objectives = register_objectives
    module.register_helper = lambda: None  # not a hook name: not reported
    _fake_entry_point(monkeypatch, "halfdecorated", "metaemb_half_decorated_xyz", module)
    plugins.reset()
    with pytest.warns(UserWarning, match=r"plugin 'halfdecorated' defines register_objectives "
                      r"without `@metaemb.hookimpl` above it, so it is never called"):  # fmt: skip
        plugins.state()
    plugins.reset()
    monkeypatch.setenv("METAEMB_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="defines register_objectives without"):
        plugins.state()
    plugins.reset()


def test_strict_mode_makes_a_failing_plugin_fatal(monkeypatch):
    monkeypatch.setenv("METAEMB_STRICT_PLUGINS", "1")
    _fake_entry_point(monkeypatch, "broken", "metaemb_broken_plugin_xyz", None)
    with pytest.raises(PluginError, match="plugin 'broken'"):
        plugins.state()


def test_disable_plugins_blocks_them(monkeypatch):
    monkeypatch.setenv("METAEMB_DISABLE_PLUGINS", "audio, vision")
    names = {p.name for p in plugins.state().plugins()}
    assert "audio" not in names and "vision" not in names
    assert "speaker" not in plugins.registry("modalities")
    with pytest.raises(UnknownComponentError) as info:  # a run of theirs says whose it may be
        plugins.registry("modalities").get("face")
    assert "disabled by METAEMB_DISABLE_PLUGINS: 'audio', 'vision'" in str(info.value)


def test_disabling_a_plugin_that_is_not_installed_is_a_warning(monkeypatch):
    monkeypatch.setenv("METAEMB_DISABLE_PLUGINS", "visoin")  # a typo disabled nothing, silently
    with pytest.warns(UserWarning, match="'visoin', which is not an installed metaemb plugin.*"
                      "did you mean 'vision'"):  # fmt: skip
        state = plugins.state()
    assert "face" in plugins.registry("modalities") and state.disabled == []


def test_core_cannot_be_disabled(monkeypatch):
    monkeypatch.setenv("METAEMB_DISABLE_PLUGINS", "core")  # it unregistered every built-in
    with pytest.warns(UserWarning, match="'core'.*cannot be disabled"):
        plugins.state()
    assert "arcface" in plugins.registry("objectives") and "cosine" in plugins.registry("scorers")


def test_entry_point_plugin_is_loaded_once(monkeypatch):
    module = types.ModuleType("metaemb_fake_plugin")
    calls = []

    @metaemb.hookimpl
    def register_frontends(register):
        calls.append(1)
        register("fake-frontend", IdentityFrontend)

    module.register_frontends = register_frontends
    _fake_entry_point(monkeypatch, "fake", "metaemb_fake_plugin", module)
    assert "fake-frontend" in plugins.registry("frontends")
    metaemb.load()
    plugins.registry("frontends")
    assert calls == [1]
    assert plugins.state().versions["fake"] == "unknown"


def test_cli_plugins_json_and_list():
    from metaemb.cli import create_app

    runner = CliRunner()
    res = runner.invoke(create_app(), ["plugins", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert "resnet18" in by_name["vision"]["components"]["backbones"]
    assert "register_backbones" in by_name["vision"]["hooks"]
    # the commands a plugin adds are listed with it (P16 F9: a strange command had no owner)
    assert by_name["vision"]["components"]["commands"] == ["landmarks", "unpack-bin"]
    res = runner.invoke(create_app(), ["list", "backbones"])
    assert res.exit_code == 0 and "resnet18" in res.output


def test_list_frontends_json_names_what_frontend_set_may_change(capsys):
    """Which options `--frontend-set` takes was found only by trial and error (D4 F5)."""
    code, out, err = helpers.run_cli(["list", "frontends", "--json"], capsys)
    assert code == 0, err
    got = {c["name"]: c["access_options"] for c in json.loads(out)["components"]}
    assert "landmarks_file" in got["align"] and got["energy"] == []


def test_list_modalities_shows_the_components_each_chooses(capsys):
    from helpers import run_cli

    code, out, err = run_cli(["list", "modalities"], capsys)
    text = " ".join(out.split())
    assert code == 0, err
    assert "backbone=resnet18" in text and "features=fbank" in text
    # what a run of the modality starts from, not the component's own defaults
    assert "backbone.channels = 256 (with backbone 'xvector')" in text
    assert "features.fbank.cmn = 'level' (with features 'fbank')" in text
    code, out, err = run_cli(["list", "modalities", "--json"], capsys)
    speaker = {r["name"]: r for r in json.loads(out)["components"]}["speaker"]
    assert speaker["component_options"]["backbone"]["xvector"]["channels"] == 256
    assert speaker["defaults"]["train.lr"] == 0.002


def test_list_shows_the_options_of_a_fixed_nested_table(capsys):
    """The speaker features' `[features.fbank]` keys (n_mels, cmn, …) were an opaque dict."""
    from helpers import run_cli

    code, out, err = run_cli(["list", "features", "--json"], capsys)
    assert code == 0, err
    fbank = {r["name"]: r for r in json.loads(out)["components"]}["fbank"]["options"]["fbank"]
    assert fbank["options"]["n_mels"] == {"type": "int", "default": 80, "required": False}
    assert fbank["options"]["cmn"]["default"] is True


class CommandClash:
    """A plugin whose commands take the names of a built-in command and of a built-in sub-app,
    besides a command of its own."""

    @metaemb.hookimpl
    def register_commands(self, app):
        import typer

        def train() -> None:
            """The plugin's own train."""
            print("plugin train ran")

        def hello() -> None:
            """A command of the plugin's own."""
            print("hello from the plugin")

        trials = typer.Typer(help="the plugin's trials")
        trials.command()(hello)
        app.command("train")(train)
        app.add_typer(trials, name="trials")
        app.command()(hello)


def test_a_plugin_command_cannot_replace_a_builtin_one(capsys, monkeypatch):
    """Typer keeps the last command of a name: a plugin's `train` used to replace metaemb's
    silently. It is dropped with a warning naming plugin and command; its own command stays."""
    with plugins.plugin_registered(CommandClash(), "clasher"):
        with pytest.warns(UserWarning) as caught:
            code, out, _ = helpers.run_cli(["train", "--help"], capsys)
        assert code == 0 and "Train an embedding network" in out and "plugin's own" not in out
        said = [str(w.message) for w in caught]
        for name in ("train", "trials"):
            start = f"plugin 'clasher' registers command '{name}', a name metaemb's built-in "
            assert sum(m.startswith(start) for m in said) == 1, said
        with pytest.warns(UserWarning):
            assert helpers.run_cli(["trials", "--help"], capsys)[1].count("Make seeded") == 1
            code, out, _ = helpers.run_cli(["hello"], capsys)
        assert code == 0 and "hello from the plugin" in out
        monkeypatch.setenv("METAEMB_STRICT_PLUGINS", "1")
        code, out, err = helpers.run_cli(["hello"], capsys)
        assert code == 2 and "error: plugin 'clasher' registers command 'train'" in err
        assert "Traceback" not in err and "hello from the plugin" not in out


class CrashingCommands:
    """A plugin whose commands raise: one its own bug, one a MetaembError, one in a sub-app."""

    @metaemb.hookimpl
    def register_commands(self, app):
        import typer

        from metaemb.core.errors import DataError

        def boom(count: int = 1) -> None:
            """Divides by zero."""
            print(f"count {count}")
            _ = count / 0

        def worded() -> None:
            raise DataError("the plugin's own clear message")

        group = typer.Typer()
        group.command("deep")(boom)
        app.command("boom")(boom)
        app.command("worded")(worded)
        app.add_typer(group, name="crashgroup")


def test_a_plugin_commands_own_exception_names_the_plugin(capsys, monkeypatch):
    """A plugin command's bug used to print metaemb's traceback; it is one message naming the
    plugin and the command (METAEMB_DEBUG=1 keeps the traceback for its authors)."""
    monkeypatch.delenv("METAEMB_DEBUG", raising=False)
    with plugins.plugin_registered(CrashingCommands(), "crasher"):
        code, out, err = helpers.run_cli(["boom", "--count", "3"], capsys)
        assert code == 2 and "count 3" in out  # typer still parses the wrapped command's options
        assert "plugin 'crasher' failed in its command 'boom': ZeroDivisionError" in err
        assert "Traceback" not in err
        code, _, err = helpers.run_cli(["crashgroup", "deep"], capsys)
        assert code == 2 and "command 'deep': ZeroDivisionError" in err
        code, _, err = helpers.run_cli(["worded"], capsys)
        assert code == 2 and "error: the plugin's own clear message" in err
        assert "failed in its command" not in err
        monkeypatch.setenv("METAEMB_DEBUG", "1")
        with pytest.raises(ZeroDivisionError):
            helpers.run_cli(["boom"], capsys)


def test_a_sample_folder_names_identities_and_leaves_files_out_with_identity_of(tmp_path):
    """Signature data keep skilled forgeries in the user's folder: `identity_of` gives them an
    identity of their own (a genuine-forgery trial is then a non-target) or leaves them out."""
    from typing import ClassVar

    import numpy as np

    from metaemb.core import SampleFolder

    for rel in ("u1/g1.npy", "u1/g2.npy", "u1/forgery/f1.npy", "u2/g1.npy", "u2/forgery/f1.npy"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / rel, np.zeros(3))

    class Signatures(SampleFolder):
        extensions: ClassVar[tuple[str, ...]] = (".npy",)
        genuine_only = False

        def load(self, path):
            return np.load(path)

        def identity_of(self, path):
            user, _, rest = path.partition("/")
            if rest.startswith("forgery/"):
                return None if self.genuine_only else f"{user}/forgery"
            return user

    both = Signatures(tmp_path)
    assert both.identities == ["u1", "u1/forgery", "u2", "u2/forgery"]
    assert {s.path: s.identity for s in both.samples}["u1/forgery/f1.npy"] == "u1/forgery"
    Signatures.genuine_only = True
    genuine = Signatures(tmp_path)
    assert genuine.identities == ["u1", "u2"] and len(genuine) == 3

    # A trial list naming a left-out file says why it is not a sample (evaluate's message).
    from metaemb.core.eval.embedded import _left_out

    why = _left_out(genuine, ["u1/forgery/f1.npy", "u9/none.npy"])
    assert "1 of them exist but sample folder" in why and "identity_of returns None" in why
    assert "--folder-set KEY=VALUE changes an option of it" in why  # P19 F6c
    (tmp_path / "u1" / "notes.txt").write_text("x")
    assert "not samples of this folder (extensions .npy" in _left_out(genuine, ["u1/notes.txt"])

    for wrong in (1, "", b"u1"):

        class Wrong(Signatures):
            def identity_of(self, path, wrong=wrong):
                return wrong

        with pytest.raises(
            PluginError, match=rf"Wrong.identity_of\('u1/[^']+'\) returned {wrong!r}"
        ):
            Wrong(tmp_path)

    class Raising(Signatures):  # a header without the field it parses (P17 F9)
        def identity_of(self, path):
            if path == "u2/g1.npy":
                raise KeyError("person")
            return super().identity_of(path)

    with pytest.raises(DataError, match=r"Raising.identity_of\('u2/g1.npy'\) under '.*' raised "
                       r"KeyError: 'person'"):  # fmt: skip
        Raising(tmp_path)

    class Pattern(Signatures):  # re.match(...).group(1) on a name it does not fit (R5-8)
        def identity_of(self, path):
            import re

            return re.match(r"(u\d)/g\d", path).group(1)

    with pytest.raises(DataError, match=r"Pattern.identity_of\('u1/forgery/f1.npy'\) under "
                       r"'.*' raised AttributeError"):  # fmt: skip
        Pattern(tmp_path)


def test_load_gets_an_absolute_path_also_under_a_relative_root(tmp_path, monkeypatch):
    """docs/plugins.md promises `load` an absolute path; embed, evaluate --data and enroll
    passed a relative one when --data was typed relative, and a folder keying its own table by
    absolute path failed there only (P18 F2)."""
    from typing import ClassVar

    import numpy as np

    from metaemb.core import SampleFolder
    from metaemb.core.data.dataset import load_raw

    (tmp_path / "data" / "u1").mkdir(parents=True)
    np.save(tmp_path / "data" / "u1" / "a.npy", np.zeros(3))
    seen = []

    class Recording(SampleFolder):
        extensions: ClassVar[tuple[str, ...]] = (".npy",)

        def load(self, path):
            seen.append(path)
            return np.load(path)

    monkeypatch.chdir(tmp_path)
    folder = Recording("data")
    load_raw(folder, folder.samples[0])
    assert seen == [tmp_path / "data" / "u1" / "a.npy"] and seen[0].is_absolute()
    assert folder.samples[0].path == "u1/a.npy"  # names in lists and messages stay relative
    # and `root` is absolute too, so `path.relative_to(self.root)` works (P18 F6), and
    # normalised, so messages name `./data/../data` as the folder metrics.json names (H20 F8)
    assert seen[0].relative_to(folder.root) == Path("u1/a.npy")
    assert Recording("./data/../data").root == tmp_path / "data"


def test_a_folder_reading_many_samples_from_one_table(tmp_path):
    """docs/plugins.md's recipe for a table of samples (CMU keystroke data: one CSV, a row per
    sample, the identity in a column; P18 F3): rows are samples, split and subset like files."""
    import csv
    from typing import ClassVar

    import numpy as np

    from metaemb.core import Sample, SampleFolder
    from metaemb.core.data.dataset import load_raw

    with open(tmp_path / "DSL.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject", "rep", "H.t", "DD.t.i"])
        for subject in ("s002", "s003", "s004", "s005"):
            for rep in range(3):
                w.writerow([subject, rep, 0.1 + rep, 0.2])

    class Table(SampleFolder):
        extensions: ClassVar[tuple[str, ...]] = ()  # nothing is scanned

        def __init__(self, root, samples=None):
            with open(Path(root) / "DSL.csv", newline="") as f:
                self.rows = {f"{r['subject']}/r{r['rep']}": r for r in csv.DictReader(f)}
            if samples is None:
                samples = [Sample(key, key.split("/")[0], -1) for key in self.rows]
            super().__init__(root, samples)

        def load(self, path):
            row = self.rows[Path(path).relative_to(self.root).as_posix()]
            return np.array([float(row["H.t"]), float(row["DD.t.i"])], dtype=np.float32)

        def source_of(self, sample):
            return f"{(self.root / 'DSL.csv').resolve()}#{sample.path}"

    folder = Table(tmp_path)
    assert folder.identities == ["s002", "s003", "s004", "s005"] and len(folder) == 12
    train, val = folder.split(0.25, seed=0)
    assert val.identities and len(train) + len(val) == 12
    assert set(train.identities).isdisjoint(val.identities)
    sample = next(s for s in val.samples if s.path.endswith("/r2"))
    assert load_raw(val, sample).tolist() == pytest.approx([2.1, 0.2])
    # what a gallery remembers each row by is present while the table is (R6 F12)
    from metaemb.core.deploy.enrollment import source_exists

    assert all(source_exists(folder.source_of(s)) for s in folder.samples)
    assert len({folder.source_of(s) for s in folder.samples}) == 12


def test_a_folder_naming_identities_itself_reads_a_flat_root(tmp_path):
    """Market-1501 parts are flat (`0002_c1s1_000451_03.jpg`): a folder whose `identity_of`
    parses file names was refused with "no identity sub-folders" (P16 F2). Beside identity
    folders, a root file is the dataset's own: a forgery-style override must not make
    `mean.npy` an identity (R5-1). The default folder reads sub-folders only."""
    import warnings
    from typing import ClassVar

    import numpy as np

    from metaemb.core import SampleFolder

    flat_root = tmp_path / "flat"
    flat_root.mkdir()
    names = ["0002_c1_1.npy", "0002_c2_1.npy", "0007_c1_1.npy", "-1_c1_1.npy"]
    for name in names:
        np.save(flat_root / name, np.zeros(3))
    (flat_root / "RECORDS").write_text("0002_c1_1\n")  # a dataset's index: not warned about

    class Plain(SampleFolder):
        extensions: ClassVar[tuple[str, ...]] = (".npy",)

        def load(self, path):
            return np.load(path)

    class Flat(Plain):
        def identity_of(self, path):
            person = path.rsplit("/", 1)[-1].split("_", 1)[0]
            return None if person == "-1" else person  # distractors left out

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat = Flat(flat_root)
    assert flat.identities == ["0002", "0007"]
    assert [s.path for s in flat.samples] == sorted(names)[1:]
    with pytest.raises(DataError, match="no identity sub-folders"):
        Plain(flat_root)

    class Forgeries(Plain):  # the docs' override, for <identity>/… paths
        def identity_of(self, path):
            parts = path.split("/")
            return "/".join(parts[:2]) if len(parts) > 2 and parts[1] == "forgery" else parts[0]

    tree = tmp_path / "tree"
    for rel in ("u001/g0.npy", "u001/forgery/f0.npy", "u002/g0.npy"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(tree / rel, np.zeros(3))
    np.save(tree / "mean.npy", np.zeros(3))  # the dataset's own statistics
    with pytest.warns(UserWarning, match=r"1 sample\(s\) directly in it are not read "
                      r"\('mean.npy'\).*has 2 \('u001', 'u002'\)"):  # fmt: skip
        assert Forgeries(tree).identities == ["u001", "u001/forgery", "u002"]


def test_the_split_keeps_identities_of_one_subject_together(tmp_path):
    """`u3` and `u3/forgery` are one person: a split by identity name would train on u3's
    forgeries and validate on u3's genuine samples, flattering the validation EER."""
    from typing import ClassVar

    import numpy as np

    from metaemb.core import SampleFolder
    from metaemb.core.eval import leakage

    for u in range(12):
        for rel in (f"u{u}/g1.npy", f"u{u}/g2.npy", f"u{u}/forgery/f1.npy"):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(tmp_path / rel, np.zeros(3))

    class Signatures(SampleFolder):
        extensions: ClassVar[tuple[str, ...]] = (".npy",)

        def load(self, path):
            return np.load(path)

        def identity_of(self, path):
            user, _, rest = path.partition("/")
            return f"{user}/forgery" if rest.startswith("forgery/") else user

    folder = Signatures(tmp_path)
    assert folder.num_identities == 24
    for seed in range(5):
        train, val = folder.split(0.25, seed=seed)
        subjects = [{name.split("/")[0] for name in part.identities} for part in (train, val)]
        assert not subjects[0] & subjects[1], seed
        assert len(subjects[1]) == 3 and len(val.identities) == 6  # a quarter of 12 subjects

    # Without sub-identities the split is the one of earlier versions (same run hashes).
    class Genuine(Signatures):
        def identity_of(self, path):
            return None if "/forgery/" in path else path.split("/")[0]

    import torch

    plain = Genuine(tmp_path)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(3)).tolist()
    held = sorted(plain.identities[i] for i in order[:3])
    assert plain.split(0.25, seed=3)[1].identities == held

    # Evaluation counts u3/forgery as seen when the run trained on u3.
    shared = leakage.seen_in_training({"u3", "u4"}, {"u3/forgery", "u5"}, folder.subject_of)
    assert shared == ["u3/forgery"]
    assert "belong to their subjects (u3/forgery)" in leakage.overlap_warning(shared, {"u5"})

    class Blank(Signatures):
        def subject_of(self, identity):
            return ""

    with pytest.raises(PluginError, match=r"Blank.subject_of\('u0'\) returned ''"):
        Blank(tmp_path).split(0.25)


class SiblingDemo:
    """A demo generator written as docs/plugins.md says: a temporary sibling, then a rename."""

    @metaemb.hookimpl
    def register_demo_data(self, register):
        import os
        import tempfile
        from pathlib import Path

        def sibling(out, count: int = 2, label=None):
            tmp = tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp")
            for i in range(count):
                (Path(tmp) / f"id{i}").mkdir()
            if label is not None:
                assert type(label) is str, type(label)  # never metaemb's internal Unquoted
            os.replace(tmp, out)

        sibling.version = 1
        register("sibling", sibling)

    @metaemb.hookimpl
    def register_modalities(self, register):
        from metaemb.core.plugin.modality import Modality

        register("sib", Modality(name="sib", description="", sample_folder="image",
                                 features="image", backbone="resnet18", demo_data="sibling"))  # fmt: skip


def test_demo_data_gets_an_existing_parent_and_takes_the_demo_prefix(tmp_path, capsys):
    """The demo generator's out folder had no parent yet (the doc's sibling recipe failed), and
    `demo-data --set demo.count=3` was refused as `demo.demo.count`."""
    with plugins.plugin_registered(SiblingDemo(), "sibling-plugin"):
        out = tmp_path / "new" / "deeper" / "demo"
        args = ["demo-data", "--modality", "sib", "--out", out]
        code, _, err = helpers.run_cli([*args, "--set", "demo.count=3", "--set", "label=abc"],
                                       capsys)  # fmt: skip
        assert code == 0, err
        assert sorted(p.name for p in out.iterdir()) == ["id0", "id1", "id2"]


class CarelessDemos:
    """Demo factories that return without writing, or write next to the folder they got."""

    @metaemb.hookimpl
    def register_demo_data(self, register):
        from pathlib import Path

        def nowrite(out, count: int = 2):
            return out

        def elsewhere(out, count: int = 2):
            other = Path(out).parent / "other-place"
            (other / "id0").mkdir(parents=True)
            return other

        nowrite.version = elsewhere.version = 1
        register("nowrite", nowrite)
        register("elsewhere", elsewhere)

    @metaemb.hookimpl
    def register_modalities(self, register):
        from metaemb.core.plugin.modality import Modality

        for name in ("nowrite", "elsewhere"):
            register(f"careless-{name}", Modality(
                name=f"careless-{name}", description="", sample_folder="image",
                features="image", backbone="resnet18", demo_data=name))  # fmt: skip


def test_a_demo_factory_without_a_version_is_warned_about():
    """Its version keys the demo cache: without one, data of an older generator is reused."""

    class Unversioned:
        @metaemb.hookimpl
        def register_demo_data(self, register):
            def unversioned(out, count: int = 2):
                return out

            register("unversioned", unversioned)

    warned = pytest.warns(UserWarning, match=r"demo dataset 'unversioned' with version=None; "
                          r"set `unversioned.version = 1`")  # fmt: skip
    with plugins.plugin_registered(Unversioned(), "unversioned-plugin"), warned:
        assert "unversioned" in plugins.registry("demo_data")


def test_a_demo_factory_that_writes_nothing_or_elsewhere_is_named(tmp_path, capsys):
    with plugins.plugin_registered(CarelessDemos(), "careless"):
        for name, why in (("nowrite", "returned without writing anything into"),
                          ("elsewhere", "other-place', not to the folder it was given")):  # fmt: skip
            args = ["demo-data", "--modality", f"careless-{name}", "--out", tmp_path / name]
            code, out, err = helpers.run_cli(args, capsys)
            assert code == 2 and "wrote the" not in out, out
            assert f"demo-data factory '{name}' (plugin 'careless')" in err and why in err, err
    with plugins.plugin_registered(CarelessDemos(), "careless"):  # no seed to draw another set
        args = ["demo-data", "--modality", "careless-nowrite", "--out", tmp_path / "s", "--seed", 1]
        code, _, err = helpers.run_cli(args, capsys)
        assert (
            code == 2
            and "(plugin 'careless') has no parameter 'seed' for --seed; it draws one" in err
        ), err


def test_plugin_registered_reports_a_module_implementing_no_hook(monkeypatch):
    import types

    module = types.ModuleType("undecorated_in_process")
    module.register_backbones = lambda register: None  # no @metaemb.hookimpl
    with (
        pytest.warns(UserWarning, match="implements no metaemb hook"),
        plugins.plugin_registered(module, "in-process-undecorated"),
    ):
        pass


def test_identities_named_like_parts_of_a_person_get_a_subject_of_hint(tmp_path):
    """`p003_left`, `p003_right` with the default subject (the whole name) may fall on both
    sides of the split: said, naming subject_of; a folder whose subject_of groups them, and
    names like LFW's (a last name per person), are not warned about."""
    import warnings
    from typing import ClassVar

    import numpy as np

    from metaemb.core import SampleFolder

    class Hands(SampleFolder):
        extensions: ClassVar[tuple[str, ...]] = (".npy",)

        def load(self, path):
            return np.load(path)

    for name in [f"p{i:03d}_{h}" for i in range(6) for h in ("left", "right")]:
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "a.npy", np.zeros(3))
    with pytest.warns(UserWarning, match=r"12 identities of .* look like parts of 6 persons "
                      r"\('p000_left', 'p000_right'\).*needs a subject_of"):  # fmt: skip
        Hands(tmp_path).split(0.25)

    class Persons(Hands):
        def subject_of(self, identity):
            return identity.rsplit("_", 1)[0] if identity.startswith("p0") else identity

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Persons(tmp_path).split(0.25)
        lfw = tmp_path / "lfw"
        for name in ("Ann_Smith", "Bob_Jones", "Colin_Powell", "Tony_Blair", "G_W_Bush"):
            (lfw / name).mkdir(parents=True)
            np.save(lfw / name / "a.npy", np.zeros(3))
        Hands(lfw).split(0.4)
        numbered = tmp_path / "numbered"  # person_1 … person_6: a prefix, not one person
        for i in range(1, 7):
            (numbered / f"person_{i}").mkdir(parents=True)
            np.save(numbered / f"person_{i}" / "a.npy", np.zeros(3))
        Hands(numbered).split(0.34)


def test_a_component_of_a_plugin_that_failed_to_load_names_the_plugin(monkeypatch):
    """A disabled plugin was named beside 'unknown backbone', one that failed to import (the
    warning long scrolled away) was not (P17 F4)."""
    from metaemb.core.plugin.manager import FailedPlugin

    st = plugins.state()
    monkeypatch.setattr(st, "failed", [FailedPlugin("ecgbad", "ModuleNotFoundError: wfdb")])
    st.invalidate()
    try:
        with pytest.raises(UnknownComponentError, match=r"unknown backbone 'bad-f64'.* Plugin "
                           r"'ecgbad' failed to load \(ModuleNotFoundError: wfdb\); the backbone "
                           r"may be theirs"):  # fmt: skip
            plugins.registry("backbones").get("bad-f64")
    finally:
        monkeypatch.undo()
        st.invalidate()
