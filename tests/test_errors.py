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
