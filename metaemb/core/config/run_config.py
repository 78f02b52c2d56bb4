"""`Config`: one run's resolved configuration — its chosen components, its serialised form
(config.toml) and the hash that names its run folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from metaemb.core.config.sections import (
    CHOICE_FIELDS,
    COMPONENT_SECTIONS,
    CORE_SECTIONS,
    HASH_NEUTRAL,
    RUNTIME_KEYS,
    DataConfig,
    EvalConfig,
    ModelConfig,
    TrainConfig,
)
from metaemb.core.config.toml_io import dumps_toml
from metaemb.core.errors import MetaembError
from metaemb.core.plugin.components import full_options
from metaemb.core.plugin.manager import registry
from metaemb.core.plugin.modality import Modality
from metaemb.core.plugin.options import options_of


@dataclass
class Config:
    modality: str  # a registered modality's name; resolve() fills in its defaults
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    components: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- chosen component names --------------------------------------------------------
    def component_name(self, section: str) -> str:
        """The component chosen for `section` ("" for "demo" when the modality has none)."""
        if section == "demo":
            return self.modality_obj().demo_data
        core, key = CHOICE_FIELDS[section]
        return getattr(getattr(self, core), key)

    def select_key(self) -> str:
        """The metrics key that picks the best checkpoint (minDCF at the first P_target)."""
        if self.eval.select == "min_dcf":
            return f"min_dcf_{self.eval.p_targets[0]:g}"
        return self.eval.select

    def options(self, section: str) -> dict[str, Any]:
        return dict(self.components.get(section, {}))

    @staticmethod
    def component_kind(section: str) -> str:
        """The registry kind of a component section ("backbone" → "backbones")."""
        return COMPONENT_SECTIONS[section]

    def modality_obj(self) -> Modality:
        return registry("modalities").get(self.modality)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "modality": self.modality}
        for section in CORE_SECTIONS:
            out[section] = dataclasses.asdict(getattr(self, section))
        for section in COMPONENT_SECTIONS:
            if self.components.get(section):
                out[section] = dict(sorted(self.components[section].items()))
        if self.components.get("augment"):
            out["augment"] = {
                k: dict(sorted(v.items())) for k, v in self.components["augment"].items()
            }
        self._write_changed_defaults(out)
        return out

    def _write_changed_defaults(self, out: dict[str, Any]) -> None:
        """Options whose default the modality changed (`Modality.former_options`) are written
        out even at today's default: a saved config lacking one is read back with the former
        value (`pin_former_defaults`), which would give this run another configuration."""
        try:
            mod = self.modality_obj()
        except MetaembError:
            return
        for section, by_component in mod.former_options.items():
            former = by_component.get(self.component_name(section)) or {}
            missing = [k for k in former if k not in out.get(section, {})]
            if not missing:
                continue
            every = options_of(
                registry(COMPONENT_SECTIONS[section]).get(self.component_name(section))
            )
            table = out.setdefault(section, {})
            for key in missing:
                if key in every:
                    table[key] = every[key].default
            out[section] = dict(sorted(table.items()))

    def hash(self) -> str:
        """8 hex digits identifying everything that changes results (runtime keys excluded)."""
        d = self.to_dict()
        for section, key in RUNTIME_KEYS:
            d[section].pop(key, None)
        for (section, key), neutral in HASH_NEUTRAL.items():
            if d[section].get(key) == neutral:
                d[section].pop(key)
        # Component defaults count too: a changed default must not resume an old run's files.
        for section, kind in COMPONENT_SECTIONS.items():
            name = self.component_name(section)
            if not name:
                continue
            factory = registry(kind).get(name)
            every = {k: o.default for k, o in options_of(factory, internal=True).items()}
            d[section] = {**every, **full_options(kind, name, d.get(section, {}))}
            # An option added later names the value that reproduces the old behaviour: at that
            # value it is left out, so runs made before it existed keep their hash and resume.
            for key, value in (getattr(factory, "hash_neutral", None) or {}).items():
                if d[section].get(key, value) == value:
                    d[section].pop(key, None)
        if self.train.augment:
            from metaemb.core.train.augment import full_options as augment_options

            d["augment"] = augment_options(self.train.augment, self.options("augment"))
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())
