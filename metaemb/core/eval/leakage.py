"""Identities a run trained on that turn up again in its evaluation trials.

Verification results are only honest on identities the network never saw: a face or voice it was
trained on scores far better than a stranger's. `evaluate RUN` on its own data holds the
validation identities out by construction; a copy of the training folder, another folder
sharing identities with it, or a trial list over training files does not. The run's checkpoint
lists the identities it trained on, so evaluation can say how many of the scored ones they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.markup import escape

from metaemb.core.errors import first_few


def training_identities(state: dict[str, Any]) -> set[str] | None:
    """The identities the run trained on (its training split), or None for runs saved before
    checkpoints listed them (and for imported pretrained models, which trained on none of ours)."""
    names = state.get("training_identities")
    return None if names is None else {str(n) for n in names}


def identities_of(folder: Any, paths: Any = None) -> set[str]:
    """The identities of the folder's files at `paths` (all its files when None)."""
    if paths is None:
        return {s.identity for s in folder.samples}
    identity = {s.path: s.identity for s in folder.samples}
    return {identity[p] for p in paths if p in identity}


def trial_paths(trials: list[Any]) -> set[str]:
    """Every file a list of verification trials scores."""
    return {p for t in trials for p in (*t.enroll, t.test)}


def count_and_warn(
    state: dict[str, Any],
    scored: set[str],
    console: Any,
    subject_of: Callable[[str], str] | None = None,
) -> int:
    """How many scored identities the run trained on (or trained on another identity of the
    same subject, e.g. `u001` and `u001/forgery`); prints the warning when there are any."""
    trained = training_identities(state)
    shared = seen_in_training(trained, scored, subject_of)
    message = overlap_warning(shared, scored)
    if message:
        console.print(f"[yellow]warning:[/] {escape(message)}")
    return len(shared)


def seen_in_training(
    trained: set[str] | None, scored: set[str], subject_of: Callable[[str], str] | None = None
) -> list[str]:
    """The scored identities whose subject the run trained on (by name when `subject_of` is
    None), sorted."""
    if not trained:
        return []
    if subject_of is None:
        return sorted(scored & trained)
    subjects = {subject_of(t) for t in trained}
    return sorted(s for s in scored if subject_of(s) in subjects)


def overlap_warning(shared: list[str], scored: set[str]) -> str | None:
    """A warning naming the scored identities the run trained on, or None when there are none."""
    if not shared:
        return None
    shown = first_few(shared, quote=False)
    return (
        f"{len(shared)} of the {len(scored)} identities scored have the names of "
        f"identities the run trained on, or belong to their subjects ({shown}). If they are the "
        "same people, the results are "
        "optimistic: evaluate on identities the run did not train on (`metaemb evaluate RUN` "
        "alone uses its held-out validation identities)."
    )
