"""Modality-agnostic core: it names no modality; plugins bring them.

The folders are the architecture: `plugin/` (hooks, registry, interfaces), `data/` (sample
pipeline, samplers), `train/` (engine, model, heads, objectives), `scoring/` (cosine, PLDA,
normalisation, calibration), `gme/` (Gaussian meta-embeddings), `eval/` (metrics, trials,
reports) and `deploy/` (export, gallery). The public names a plugin author needs are re-exported
here, lazily, so `import metaemb.core` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "Sample": "metaemb.core.plugin.interfaces",
    "Trial": "metaemb.core.plugin.interfaces",
    "SampleFolder": "metaemb.core.plugin.interfaces",
    "Frontend": "metaemb.core.plugin.interfaces",
    "IdentityFrontend": "metaemb.core.plugin.interfaces",
    "Features": "metaemb.core.plugin.interfaces",
    "Backbone": "metaemb.core.plugin.interfaces",
    "Head": "metaemb.core.plugin.interfaces",
    "Objective": "metaemb.core.plugin.interfaces",
    "BatchSampler": "metaemb.core.plugin.interfaces",
    "Scorer": "metaemb.core.plugin.interfaces",
    "Modality": "metaemb.core.plugin.modality",
    "Register": "metaemb.core.plugin.hookspecs",
    "MetaembError": "metaemb.core.errors",
    "ConfigError": "metaemb.core.errors",
    "DataError": "metaemb.core.errors",
    "PluginError": "metaemb.core.errors",
    "UnknownComponentError": "metaemb.core.errors",
    "Config": "metaemb.core.config",
    "GME": "metaemb.core.gme.algebra",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'metaemb.core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
