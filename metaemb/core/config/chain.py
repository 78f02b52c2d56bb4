"""The data contract applied to a resolved configuration: its components in data-flow order,
shared parameters carried from the component that yields them to the one that accepts them, and
the check that neighbours fit (the kinds themselves are in `metaemb.core.plugin.contract`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metaemb.core.config.run_config import Config
from metaemb.core.errors import ConfigError
from metaemb.core.plugin.components import full_options
from metaemb.core.plugin.contract import ANY, FEATURES, SAME, Kinds, Link, check_links, declared
from metaemb.core.plugin.manager import registry


def chain(config: Config) -> list[Link]:
    """The resolved config's components in data-flow order, with their bound contracts."""
    out = []
    for section in ("folder", "frontend", "features", "backbone", "head", "objective", "scorer"):
        kind = config.component_kind(section)
        name = config.component_name(section)
        entry = registry(kind).entry(name)
        opts = full_options(kind, name, config.options(section))
        accepts = None if section == "folder" else declared(entry, "accepts", opts)
        yields = declared(entry, "yields", opts)
        if section == "backbone" and yields is None:
            yields = (FEATURES,)
        if section == "head" and accepts is None:
            accepts = (FEATURES,)
        if section in ("objective", "scorer"):
            yields = (SAME,)  # both read the head's output; neither feeds the other
        out.append(Link(section, name, accepts, yields))
    return out


def check_chain(config: Config) -> None:
    """Raise ConfigError when two neighbouring components of `config` do not fit."""
    check_links(chain(config))


def agree(config: Config) -> list[str]:
    """One source of truth for shared parameters: where a component accepts a kind whose
    parameter is bound to one of its options (`Opt`) that the config leaves unset, and the
    component before it yields that kind with another value, the option takes that value
    (`--set folder.sample_rate=8000` carries to the VAD and the filterbank). Options the user
    set are never changed; `check_chain` then reports any contradiction. Returns the keys set."""
    done: list[str] = []
    for _ in range(16):
        changed = False
        given: Kinds | None = None
        for link in chain(config):
            if given is not None and link.accepts is not None:
                table = config.components.setdefault(link.section, {})
                for a in link.accepts:
                    for g in given:
                        same = g.name == a.name or a.name == ANY.name
                        for key, src in a.sources if same else ():
                            value = g.param(key)
                            if value is None or value == a.param(key) or _has(table, src):
                                continue
                            _put(table, src, value)
                            done.append(f"{link.section}.{src}={value!r}")
                            changed = True
                if not table:
                    config.components.pop(link.section)
            if link.yields is None:
                given = None
            elif link.yields != (SAME,):
                given = link.yields
        if not changed:
            return done
    return done


def _has(table: Mapping[str, Any], dotted: str) -> bool:
    head, _, rest = dotted.partition(".")
    if head not in table:
        return False
    return _has(table[head], rest) if rest and isinstance(table[head], Mapping) else not rest


def _put(table: dict[str, Any], dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        inner = table.get(head)
        table[head] = dict(inner) if isinstance(inner, Mapping) else {}
        _put(table[head], rest, value)
    else:
        table[head] = value


def check_scorer(config: Config, scorer: str, options: Mapping[str, Any] | None = None) -> None:
    """Check that scorer `scorer` accepts what the config's head yields (evaluate --scorer)."""
    head = registry("heads").entry(config.model.head)
    entry = registry("scorers").entry(scorer)
    opts = full_options("scorers", scorer, dict(options or {}))
    h = Link("head", head.name, None, declared(head, "yields", config.options("head")))
    s = Link("scorer", scorer, declared(entry, "accepts", opts), None)
    check_links([h, s])


def kinds_around_features(config: Config) -> dict[str, Kinds | None]:
    """The kinds that reach the features ("input") and leave them ("features"), with `SAME`
    resolved through the chain: a pass-through frontend or features hands on what the folder
    yields. None where a component declares nothing."""
    given: Kinds | None = None
    for link in chain(config):
        if link.section == "features":
            out = given if link.yields == (SAME,) else link.yields
            return {"input": given, "features": out}
        if link.yields is None:
            given = None
        elif link.yields != (SAME,):
            given = link.yields
    return {"input": None, "features": None}


def check_augmentations(config: Config) -> None:
    """Each chosen augmentation fits the data at its stage: waveform noise on feature matrices,
    or masking on raw waveforms, is refused before training, naming what flows there."""
    if not config.train.augment:
        return
    flows = kinds_around_features(config)
    features = config.model.features
    for name in config.train.augment:
        aug = registry("augmentations").get(name)
        accepts = getattr(aug, "accepts", None)
        kinds = flows.get(getattr(aug, "stage", "input"))
        if accepts is None or not kinds:
            continue
        names = [k.name for k in kinds]
        if accepts.name in names or ANY.name in (accepts.name, *names):
            continue
        where = (
            f"the features '{features}' take"
            if aug.stage == "input"
            else f"the features '{features}' produce"
        )
        plugin = registry("augmentations").entry(name).plugin
        raise ConfigError(
            f"augmentation '{name}' (plugin '{plugin}') augments '{accepts.name}' at stage "
            f"'{aug.stage}' but {where} '{', '.join(names)}' (folder '{config.data.folder}'); "
            f"remove '{name}' from train.augment or choose data and features that fit."
        )
