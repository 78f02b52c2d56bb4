"""Resolving a run's configuration from its layers.

Resolution order (later wins): built-in defaults → the modality's defaults → `--config FILE` →
`--set key=value`. Core sections (data, model, train, eval) are dataclasses; the component
sections (folder, frontend, features, backbone, head, objective, sampler, scorer, demo) hold the
options of the chosen component and are validated against that component's factory signature.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any

from metaemb.core.config.chain import agree, check_augmentations, check_chain
from metaemb.core.config.checks import check_option_targets, check_values, migrate_options
from metaemb.core.config.run_config import Config
from metaemb.core.config.sections import (
    CHOICE_FIELDS,
    COMPONENT_SECTIONS,
    CORE_SECTIONS,
    HASH_NEUTRAL,
    TOP_LEVEL,
)
from metaemb.core.config.toml_io import load_toml, parse_set
from metaemb.core.errors import ConfigError, MetaembError, UnknownComponentError, suggest
from metaemb.core.plugin.components import validate_options
from metaemb.core.plugin.manager import registry
from metaemb.core.plugin.modality import Modality
from metaemb.core.plugin.options import coerce, options_of
from metaemb.core.scoring.choice import default_scorer_name


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and (
            prefix == "" and (k in CORE_SECTIONS or k in COMPONENT_SECTIONS)
        ):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _core_field_type(cls: type, key: str) -> Any:
    return typing.get_type_hints(cls)[key]


def _modality_layers(mod: Modality) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The modality's core-key defaults, and its component options {section: {name: opts}}.

    A component key in `Modality.defaults` ("backbone.channels") belongs to the modality's own
    choice for that section, never to whatever component the user picks instead."""
    core: dict[str, Any] = {
        "model.frontend": mod.frontend,
        "model.features": mod.features,
        "model.backbone": mod.backbone,
        "data.folder": mod.sample_folder,
    }
    legacy: dict[str, Any] = {}
    for key, value in mod.defaults.items():
        section = key.partition(".")[0]
        (legacy if section in COMPONENT_SECTIONS else core)[key] = value
    options = {sec: {n: dict(o) for n, o in t.items()} for sec, t in mod.options.items()}
    for key, value in legacy.items():
        section, _, option = key.partition(".")
        if section == "demo":
            name = mod.demo_data
        else:
            core_section, field_name = CHOICE_FIELDS[section]
            name = core.get(f"{core_section}.{field_name}") or getattr(
                CORE_SECTIONS[core_section](), field_name
            )
        _set_nested(options.setdefault(section, {}).setdefault(name or "*", {}), option, value)
    return core, options


def _set_nested(table: dict[str, Any], dotted: str, value: Any) -> None:
    """table["a"]["b"] = value for "a.b"; a table merges into a table, a bare name (the old
    form of a part, `scorer.base = "plda"`) becomes {"name": …}."""
    head, _, rest = dotted.partition(".")
    if rest:
        inner = table.get(head)
        if not isinstance(inner, dict):
            inner = {"name": inner} if isinstance(inner, str) else {}
            table[head] = inner
        _set_nested(inner, rest, value)
    elif isinstance(value, dict) and isinstance(table.get(head), dict):
        for k, v in value.items():
            _set_nested(table[head], k, v)
    else:
        table[head] = dict(value) if isinstance(value, dict) else value


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`; nested tables merge unless `top` names another component."""
    out = dict(base)
    for k, v in top.items():
        old = out.get(k)
        if (
            isinstance(v, dict)
            and isinstance(old, dict)
            and v.get("name", old.get("name")) == (old.get("name"))
        ):
            out[k] = _merge(old, v)
        else:
            out[k] = v
    return out


def _set_items(sets: list[str]) -> dict[str, Any]:
    """The --set items as {key: value}; a key given twice is warned about (the last counts)."""
    import warnings

    out: dict[str, Any] = {}
    for item in sets:
        key, value = parse_set(item)
        if key in out and out[key] != value:
            warnings.warn(
                f"--set {key} is given twice ({out[key]!r}, then {value!r}); the last one counts.",
                stacklevel=3,
            )
        out[key] = value
    return out


def resolve(
    modality: str,
    config_file: str | Path | None = None,
    sets: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Build the resolved Config for a modality from its defaults, a TOML file and --set items,
    then check values, the chosen components' options and the data contract between them."""
    mod: Modality = registry("modalities").get(modality)
    check_option_targets(mod, registry("modalities").entry(modality).plugin)
    core_defaults, mod_options = _modality_layers(mod)
    layers: list[tuple[str, dict[str, Any]]] = [(f"modality '{modality}' defaults", core_defaults)]
    if base:
        layers.append(("saved config", _flatten(base)))
    if config_file:
        layers.append((f"config file '{config_file}'", _flatten(load_toml(config_file))))
    if sets:
        layers.append(("--set", _set_items(sets)))

    cfg = Config(modality=modality)
    pending: dict[str, dict[str, Any]] = {}  # section -> the user's (nested) option values
    augment: dict[str, dict[str, tuple[Any, bool]]] = {}  # name -> option -> (value, from_user)
    for origin, layer in layers:
        user = not origin.startswith("modality")
        _refuse_two_choices(layer, origin)
        for key, value in layer.items():
            _apply(cfg, key, value, origin, pending, augment, user)
    if cfg.modality != modality:
        raise ConfigError(
            f"config sets modality '{cfg.modality}' but the command asked for '{modality}'."
        )
    _known_choice("heads", cfg.model.head, "head", modality, layers)
    _known_choice("objectives", cfg.train.objective, "objective", modality, layers)
    if not cfg.eval.scorer:
        head = registry("heads").get(cfg.model.head)
        cfg.eval.scorer = default_scorer_name(getattr(head, "output", "point"))
    if not cfg.train.sampler:
        cfg.train.sampler = _objective_sampler(cfg.train.objective)
    check_values(cfg)
    from metaemb.core.train.augment import resolve_options

    augment_opts = resolve_options(
        cfg.train.augment, augment, cfg.model.features, _switched_off(layers)
    )
    if augment_opts:
        cfg.components["augment"] = augment_opts
    # Component options: the modality's options for the chosen component, then the user's.
    for section, kind in COMPONENT_SECTIONS.items():
        name = cfg.component_name(section)
        if not name:
            if pending.get(section):
                raise ConfigError(
                    f"config section [{section}] is set, but modality '{modality}' has no "
                    f"{section} component (pass --data DIR instead of demo options)."
                )
            continue
        _known_choice(kind, name, section, modality, layers)  # unknown names fail early
        user = migrate_options(kind, name, pending.get(section, {}), section)
        known = options_of(registry(kind).get(name))
        wildcard = {
            k: v for k, v in mod_options.get(section, {}).get("*", {}).items() if k in known
        }
        own = mod_options.get(section, {}).get(name, {})
        unknown = [k for k in own if k not in known and k not in user]
        if unknown:  # the modality's mistake, not the user's: say whose
            raise ConfigError(
                f"modality '{modality}' (plugin '{registry('modalities').entry(modality).plugin}')"
                f" sets option '{section}.{unknown[0]}' for {section} '{name}', which has no "
                f"such option;{suggest(unknown[0], known)} valid keys: "
                f"{', '.join(sorted(known)) or '(none)'}. Fix the modality's options."
            )
        opts = validate_options(kind, name, _merge(_merge(wildcard, own), user), section)
        if opts:
            cfg.components[section] = opts
    agree(cfg)  # shared parameters (a sample rate) follow the component that yields them
    check_chain(cfg)  # the data contract: neighbouring components must fit
    check_augmentations(cfg)  # each augmentation fits the data at its stage
    return cfg


def check_positives(cfg: Config) -> None:
    """An objective that learns from samples of one identity within a batch (its `batch` is
    'pk': triplet, contrastive, GME) with sampler.k = 1 gets no such pair: contrastive trained
    at loss 0 without a word, triplet warned every batch, GME failed inside the first epoch.
    Checked when training starts, not when a saved run is loaded (a run trained so before this
    check still evaluates)."""
    objective = cfg.train.objective
    wants_pk = getattr(registry("objectives").get(objective), "batch", None) == "pk"
    k = cfg.options("sampler").get("k")
    if wants_pk and cfg.train.sampler == "pk" and k == 1:  # k < 1: the sampler's own range
        raise ConfigError(
            f"objective '{objective}' learns from samples of one identity in a batch, and "
            f"sampler.k = {k} puts one sample of each identity in a batch: set sampler.k to 2 "
            "or more (--set sampler.k=4)."
        )


def _switched_off(layers: list[tuple[str, dict[str, Any]]]) -> set[str]:
    """Augmentations whose options were given before train.augment was set: the list was
    chosen after them (`--set train.augment=[]` over a recipe's [augment.*] tables), so leaving
    them out is deliberate, not an option without effect. Within the --set items their order
    counts (`--set train.augment=['speed'] --set augment.noise.p=0.3` forgot noise); within a
    file, a table of options beside the list is the file's own choice."""

    def position(i: int, origin: str, layer: dict[str, Any], key: str) -> tuple[int, int]:
        return (i, list(layer).index(key) if origin == "--set" else 0)

    chosen_at = max((position(i, origin, layer, "train.augment")
                     for i, (origin, layer) in enumerate(layers) if "train.augment" in layer),
                    default=(-1, 0))  # fmt: skip
    last: dict[str, tuple[int, int]] = {}
    for i, (origin, layer) in enumerate(layers):
        for key, value in layer.items():
            parts = key.split(".")
            if parts[0] != "augment":
                continue
            names = [parts[1]] if len(parts) > 1 else list(value) if isinstance(value, dict) else []
            for name in names:
                last[name] = position(i, origin, layer, key)
    return {name for name, at in last.items() if at <= chosen_at}


def _objective_sampler(objective: str) -> str:
    """The sampler an objective asks for with its `batch` (random when it says nothing); a name
    no plugin registered is the objective's mistake, and the message says whose."""
    entry = registry("objectives").entry(objective)
    sampler = getattr(entry.factory, "batch", "random")
    samplers = registry("samplers")
    if sampler not in samplers:
        raise ConfigError(
            f"objective '{objective}' (plugin '{entry.plugin}') asks for sampler '{sampler}' "
            f"(its `batch`), which no plugin registered;{suggest(sampler, samplers.names())} "
            f"registered: {', '.join(samplers.names())}. Fix the objective, or choose a sampler "
            "with --set train.sampler=NAME."
        )
    return sampler


def _known_choice(
    kind: str, name: str, section: str, modality: str, layers: list[tuple[str, dict[str, Any]]]
) -> None:
    """Unknown component names fail with suggestions; one the user never typed (the modality
    chose it) is the modality's mistake, and the message says whose."""
    try:
        registry(kind).get(name)
    except UnknownComponentError as exc:
        core, choice = CHOICE_FIELDS.get(section, ("model", section))
        key = f"{core}.{choice}"
        chosen_by_user = any(key in layer for origin, layer in layers[1:])
        if chosen_by_user or layers[0][1].get(key) != name:
            raise
        plugin = registry("modalities").entry(modality).plugin
        raise ConfigError(
            f"modality '{modality}' (plugin '{plugin}') chooses {key} = '{name}': {exc} "
            "Fix the modality, or choose another with --set."
        ) from None


def _refuse_two_choices(layer: dict[str, Any], origin: str) -> None:
    """One layer (a config file, the --set items) that names a component twice, differently
    (`eval.scorer = "plda"` and `[scorer] name = "asnorm"`): which one was meant?"""
    for section, (core, choice) in CHOICE_FIELDS.items():
        a, b = layer.get(f"{section}.name"), layer.get(f"{core}.{choice}")
        if a is not None and b is not None and a != b:
            raise ConfigError(
                f"{origin} sets {core}.{choice} = {b!r} and {section}.name = {a!r}: both choose "
                f"the {section}. Keep one of them."
            )


def _apply(
    cfg: Config,
    key: str,
    value: Any,
    origin: str,
    pending: dict[str, dict[str, Any]],
    augment: dict[str, dict[str, tuple[Any, bool]]],
    user: bool,
) -> None:
    if key in TOP_LEVEL:
        setattr(cfg, key, coerce(value, TOP_LEVEL[key], f"config key '{key}' ({origin})"))
        return
    section, _, field_name = key.partition(".")
    if section in CORE_SECTIONS and field_name:
        cls = CORE_SECTIONS[section]
        names = [f.name for f in dataclasses.fields(cls)]
        if field_name not in names:
            raise ConfigError(
                f"unknown config key '{key}' ({origin});{suggest(field_name, names)}"
                f"{_non_ascii(key)} valid keys in [{section}]: {', '.join(names)}."
            )
        typ = _core_field_type(cls, field_name)
        setattr(
            getattr(cfg, section), field_name, coerce(value, typ, f"config key '{key}' ({origin})")
        )
        return
    if section in COMPONENT_SECTIONS and field_name:
        if field_name == "name" and section in CHOICE_FIELDS:  # [scorer] name = "asnorm"
            core, choice = CHOICE_FIELDS[section]
            _apply(cfg, f"{core}.{choice}", value, origin, pending, augment, user)
            return
        _set_nested(pending.setdefault(section, {}), field_name, value)
        return
    if section == "augment":
        from metaemb.core.train.augment import collect

        collect(augment, field_name, value, origin, user)
        return
    valid = sorted([*TOP_LEVEL, *CORE_SECTIONS, *COMPONENT_SECTIONS, "augment"])
    head = section if field_name else key
    if not field_name and key in valid:  # `--set train=3`, or `train = 3` in a file
        raise ConfigError(
            f"config key '{key}' ({origin}) is a section, not a value: set one of its keys, "
            f"e.g. {key}.<key>=VALUE (`metaemb list` and the docs name them)."
        )
    raise ConfigError(
        f"unknown config key '{key}' ({origin});{suggest(head, valid)}{_non_ascii(key)} valid "
        f"sections and keys: {', '.join(valid)}."
    )


def _non_ascii(key: str) -> str:
    """A key that prints like a valid one but holds a look-alike letter (a Cyrillic 'а')."""
    odd = [c for c in key if not c.isascii()]
    if not odd:
        return ""
    return f" It holds a non-ASCII character ({', '.join(f'U+{ord(c):04X}' for c in odd[:3])})."


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a resolved Config saved by `to_dict` (e.g. from a checkpoint or config.toml);
    keys written by earlier versions are migrated with a warning (see config_checks)."""
    modality = d.get("modality")
    if not isinstance(modality, str) or not modality:
        raise ConfigError(
            f"the saved configuration names no modality (modality = {modality!r}); a run's "
            "config.toml records the modality it was trained for."
        )
    return resolve(modality, base=pin_former_defaults(d))


def pin_former_defaults(d: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the modality's changed defaults (`Modality.former_options`), and the
    core fields added since it was saved (`HASH_NEUTRAL`), made explicit where it lacks them: it
    was trained (and is evaluated) with the former value, not today's default."""
    try:
        mod = registry("modalities").get(str(d.get("modality")))
    except MetaembError:
        return d  # resolve() reports the unknown modality
    out = copy.deepcopy(d)
    for (section, key), neutral in HASH_NEUTRAL.items():  # a core field added after it was saved
        if isinstance(out.get(section), dict) and key not in out[section]:
            out[section][key] = copy.deepcopy(neutral)
    for section, by_component in mod.former_options.items():
        core, key = CHOICE_FIELDS.get(section, ("model", section))
        chosen = out.get(core, {}).get(key) or getattr(mod, section, "")
        former = by_component.get(chosen)
        if former:
            out[section] = _merge(former, out.get(section) or {})
    return out
