"""Every hook a plugin can implement has a section in docs/plugins.md (the datasette check).

The hooks are read from the plugin manager after plugins load, so hookspecs that a plugin adds
(`metaemb_hookspecs`, e.g. the vision plugin's `register_landmark_sources`) need a section too,
as do the core's (`metaemb/core/plugin/hookspecs.py`). A section is a markdown heading that names
the hook in backticks.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from metaemb.core.plugin import hookspecs
from metaemb.core.plugin.manager import state

DOCS = Path(__file__).resolve().parents[1] / "docs/plugins.md"


def documented_hooks(text: str) -> set[str]:
    """Hook names that appear in backticks in a markdown heading."""
    names: set[str] = set()
    for line in text.splitlines():
        if re.match(r"^#{1,6}\s", line):
            names.update(re.findall(r"`(register_\w+)`", line))
    return names


def core_hooks() -> set[str]:
    return {
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "metaemb_spec")
    }


def all_hooks() -> list[str]:
    """Core hookspecs plus every hookspec a loaded plugin added."""
    pm = state().pm
    added = {name for name, caller in vars(pm.hook).items() if getattr(caller, "spec", None)}
    return sorted(core_hooks() | added)


def test_core_hookspecs_are_found():
    hooks = core_hooks()
    assert {"register_backbones", "register_modalities", "register_commands"} <= hooks
    assert set(all_hooks()) >= hooks


@pytest.mark.parametrize("hook", all_hooks())
def test_hook_has_a_section_in_docs_plugins_md(hook):
    assert hook in documented_hooks(DOCS.read_text(encoding="utf-8")), (
        f"docs/plugins.md has no section for the hook `{hook}`: add a heading like "
        f"'### `{hook}` — …' saying what the component receives, returns, requires, raises, "
        "and how to test it."
    )


def test_checker_reads_only_headings():
    text = "## `register_a` — a\nbody mentions `register_b`\n### Adding `register_c`\n"
    assert documented_hooks(text) == {"register_a", "register_c"}
