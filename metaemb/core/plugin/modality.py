"""A Modality: the named bundle of defaults behind `metaemb train --modality NAME`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Modality:
    """Which components a modality uses by default, and config defaults tuned for it.

    `defaults` are dotted config keys (e.g. {"train.epochs": 6, "backbone.small_input": True})
    applied on top of the built-in config defaults and below the user's --config and --set.
    `demo_data` names the synthetic generator used when `train` gets no --data.
    """

    name: str
    description: str
    sample_folder: str
    frontend: str
    features: str
    backbone: str
    demo_data: str
    baseline_name: str = "raw input"
    defaults: dict[str, Any] = field(default_factory=dict)
