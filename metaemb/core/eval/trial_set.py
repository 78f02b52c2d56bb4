"""The trials an evaluation scores: a TrialSet (trials, where they came from, their folds), a
protocol's trials and options, checked before anything is embedded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metaemb.core.errors import ConfigError, DataError, MetaembError, PluginError, first_line
from metaemb.core.eval.trial_checks import checked_trials, relative_trials, warn_duplicates
from metaemb.core.eval.trials import TrialList, folds_of
from metaemb.core.plugin.interfaces import Trial
from metaemb.core.plugin.manager import registry


@dataclass
class TrialSet:
    """Trials to score, where they came from, and how many contiguous folds they form (0: none)."""

    trials: list[Trial]
    name: str
    source: str
    folds: int = 0
    own_validation: bool = False  # the run's validation trials, regenerated (`evaluate RUN`)

    @property
    def read_as(self) -> str:
        """The trial-list format (and its plugin) the trials were read as, or ""."""
        return getattr(self.trials, "read_as", "")

    def labels(self) -> torch.Tensor:
        missing = sum(t.label is None for t in self.trials)
        if missing:
            raise DataError(
                f"{self.source}: {missing} of {len(self.trials)} trials have no target/non-target "
                "label; metrics and calibration need labelled trials."
            )
        return torch.tensor([int(t.label) for t in self.trials])  # type: ignore[arg-type]


def trial_folds(trials: list[Trial], source: str) -> int:
    """The contiguous folds the trials declare (k-fold accuracy), checked before any embedding."""
    folds = folds_of(trials)
    if folds and len(trials) % folds:
        raise DataError(
            f"{source}: {len(trials)} trials cannot form the {folds} equal folds it declares."
        )
    return folds


def read_protocol(
    name: str, root: Path, trials: Path | None, options: dict[str, Any] | None = None
) -> Any:
    """Protocol `name`'s trials of the dataset at `root`; a reader that fails with anything but
    a metaemb error (a plugin's KeyError on a missing subject) is named with its plugin."""
    entry = registry("protocols").entry(name)
    try:
        return entry.factory(root, trials, **(options or {}))
    except (MetaembError, MemoryError):
        raise
    except Exception as exc:
        why = first_line(exc)
        raise PluginError(
            f"protocol '{name}' (plugin '{entry.plugin}') failed reading the trials of "
            f"'{root}': {type(exc).__name__}: {why} (a protocol meeting data it cannot "
            "read should raise DataError saying what is wrong)."
        ) from exc


def protocol_trials(
    name: str, trials: Any, root: Path | None = None, warned: bool = False
) -> list[Trial]:
    """A protocol's result, checked: a list of Trial (plain tuples, a str enroll or a label
    'genuine' would fail later naming neither the protocol nor its plugin), whose paths are
    checked and made relative to `root` as a trial file's are (`..` refused, absolute paths
    inside the root made relative), with the protocol named. `warned`: the protocol read a
    trial file, whose duplicates were already warned about."""
    plugin = registry("protocols").entry(name).plugin
    who = f"protocol '{name}' (plugin '{plugin}')"
    folds = trials.folds if isinstance(trials, TrialList) else 0
    path = getattr(trials, "path", "") or ""  # the list file it read, if it read one
    relative = relative_trials(checked_trials(trials, who), root, who)
    if not warned:  # self-pairs flatter every target metric, as in a file
        warn_duplicates(relative, who)
    return TrialList(relative, folds=folds, path=path) if folds or path else relative


def protocol_options(name: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every option protocol `name` ran with: its defaults, then those given."""
    import inspect

    from metaemb.core.plugin.options import options_of

    found = options_of(registry("protocols").get(name)).items()
    defaults = {k: o.default for k, o in found if o.default is not inspect.Parameter.empty}
    return {**defaults, **(given or {})}


def parse_protocol_options(
    protocol: str | None, items: list[str] | dict[str, Any]
) -> dict[str, Any]:
    """`--protocol-set KEY=VALUE` items (or their {key: value}), checked against the
    protocol's options (names, types) before anything is embedded."""
    if not items:
        return {}
    if protocol is None:
        raise ConfigError("--protocol-set sets options of --protocol NAME: give the protocol.")
    from metaemb.core.config.toml_io import parse_set
    from metaemb.core.plugin.components import validate_options

    options = dict(items) if isinstance(items, dict) else dict(parse_set(i) for i in items)
    return validate_options("protocols", protocol, options, "--protocol-set")
