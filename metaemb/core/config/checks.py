"""Checks a resolved config must pass before any work: value ranges, plain run names, the
migration of option keys written by earlier metaemb versions, and a modality's option tables.

Out-of-range values are refused, never clamped: a negative learning rate, a validation fraction
outside (0, 1) or an empty list of target priors would otherwise fail (or silently do something
else) after minutes of work.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from metaemb.core.config.sections import COMPONENT_SECTIONS
from metaemb.core.errors import ConfigError, suggest
from metaemb.core.plugin.components import part_table
from metaemb.core.plugin.manager import registry
from metaemb.core.plugin.options import options_of, parts_of

if TYPE_CHECKING:  # pragma: no cover
    from metaemb.core.config.run_config import Config
    from metaemb.core.plugin.modality import Modality

# A run name becomes a folder name under runs/<modality>/: letters, digits, ".", "_", "-", "+".
RUN_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]{0,99}")  # a leading "-" reads as an option


def _positive(v: float) -> bool:
    return v > 0


def _non_negative(v: float) -> bool:
    return v >= 0


def _fraction(v: float) -> bool:
    return 0 < v < 1


# (section, key) -> (test, what the value must be)
RANGES: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("data", "val_fraction"): (_fraction, "a fraction strictly between 0 and 1"),
    ("data", "workers"): (_non_negative, "≥ 0 (0 loads data in the main process)"),
    ("model", "dim"): (_positive, "≥ 1"),
    ("train", "epochs"): (_positive, "≥ 1"),
    ("train", "batch_size"): (
        lambda v: v >= 2,
        "≥ 2 (a batch of one sample cannot be trained: batch normalisation and the pair and "
        "triplet losses need two or more)",
    ),
    ("train", "lr"): (_positive, "> 0"),
    ("train", "weight_decay"): (_non_negative, "≥ 0"),
    ("train", "momentum"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train", "warmup_epochs"): (_non_negative, "≥ 0"),
    ("train", "grad_clip"): (_non_negative, "≥ 0 (0 disables clipping)"),
    ("train", "classifier_lr_mult"): (_non_negative, "≥ 0"),
    ("train", "head_lr_mult"): (_non_negative, "≥ 0"),
    ("train", "freeze_trunk_epochs"): (_non_negative, "≥ 0"),
    ("train", "init_distill"): (_non_negative, "≥ 0 (a weight pulling towards the init model)"),
    ("train", "rehearsal"): (_non_negative, "≥ 0 (old samples per old identity)"),
    ("train", "seed"): (
        lambda v: 0 <= v < 2**32,
        "in [0, 2**32) (what every random generator takes)",
    ),
    ("eval", "max_targets"): (_positive, "≥ 1"),
    ("eval", "nontargets"): (_positive, "≥ 1"),
    ("eval", "batch_size"): (_positive, "≥ 1"),
}


def check_types(cfg: Config) -> None:
    """Refuse a core value of the wrong type (a field set by hand on a resolved Config from
    Python: `cfg.train.epochs = "2"`), naming the key, before a torch error deep inside does.
    What a notebook naturally gives is converted: a Path where text goes, numpy numbers
    (`check_component_options` checks the components' options)."""
    import numbers
    import os
    import typing

    simple = {int: "an integer", float: "a number", bool: "true or false", str: "text"}
    for section in ("data", "model", "train", "eval"):
        obj = getattr(cfg, section)
        hints = typing.get_type_hints(type(obj))
        for field in dataclasses.fields(obj):
            want, value = hints.get(field.name), getattr(obj, field.name)
            if want not in simple:
                continue
            if want is str and isinstance(value, os.PathLike):
                value = os.fspath(value)
            elif (
                want is int and isinstance(value, numbers.Integral) and not isinstance(value, bool)
            ):
                value = int(value)
            elif want is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
                value = float(value)
            elif want is bool and type(value).__name__ == "bool" and type(value) is not bool:
                value = bool(value)  # numpy's bool_ (a comparison's result in a notebook)
            setattr(obj, field.name, value)
            fits = isinstance(value, want) and (want is bool or not isinstance(value, bool))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                fits = True
            if not fits:
                raise ConfigError(
                    f"config key '{section}.{field.name}' must be {simple[want]}; got {value!r} "
                    "(set by hand on the Config? items given to resolve are converted and "
                    "checked)."
                )


def check_component_options(cfg: Config) -> None:
    """Every chosen component's options against its parameters (names, types), as resolve
    checks them: a value set by hand in `cfg.components` is named here, not blamed on a file."""
    from metaemb.core.plugin.components import validate_options

    for section, kind in COMPONENT_SECTIONS.items():
        name = cfg.component_name(section)
        if name and section in cfg.components:  # kept converted, as resolve keeps them (32.0: 32)
            cfg.components[section] = validate_options(kind, name, cfg.options(section), section)


def check_values(cfg: Config) -> None:
    """Refuse out-of-range values of the core sections with the key and the valid range."""
    check_types(cfg)
    check_run_name(cfg.name)
    for (section, key), (test, what) in RANGES.items():
        value = getattr(getattr(cfg, section), key)
        if (isinstance(value, float) and not math.isfinite(value)) or not test(value):
            finite = "" if not isinstance(value, float) or math.isfinite(value) else "finite and "
            raise ConfigError(
                f"config key '{section}.{key}' must be {finite}{what}; got {value!r}."
            )
    for section in ("data", "model", "train", "eval"):  # a typo of 25 digits is no int64
        for field in dataclasses.fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), field.name)
            if type(value) is int and not -(2**63) <= value < 2**63:
                raise ConfigError(
                    f"config key '{section}.{field.name}' = {value} does not fit a 64-bit "
                    "integer; a typo?"
                )
    targets = cfg.eval.p_targets
    if not targets:
        raise ConfigError(
            "config key 'eval.p_targets' is empty; give at least one target prior for minDCF, "
            "e.g. eval.p_targets=[0.01, 0.05]."
        )
    bad = [p for p in targets if not 0 < p < 1]
    if bad:
        raise ConfigError(
            f"config key 'eval.p_targets' holds {bad[0]!r}; every target prior must be strictly "
            "between 0 and 1."
        )


def check_run_name(name: str) -> None:
    """A run name is one plain folder name: it must not reach outside runs/<modality>/."""
    if not RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"run name {name!r} is not a plain name; use letters, digits, '.', '_', '-' or '+' "
            "(at most 100, not starting with '.' or '-'), e.g. --set name=resnet-arcface."
        )


# ---------------------------------------------------------------------------------------------
def migrate_options(kind: str, name: str, options: dict[str, Any], section: str) -> dict[str, Any]:
    """Move option keys written before composites took nested tables into their part's table.

    Earlier versions restated a part's parameters on the composite (`scorer.lda_dim` for the
    s-norm's base scorer, `features.n_mels` for the filterbank of speech features); such a key is
    moved to the part that takes it (`scorer.base.lda_dim`), or dropped when the chosen part has
    no such option (e.g. `subtract_mean` with a PLDA base, which ignored it), with a warning.
    """
    factory = registry(kind).get(name)
    parts = parts_of(factory)
    if not parts:
        return options
    known = options_of(factory)
    out = dict(options)
    for key in list(out):
        if key in known:
            continue
        for part, part_kind in parts.items():
            if isinstance(part_kind, str):
                table = part_table(out.get(part), known[part].default)
            else:  # a fixed part: a table of its factory's options
                table = dict(out.get(part) or {})
            if table is None:
                continue
            part_factory = _part_factory(part_kind, table)
            if part_factory is None:
                continue
            if key in options_of(part_factory):
                table[key] = out.pop(key)
                out[part] = table
                warnings.warn(
                    f"config key '{section}.{key}' is now '{section}.{part}.{key}' (moved; "
                    f"write it in the [{section}.{part}] table).",
                    stacklevel=2,
                )
                break
            if isinstance(part_kind, str) and any(
                key in options_of(e.factory) for e in registry(part_kind).entries()
            ):
                out.pop(key)
                warnings.warn(
                    f"config key '{section}.{key}' does not apply to {section}.{part} "
                    f"'{table.get('name')}' and is ignored (as it was before).",
                    stacklevel=2,
                )
                break
    return out


def _part_factory(part_kind: Any, table: dict[str, Any]) -> Any:
    if not isinstance(part_kind, str):
        return part_kind  # a fixed part: the factory itself
    name = table.get("name")
    return (
        registry(part_kind).get(name)
        if isinstance(name, str) and name in registry(part_kind)
        else None
    )


def check_option_targets(mod: Modality, plugin: str) -> None:
    """Every section and component that `mod.options` names exists: options for a misspelt
    component ("xvectr") or section would otherwise never apply, without a word."""
    whose = f"modality '{mod.name}' (plugin '{plugin}')"
    for section, table in mod.options.items():
        if section not in COMPONENT_SECTIONS:
            raise ConfigError(
                f"{whose} sets options for section '{section}', which names no component "
                f"kind;{suggest(section, COMPONENT_SECTIONS)} sections: "
                f"{', '.join(COMPONENT_SECTIONS)}. Fix the modality's options."
            )
        known = registry(COMPONENT_SECTIONS[section])
        for name in table:
            if name != "*" and name not in known:
                raise ConfigError(
                    f"{whose} sets options for {known.singular} '{name}', which is not "
                    f"registered, so they would never apply;{suggest(name, known.names())} "
                    f"registered: {', '.join(known.names()) or '(none)'}. Fix the modality's "
                    "options."
                )
