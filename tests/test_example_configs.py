"""The shipped example configs (examples/configs/<modality>-*.toml) resolve without errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaemb.core.config import resolve

CONFIGS = sorted((Path(__file__).parents[1] / "examples" / "configs").glob("*.toml"))


def test_there_are_example_configs():
    assert CONFIGS, "examples/configs/*.toml is referenced by the README and docs"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_resolves(path: Path):
    modality = path.stem.split("-")[0]
    cfg = resolve(modality, config_file=path)
    if "gme" in path.stem:
        assert cfg.model.head == "gme" and cfg.train.objective.startswith("gme-")
        assert cfg.model.dim == 16 and cfg.train.epochs == 16
