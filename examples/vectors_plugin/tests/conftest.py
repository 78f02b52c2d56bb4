"""Fixtures for the vectors plugin's tests: the plugin is registered whether or not it is installed.

Installed (`pip install ./examples/vectors_plugin`), metaemb finds it through its entry point; in a
checkout it is registered in-process for the test and unregistered afterwards, the pattern
docs/plugins.md recommends for any plugin's tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import metaemb_vectors
except ImportError:  # running from a checkout without installing the plugin
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import metaemb_vectors

from metaemb.core.plugin.manager import plugin_registered, registry


@pytest.fixture
def vectors_plugin() -> Iterator[None]:
    """The plugin's components are in the registries for the duration of the test."""
    if "vectors" in registry("modalities"):
        yield
        return
    with plugin_registered(metaemb_vectors, "vectors"):
        yield


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A tiny generated dataset: 12 identities × 5 vectors of 32 values."""
    from metaemb_vectors.synthetic import generate_vectors

    return generate_vectors(tmp_path / "demo", identities=12, per_identity=5)
