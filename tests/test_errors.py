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
