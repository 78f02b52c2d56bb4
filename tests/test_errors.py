"""The wording helpers every error message uses: a close name suggested, long lists cut short."""

from __future__ import annotations

from metaemb.core.errors import first_few, suggest


def test_first_few_shows_the_first_items_and_counts_the_rest():
    assert first_few(["a", "b"]) == "'a', 'b'"
    assert first_few([f"f{i}" for i in range(8)], 3) == "'f0', 'f1', 'f2' and 5 more"
    assert first_few((x for x in ["x y", 3]), quote=False) == "x y, 3"  # any iterable, any item
    assert first_few([]) == "(none)"


def test_suggest_names_the_closest_choice_or_nothing():
    assert suggest("visoin", ["vision", "audio"]) == " did you mean 'vision'?"
    assert suggest("zzz", ["vision", "audio"]) == ""


def test_every_error_class_takes_a_message_alone():
    """Commands re-raise errors as `type(exc)(longer message)`; an error class needing more
    arguments turned `trials make` on a folder with an empty identity into a TypeError
    traceback (H16 F5)."""
    import importlib
    import pkgutil

    import metaemb
    from metaemb.core.errors import MetaembError

    for module in pkgutil.walk_packages(metaemb.__path__, "metaemb."):
        importlib.import_module(module.name)
    classes, todo = set(), [MetaembError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("metaemb.") and sub not in classes:
                classes.add(sub)
                todo.append(sub)
    assert len(classes) > 5
    for cls in classes:
        assert str(cls("what and where")) == "what and where", cls


def test_trials_make_on_a_folder_with_an_empty_identity_says_so(tmp_path, capsys):
    from helpers import run_cli

    from metaemb.plugins.vision.synthetic import generate_faces

    data = generate_faces(tmp_path / "f", identities=3, images_per_identity=2, image_size=16)
    (data / "zz-empty").mkdir()
    code, out, err = run_cli(["trials", "make", data, "--out", tmp_path / "t.txt"], capsys)
    assert code == 2 and "contain no image files" in out + err and "Traceback" not in err


def test_messages_say_things_once_and_rightly(tmp_path, capsys):
    """One-line slips of the hostile-input sweep (H16 F11): a missing run 'neither a run
    directory nor a checkpoint', an unknown format named twice, lr=inf 'must be > 0', 'nope'
    suggested as 'compile', 'Replace or remove the file. Fix or remove the file'."""
    from helpers import run_cli

    from metaemb.core.deploy.loading import _needs_every_file

    code, _, err = run_cli(["evaluate", tmp_path / "nope", "--workers", "0"], capsys)
    assert code == 2 and f"'{tmp_path / 'nope'}' does not exist" in " ".join(err.split())
    listed = tmp_path / "t.txt"
    listed.write_text("1 a/1.png a/2.png\n")
    code, _, err = run_cli(["trials", "coverage", listed, "--format", "kaldii"], capsys)
    assert code == 2 and err.count("kaldii") == 1 and "did you mean 'kaldi'" in err, err
    base = ["train", "--runs", tmp_path / "runs", "--workers", "0", "--set"]
    code, _, err = run_cli([*base, "train.lr=inf"], capsys)
    assert code == 2 and "must be finite and > 0; got inf" in err, err
    code, _, err = run_cli([*base, "train.nope=1"], capsys)
    assert code == 2 and "unknown config key 'train.nope'" in err and "did you mean" not in err
    said = _needs_every_file("'x.png' is corrupt (truncated). Replace or remove the file.")
    assert said.count("remove the file") == 1 and said.startswith("'x.png' is corrupt (truncated)")


def test_an_option_given_to_a_component_without_options_says_it_takes_none():
    """'--protocol-set folds=5' for lfw said "valid keys: (none)" (D2 F9)."""
    import pytest

    from metaemb.core.errors import ConfigError
    from metaemb.core.plugin.components import validate_options

    with pytest.raises(ConfigError, match=r"takes no options; got 'protocols.folds'"):
        validate_options("protocols", "lfw", {"folds": 5}, "protocols")
