"""Typed configuration: dataclass sections, TOML files, dotted `--set` overrides, strict keys.

- `sections`: the schema (core dataclasses and the component-section tables);
- `run_config`: `Config`, a resolved configuration, its config.toml and its run hash;
- `resolution`: `resolve()` builds a `Config` from the modality's defaults, a file and `--set`;
- `checks`: value ranges and the migration of keys written by earlier versions;
- `toml_io`: reading and writing TOML and `--set` items.
"""

from metaemb.core.config.resolution import from_dict, pin_former_defaults, resolve
from metaemb.core.config.run_config import Config
from metaemb.core.config.sections import (
    CHOICE_FIELDS,
    COMPONENT_SECTIONS,
    CORE_SECTIONS,
    DataConfig,
    EvalConfig,
    ModelConfig,
    TrainConfig,
)
from metaemb.core.config.toml_io import dumps_toml, load_toml, parse_set

__all__ = [
    "CHOICE_FIELDS",
    "COMPONENT_SECTIONS",
    "CORE_SECTIONS",
    "Config",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "TrainConfig",
    "dumps_toml",
    "from_dict",
    "load_toml",
    "parse_set",
    "pin_former_defaults",
    "resolve",
]
