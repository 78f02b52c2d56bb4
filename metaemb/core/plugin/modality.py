"""A Modality: the named bundle of defaults behind `metaemb train --modality NAME`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metaemb.core.errors import PluginError


@dataclass(frozen=True)
class Modality:
    """Which components a modality uses by default, and config defaults tuned for it.

    `defaults` are dotted keys of the core sections (e.g. {"train.epochs": 6, "model.dim": 128})
    applied on top of the built-in defaults and below the user's --config and --set.
    `options` are component options keyed by the component they are for:
    {section: {component name: {option: value}}}, e.g.
    {"backbone": {"xvector": {"channels": 256}}}; they apply only when that component is chosen,
    so a plugin's backbone never receives the x-vector's widths because an option shares a name.
    (A component key in `defaults`, e.g. "backbone.channels", is read as an option of the
    modality's own default component for that section.)
    `former_options` (same shape as `options`) are defaults a later version changed: a saved
    configuration (a run's config.toml, a checkpoint) that lacks such an option was trained with
    the former value, so `from_dict` pins it there instead of giving an old model new features.
    `demo_data` optionally names the synthetic generator used when `train` gets no --data;
    without one, `train` needs --data. `frontend` and `features` default to the built-in
    pass-through components "none".
    """

    name: str
    description: str
    sample_folder: str = ""
    frontend: str = "none"
    features: str = "none"
    backbone: str = ""
    demo_data: str = ""
    baseline_name: str = ""  # "": named after the default baseline used (raw input, mean+std)
    defaults: dict[str, Any] = field(default_factory=dict)
    options: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    former_options: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part, nothing in (("frontend", "none"), ("features", "none"), ("demo_data", "")):
            if getattr(self, part) is None:  # Python's "none given" is the field's own
                object.__setattr__(self, part, nothing)
        for part in ("sample_folder", "frontend", "features", "backbone", "demo_data"):
            value = getattr(self, part)
            if not isinstance(value, str):
                shown = getattr(value, "__name__", type(value).__name__)
                raise PluginError(
                    f"modality '{self.name}': {part} = {shown} is not a name; a Modality names "
                    f"its components by the names they were registered under (register "
                    f"{shown} under a name, then give {part}='that name')."
                )
        missing = [f for f in ("sample_folder", "backbone") if not getattr(self, f)]
        if missing:
            raise PluginError(
                f"modality '{self.name}' names no {' and no '.join(missing)}; a Modality needs "
                "at least a sample folder and a backbone (frontend, features and demo data are "
                "optional)."
            )
        for section, table in self.options.items():
            if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
                raise PluginError(
                    f"modality '{self.name}': options['{section}'] must map component names to "
                    "option tables, e.g. {'backbone': {'xvector': {'channels': 256}}}."
                )
