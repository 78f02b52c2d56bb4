"""Training-batch augmentation: the `train.augment` list, its `[augment.<name>]` options, and
the Augmenter that runs the chosen components on the training device, in training mode only.

Config: `train.augment = ["a", "b"]` names registered augmentations, applied in that order
within their stage; `[augment.a]` holds the options of "a" (`--set augment.a.p=0.5`). Options
of an augmentation that is not in the list are validated (types and ranges), then dropped with a
warning: switching one off (`--set train.augment=[]`) needs no other change, and an option set
for an augmentation never switched on is not silently without effect.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metaemb.core.errors import ConfigError, MetaembError
from metaemb.core.plugin.components import build, validate_options
from metaemb.core.plugin.contract import ANY, SAME, Kind
from metaemb.core.plugin.interfaces import Augmentation
from metaemb.core.plugin.manager import registry
from metaemb.core.plugin.options import options_of
from metaemb.core.train.augment_checks import check_output, warn_if_not_replayable

SECTION = "augment"
KIND = "augmentations"
STAGES = ("input", "features")

Pending = dict[str, dict[str, tuple[Any, bool]]]  # name -> option -> (value, from_user)


def collect(pending: Pending, field_name: str, value: Any, origin: str, user: bool) -> None:
    """Record one `augment…` config key: `augment` = {name: {…}}, `augment.name` = {…} or
    `augment.name.option` = value."""
    if not field_name:
        if not isinstance(value, dict):
            raise ConfigError(
                f"config key 'augment' ({origin}) must be a table of [augment.<name>] tables."
            )
        for name, table in value.items():
            collect(pending, str(name), table, origin, user)
        return
    name, _, option = field_name.partition(".")
    if option:
        pending.setdefault(name, {})[option] = (value, user)
        return
    if not isinstance(value, dict):
        raise ConfigError(
            f"config key 'augment.{name}' ({origin}) must be a table of that augmentation's "
            f"options (e.g. augment.{name}.p=0.5), got {value!r}."
        )
    for option, v in value.items():
        pending.setdefault(name, {})[str(option)] = (v, user)


def resolve_options(
    chosen: list[str], pending: Pending, features: str = "", switched_off: set[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Validate every augmentation named in the list or the options; keep the chosen ones'.
    With the features' registered name, each chosen augmentation's data kind is checked too.
    Options of one left out of the list are warned about, unless it is in `switched_off` (the
    list was set after its options: a deliberate switch-off)."""
    reg = registry(KIND)
    for name in chosen:
        aug = reg.get(name)  # unknown names fail with suggestions
        if features:
            _check_kind(name, aug, registry("features").get(features), features)
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"train.augment names an augmentation twice: {chosen}.")
    out: dict[str, dict[str, Any]] = {}
    for name, keys in pending.items():
        if name not in reg:
            if not any(user for _, user in keys.values()):
                continue  # a modality default for a component this install lacks
            reg.get(name)
        known = options_of(reg.get(name))
        opts = {k: v for k, (v, user) in keys.items() if user or k in known}
        opts = validate_options(KIND, name, opts, f"{SECTION}.{name}")
        if name in chosen and opts:
            out[name] = opts
        elif any(user for _, user in keys.values()):
            _check_values(name, opts)
            if name in (switched_off or set()):
                continue
            set_here = sorted(k for k, (_, user) in keys.items() if user)
            import json
            import warnings

            warnings.warn(
                f"{SECTION}.{name}.{set_here[0]} is set but '{name}' is not in train.augment "
                f"({json.dumps(chosen)}), so it is not applied: add it (--set "
                f"'train.augment={json.dumps([*chosen, name])}') to train with it.",
                stacklevel=2,
            )
    return out


def _check_values(name: str, options: dict[str, Any]) -> None:
    """Range-check the options of an augmentation that is not in the list by building it once
    (its folder left out: a disabled augmentation reads nothing), so a value refused when it
    is switched on is refused now, not later."""
    build(KIND, name, {k: v for k, v in options.items() if k != "folder"})


def full_options(chosen: list[str], options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every option of the chosen augmentations, defaults included (for the run hash)."""
    out = {}
    for name in chosen:
        factory = registry(KIND).get(name)
        defaults = {k: o.default for k, o in options_of(factory).items()}
        out[name] = {**defaults, **options.get(name, {})}
        for key, value in (getattr(factory, "hash_neutral", None) or {}).items():
            if out[name].get(key, value) == value:  # an option added later, at its old behaviour
                out[name].pop(key, None)
    return out


class Augmenter(nn.Module):
    """The run's augmentations; `input`/`features` are no-ops unless the module is training."""

    def __init__(self, augmentations: dict[str, Augmentation], features: Any) -> None:
        super().__init__()
        self.by_stage: dict[str, list[str]] = {s: [] for s in STAGES}
        spec = features.input_spec() if hasattr(features, "input_spec") else {}
        for name, aug in augmentations.items():
            if aug.stage not in STAGES:
                raise ConfigError(
                    f"augmentation '{name}' declares stage '{aug.stage}'; expected one of "
                    f"{', '.join(STAGES)}."
                )
            _check_kind(name, aug, features)
            aug.setup(spec)
            self.by_stage[aug.stage].append(name)
        self.augs = nn.ModuleDict(augmentations)
        self.classes: int | None = None  # set by num_classes()
        self._checked: set[str] = set()

    def num_classes(self, num_identities: int) -> int:
        n = num_identities
        for aug in self.augs.values():
            n = aug.num_classes(n)
        self.classes = n  # what the labels an augmentation returns must stay below
        return n

    def _run(
        self, stage: str, x: Tensor, lengths: Tensor | None, labels: Tensor, force: bool = False
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        if not (self.training or force) or not self.by_stage[stage]:
            return x, lengths, labels
        # Signal processing in float32, outside bf16 autocast: resampling or FFT convolution in
        # bf16 loses the precision the augmentation promises (and mixes dtypes in index writes).
        with torch.autocast(x.device.type, enabled=False):
            x = x.float() if x.is_floating_point() else x
            for name in self.by_stage[stage]:
                if name in self._checked:
                    out = self.augs[name](x, lengths, labels)
                else:  # a plugin's mistake is named once, up front
                    out = self._first_call(name, x, lengths, labels)
                    check_output(self.described(name), out, x, lengths, self.classes)
                    warn_if_not_replayable(
                        self.described(name), self.augs[name], x, lengths, labels
                    )
                    self._checked.add(name)
                x, lengths, labels = out
        return x, lengths, labels

    def _first_call(self, name: str, x: Tensor, lengths: Tensor | None, labels: Tensor) -> Any:
        """The augmentation's first batch: an exception in it is named with the batch it got
        (else it would surface as a failure of the first training step, blamed on the
        objective)."""
        try:
            return self.augs[name](x, lengths, labels)
        except (MetaembError, torch.OutOfMemoryError):
            raise
        except Exception as exc:
            raise ConfigError(
                f"{self.described(name)} failed on its first batch, {x.dtype} "
                f"[{', '.join(map(str, x.shape))}] (it accepts "
                f"'{getattr(self.augs[name].accepts, 'name', 'any')}'): "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def described(self, name: str) -> str:
        return f"augmentation '{name}' (plugin '{registry(KIND).entry(name).plugin}')"

    @torch.no_grad()
    def first_nonfinite(
        self, x: Tensor, lengths: Tensor | None, labels: Tensor, features: Any
    ) -> str | None:
        """The first augmentation that makes NaN or inf from a finite batch (named), or None:
        run when a loss turned non-finite, to tell a broken augmentation from the network."""
        for stage in STAGES:
            if stage == "features":
                x, lengths = features(x, lengths)
            if not torch.isfinite(x).all():
                return None  # not finite before this stage: not an augmentation's doing
            for name in self.by_stage[stage]:
                x, lengths, labels = self.augs[name](x.float(), lengths, labels)
                if x.is_floating_point() and not torch.isfinite(x).all():
                    return f"{self.described(name)} gave NaN or inf values from a finite batch"
        return None

    def input(self, x: Tensor, lengths: Tensor | None, labels: Tensor):
        """Augment the collated batch before the features run."""
        return self._run("input", x, lengths, labels)

    def features(self, x: Tensor, lengths: Tensor | None, labels: Tensor):
        """Augment the network input after the features ran."""
        return self._run("features", x, lengths, labels)


def _described(name: str) -> str:
    """ "augmentation 'x' (plugin 'p')" for a registered augmentation."""
    from metaemb.core.errors import UnknownComponentError
    from metaemb.core.plugin.manager import registry

    try:
        return f"augmentation '{name}' (plugin '{registry('augmentations').entry(name).plugin}')"
    except UnknownComponentError:  # not registered (a test's own): its name alone
        return f"augmentation '{name}'"


def _check_kind(name: str, aug: Any, features: Any, features_name: str = "") -> None:
    """Refuse an augmentation whose data kind the features do not take/produce at its stage."""
    if aug.accepts is None:
        return
    attr = "accepts" if aug.stage == "input" else "yields"
    declared = getattr(features, attr, None)
    kinds = declared if isinstance(declared, tuple) else (declared,)
    names = [k.name for k in kinds if isinstance(k, Kind)]
    if SAME.name in names:
        return  # passes its input through: the chain knows what that is (check_augmentations)
    if names and aug.accepts.name not in names and ANY.name not in names:
        where = "take" if aug.stage == "input" else "produce"
        other = "yields" if aug.stage == "input" else "accepts"
        fits = getattr(features, other, None)
        fits_names = [k.name for k in (fits if isinstance(fits, tuple) else (fits,)) if isinstance(k, Kind)]  # fmt: skip
        hint = ""
        if aug.accepts.name in fits_names:  # it would fit at the other stage
            hint = f' (its kind is what they {other[:-1]}: stage = "{"features" if aug.stage == "input" else "input"}"?)'
        who = _described(name)
        raise ConfigError(
            f"{who} augments '{aug.accepts.name}' at stage '{aug.stage}' but the features "
            f"'{features_name or type(features).__name__}' {where} '{', '.join(names)}'{hint}; "
            f"remove '{name}' from train.augment or choose features that fit."
        )


def build_augmenter(
    chosen: list[str], options: dict[str, dict[str, Any]], features: Any
) -> Augmenter | None:
    """The Augmenter for a run (None when `train.augment` is empty)."""
    if not chosen:
        return None
    augs = {name: build(KIND, name, options.get(name, {})) for name in chosen}
    return Augmenter(augs, features)
