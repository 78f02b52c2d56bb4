"""What changed since a run was trained, said when it is loaded: a run stopped before its last
epoch, a config.toml edited by hand (ignored: the checkpoint's configuration is used), and
features that now prepare inputs otherwise (a changed plugin default). Each still loads, with a
warning, so a partial or shifted result is not taken for the run's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metaemb.core.config import Config, from_dict
from metaemb.core.errors import MetaembError, first_few


def warn_unfinished(run: Path, ckpt: Path, state: dict[str, Any], epochs: int) -> None:
    """A run stopped before its last epoch (killed, out of time) scores as any other: say so,
    with the epoch of the checkpoint used, so a partial result is not taken for the run's."""
    import warnings

    from metaemb.core.eval.catalog import training_now
    from metaemb.core.runs import epoch_records

    done = max((int(r.get("epoch", 0)) for r in epoch_records(run / "metrics.jsonl")), default=0)
    if 0 < done < epochs:
        trainer = training_now(run)
        then = (
            f"It is being trained now (pid {trainer}): what this makes will not match the "
            "finished model's."
            if trainer
            else "Re-run its train command to finish it."
        )
        warnings.warn(
            f"run '{run}' is unfinished: {done} of its {epochs} epochs trained; this uses "
            f"{ckpt.name} (epoch {state.get('epoch', '?')}). {then}",
            stacklevel=3,
        )


def warn_edited_config(run: Path, ckpt: Path, saved: dict[str, Any]) -> None:
    """The run folder's config.toml is a record of the run; the checkpoint's own configuration is
    what every command uses. A config.toml edited to change the scoring was ignored silently.
    Both are read with today's defaults: a default a plugin changed since is not an edit."""
    import warnings

    from metaemb.core.config.toml_io import load_toml

    toml = run / "config.toml"
    if not toml.is_file():
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            same = from_dict(load_toml(toml)).hash() == from_dict(saved).hash()
    except MetaembError:
        same = False
    if not same:
        warnings.warn(
            f"'{toml}' differs from the configuration saved in '{ckpt.name}' (edited by hand?); "
            "metaemb uses the checkpoint's: config.toml records the run, it does not configure "
            "it. Change how a run is scored with evaluate's options (--scorer, --p-target, "
            "--trials …).",
            stacklevel=3,
        )


def warn_changed_inputs(ckpt: Path, saved: Any, features: Any, cfg: Config) -> None:
    """Warn when the rebuilt features describe their inputs otherwise than at training (their
    `input_spec`): a plugin that changed a default prepares other inputs for the same weights,
    and every score moves without an error. Keys the saved spec lacks (added since) are not
    compared."""
    if not isinstance(saved, dict):
        return
    try:
        now = features.input_spec()
    except Exception:  # reported where the features are used
        return
    if not isinstance(now, dict):
        return
    changed = []
    for key, was in saved.items():
        if key in now:
            try:
                same = bool(now[key] == was)
            except Exception:  # values that do not compare (arrays): unequal
                same = False
            if not same:
                changed.append(f"{key} {was!r} → {now[key]!r}")
    if changed:
        import warnings

        from metaemb.core.train.checks.naming import component

        warnings.warn(
            f"{component(cfg, 'features')} now prepares inputs otherwise than when '{ckpt}' "
            f"was trained ({first_few(changed, quote=False)}): a changed default of the "
            "component? The model will see other inputs than it learned from, and its "
            "embeddings and scores change. Install the plugin version it was trained with, or "
            "retrain.",
            stacklevel=2,
        )
