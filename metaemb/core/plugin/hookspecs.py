"""The pluggy hook specifications: one `register_*` hook per component kind.

Each hook receives a `register(name, factory, **info)` callback (the datasette / llm pattern).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("metaemb")

Register = Callable[..., None]


@hookspec
def register_sample_folders(register: Register) -> None:
    """Register SampleFolder classes (data roots of `<identity>/…/<sample>` files)."""


@hookspec
def register_frontends(register: Register) -> None:
    """Register Frontend classes (raw sample → normalised raw sample: alignment, VAD)."""


@hookspec
def register_features(register: Register) -> None:
    """Register Features classes (normalised raw → network input, batched on the device)."""


@hookspec
def register_backbones(register: Register) -> None:
    """Register Backbone factories (input batch → pooled features)."""


@hookspec
def register_augmentations(register: Register) -> None:
    """Register Augmentation classes (training batches only, on the device; never at evaluation)."""


@hookspec
def register_heads(register: Register) -> None:
    """Register Head classes (pooled features → point embedding or Gaussian meta-embedding)."""


@hookspec
def register_objectives(register: Register) -> None:
    """Register Objective classes (embeddings + labels → loss)."""


@hookspec
def register_samplers(register: Register) -> None:
    """Register batch samplers (the batch structures objectives ask for)."""


@hookspec
def register_scorers(register: Register) -> None:
    """Register Scorer classes (pairs of embeddings → scores or LLRs)."""


@hookspec
def register_modalities(register: Register) -> None:
    """Register Modality bundles of defaults selected by `--modality NAME`."""


@hookspec
def register_protocols(register: Register) -> None:
    """Register evaluation protocols (readers of a dataset's published trial lists, or generators)."""


@hookspec
def register_demo_data(register: Register) -> None:
    """Register synthetic dataset generators (`metaemb demo-data --modality NAME`)."""


@hookspec
def register_trial_formats(register: Register) -> None:
    """Register trial-list text formats (`TrialFormat` classes, core/eval/trials.py)."""


@hookspec
def register_export_adapters(register: Register) -> None:
    """Register export adapters (`ExportAdapter` classes, core/deploy/export.py), one per
    `input_spec()["kind"]` of the features they export."""


@hookspec
def register_commands(app: Any) -> None:
    """Add commands to the typer CLI app before it runs."""
