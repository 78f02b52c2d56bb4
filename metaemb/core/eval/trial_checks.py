"""Checks on trials, wherever they come from (a built-in or a plugin's trial format, a protocol,
generated lists): paths stay inside the data root, a plugin's trials are well-formed before
anything is embedded, paths fit the list formats and the scores file, and duplicated,
self-paired or mislabelled trials are said rather than silently counted.
"""

from __future__ import annotations

import numbers
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from metaemb.core.errors import DataError, PluginError, first_few
from metaemb.core.plugin.interfaces import Trial


def safe_path(path: str, root: Path | None, where: str) -> str:
    """`path` as a POSIX path relative to the data root; refuses '..' and paths outside root."""
    if not path:
        raise DataError(f"{where}: empty path.")
    if _plain(path):  # most lines of a large list: a trial list of 1e6 lines took minutes
        return path
    posix = path.replace("\\", "/")
    if ".." in PurePosixPath(posix).parts:
        raise DataError(
            f"{where}: path '{path}' holds '..': refused, as '..' escapes the data root in "
            "general; write the path from the data root down."
        )
    if PurePosixPath(posix).is_absolute() or PureWindowsPath(path).drive:
        if root is None:
            raise DataError(
                f"{where}: absolute path '{path}' in a trial list; give the data root so it can "
                "be checked, or write paths relative to the data root."
            )
        for base, full in (
            (os.path.abspath(root), os.path.normpath(path)),
            (os.path.realpath(root), os.path.realpath(path)),
        ):
            rel = os.path.relpath(full, base)
            if not rel.startswith("..") and not os.path.isabs(rel) and rel != ".":
                return PurePosixPath(Path(rel).as_posix()).as_posix()
        raise DataError(f"{where}: path '{path}' lies outside the data root '{root}'.")
    rel = PurePosixPath(posix).as_posix()
    return rel[2:] if rel.startswith("./") else rel


def _plain(path: str) -> bool:
    """Whether `path` is already what `safe_path` makes of it: relative, POSIX, with no empty,
    '.' or '..' part and no drive (checked on the string, without building path objects)."""
    wrapped = f"/{path}/"  # every part between two slashes
    return not (
        path[0] == "/"
        or path[-1] == "/"
        or "\\" in path
        or ":" in path
        or "//" in path
        or "/./" in wrapped
        or "/../" in wrapped
    )


def checked_trials(trials: Any, who: str) -> list[Trial]:
    """What a plugin's trial format or protocol returned, checked before anything is embedded:
    a non-empty list of Trial whose enroll is a tuple of paths, test a path and label 1, 0 or
    None. A str enroll would be read letter by letter, a label 'genuine' or 2 fail after the
    embedding, naming neither the format nor its plugin."""
    if not isinstance(trials, (list, tuple)):
        raise PluginError(f"{who} returned {type(trials).__name__} {trials!r:.60}; {_TRIAL_HELP}")
    if not trials:
        raise DataError(f"{who} gave no trials.")
    out = []
    for i, t in enumerate(trials, 1):
        problem = _trial_problem(t)
        if problem:
            raise PluginError(f"{who}: trial {i} {problem}; {_TRIAL_HELP}")
        label = None if t.label is None else int(t.label)  # numpy integers too
        same = isinstance(t.enroll, tuple) and type(t.label) in (int, type(None))
        out.append(t if same else Trial(tuple(t.enroll), t.test, label))
    return out


def relative_trials(trials: list[Trial], root: Path | None, who: str) -> list[Trial]:
    """Every path through `safe_path`, as the built-in formats do while reading: a plugin's
    format or protocol gets the same refusals (`..`, outside the root) and the same
    normalisation (an absolute path inside the root made relative)."""
    out = []
    for i, t in enumerate(trials, 1):
        where = f"{who}, trial {i}"
        enroll = tuple(safe_path(p, root, where) for p in t.enroll)
        test = safe_path(t.test, root, where)
        out.append(t if (enroll, test) == (t.enroll, t.test) else Trial(enroll, test, t.label))
    return out


_TRIAL_HELP = ("return a list of metaemb.core.Trial(enroll=(path, …), test=path, label=1|0|None) "
               "with paths relative to the data root")  # fmt: skip


def _trial_problem(t: Any) -> str:
    if not isinstance(t, Trial):
        return f"is {type(t).__name__} {t!r:.60}, not a Trial"
    if isinstance(t.enroll, str) or not isinstance(t.enroll, (tuple, list)) or not t.enroll:
        return (
            f"has enroll={t.enroll!r:.60}; enroll is a non-empty tuple of paths, e.g. ('a/1.wav',)"
        )
    if not all(isinstance(p, str) and p for p in (*t.enroll, t.test)):
        return f"has a path that is not a non-empty str ({t.enroll!r:.40}, {t.test!r:.40})"
    integral = isinstance(t.label, numbers.Integral)  # int, bool, numpy integers
    if t.label is not None and (not integral or int(t.label) not in (0, 1)):
        return f"has label={t.label!r:.30}; a label is 1 (target), 0 (non-target) or None"
    return ""


_UNLISTABLE = re.compile(r"[\s,]")  # str.split() separators (Unicode whitespace) and ','


def listable(path: str, leads_line: bool = True) -> bool:
    """Whether `path` fits a whitespace-separated trial list: non-empty, no blank, no ',', and,
    where it starts a line (`leads_line`), not starting with '#' (such a line reads as a
    comment)."""
    if leads_line and path.startswith("#"):
        return False
    return bool(path) and _UNLISTABLE.search(path) is None


def check_listable(paths: Sequence[str], where: str, leads_line: bool = True) -> None:
    """Refuse, before any trial is made, sample paths whitespace-separated formats cannot hold;
    `leads_line` is False for formats whose lines start with a label, where '#' is harmless."""
    bad = [p for p in paths if not listable(p, leads_line)]
    if bad:
        shown = first_few(bad, 3)
        hash_note = "or start with '#' " if leads_line else ""
        comment = ", and read a line starting with '#' as a comment" if leads_line else ""
        raise DataError(
            f"{len(bad)} sample path(s) of {where} contain spaces or ',' {hash_note}"
            f"({shown}); whitespace-separated trial lists separate columns by whitespace and "
            f"enrollment files by ','{comment}, so they "
            "cannot hold these paths. Rename those files or folders (e.g. spaces to '_'). "
            "Training, embedding, enrollment and `evaluate` on a run's own validation trials "
            "accept such names."
        )


def check_scorable(trials: Sequence[Trial], where: str = "the trials") -> None:
    """Refuse, before anything is embedded, trials whose paths scores.txt cannot hold, naming
    how many and what to do."""
    bad = sorted({p for t in trials for p in (*t.enroll, t.test) if not p or
                  any(c in p for c in "\t\n\r")})  # fmt: skip
    if bad:
        raise DataError(
            f"{len(bad)} sample path(s) of {where} hold a tab or a line break ({first_few(bad, 3)}"
            "); scores.txt is tab-separated, one trial per line, so it cannot hold them. Rename "
            "those files or folders. Training and embedding accept such names."
        )


def check_both_classes(labels: Any, where: str) -> None:
    """Refuse, before anything is embedded, labelled trials of one class only: EER, minDCF and
    Cllr compare target with non-target scores."""
    targets = int((labels == 1).sum())
    others = len(labels) - targets
    if not targets or not others:
        raise DataError(
            f"{where}: {targets} target and {others} non-target trial(s); a verification report "
            "compares the two, so it needs both. Add the missing kind (`metaemb trials make` "
            "draws both), or score the list unlabelled."
        )


def check_folds_fit(trials: Sequence[Trial], folds: int, where: str) -> None:
    """`--folds K` on a list: it must be labelled and split into K equal contiguous blocks,
    said in terms of the option (the list itself declares nothing)."""
    if any(t.label is None for t in trials):
        raise DataError(f"--folds {folds}: k-fold accuracy needs a labelled list; {where} has "
                        "trials without a target/non-target label.")  # fmt: skip
    if len(trials) % folds:
        near = [k for k in range(2, min(len(trials), 4 * folds) + 1) if len(trials) % k == 0]
        near = sorted(near, key=lambda k: abs(k - folds))[:4]
        raise DataError(
            f"--folds {folds}: the {len(trials)} trials of {where} do not split into {folds} "
            f"equal contiguous folds" + (f" (they do into {', '.join(map(str, sorted(near)))})."
                                         if near else ".")
        )  # fmt: skip


def check_folds_hold_both(trials: Sequence[Trial], folds: int, where: str) -> None:
    """k-fold accuracy fits a threshold on k − 1 folds and tests it on the last: a fold of one
    class (a list of all targets, then all non-targets) gives a meaningless accuracy. Refused,
    naming the fold and its lines, before anything is embedded."""
    if len(trials) % folds:
        return  # the equal-folds check names this
    size = len(trials) // folds
    for k in range(folds):
        labels = {t.label for t in trials[k * size : (k + 1) * size]}
        if not {0, 1} <= labels:
            raise DataError(
                f"{where}: fold {k + 1} of {folds} (trials {k * size + 1}–{(k + 1) * size}) holds "
                f"{'only targets' if 1 in labels else 'no target'}; k-fold accuracy needs target "
                "and non-target trials in every fold (a list with all targets first is not in "
                "folds: interleave them, or leave out --folds)."
            )


def duplicates_warning(message: str) -> bool:
    """Whether a warning's text is one of `warn_duplicates`'."""
    return "duplicated trial(s)" in message or "test a file against itself" in message


def warn_duplicates(trials: Sequence[Trial], where: str) -> None:
    """Warn about trials listed twice (they count twice in every metric), pairs listed with
    both labels (one of the two is wrong) and trials of a file against itself."""
    seen: dict[tuple[frozenset[str], str], int | None] = {}
    dups = contradictions = 0
    first: str | None = None
    for t in trials:
        key = (frozenset(t.enroll), t.test)
        if key in seen:
            if seen[key] == t.label:
                dups += 1
            else:
                contradictions += 1
            first = first or f"{','.join(t.enroll)} {t.test}"
        else:
            seen[key] = t.label
    if dups or contradictions:
        warnings.warn(
            f"{where}: {dups} duplicated trial(s) and {contradictions} trial(s) repeated with the "
            f"opposite label (first: '{first}'); duplicates count twice in every metric and a "
            "contradicted pair is wrong once. Clean the list.",
            stacklevel=2,
        )
    selves = [t for t in trials if t.test in t.enroll]
    if selves:
        warnings.warn(
            f"{where}: {len(selves)} trial(s) test a file against itself (first: "
            f"'{','.join(selves[0].enroll)} {selves[0].test}'); such a trial is a perfect match "
            "whatever the model, and flatters every target metric. Clean the list.",
            stacklevel=2,
        )


def mislabelled(folder: Any, trials: list[Any]) -> list[tuple[Any, list[str]]]:
    """Labelled trials whose label contradicts the folder's identities, each with the identities
    of its files: a target trial between two identities, or a non-target trial within one (only
    trials whose files all have a known identity). An inverted list scores as a chance-level
    model, silently. Nothing when every trial lies across the same two folders (they are not
    identities: CN-Celeb's enroll/ and test/)."""
    identity = {s.path: s.identity for s in folder.samples}
    wrong, within, spans = [], 0, set()
    for t in trials:
        names = [identity.get(p) for p in (*t.enroll, t.test)]
        if t.label not in (0, 1) or None in names:
            continue
        same = len(set(names)) == 1
        if same != (t.label == 1):
            wrong.append((t, list(dict.fromkeys(names))))
        within += same
        spans.add(frozenset(names))
    # Every trial across the same two folders, none within one: the folders are not the list's
    # identities (CN-Celeb's enroll/ and test/ hold every speaker) and say nothing of its labels.
    return [] if not within and len(spans) == 1 else wrong


def label_warning(wrong: list[tuple[Any, list[str]]], total: int) -> str | None:
    """The warning for trials labelled against the folder's identities, or None."""
    if not wrong:
        return None
    shown = first_few(
        (
            f"{'target' if t.label == 1 else 'non-target'} {'+'.join(t.enroll)} {t.test} "
            f"(identit{'ies' if len(names) > 1 else 'y'} {' ≠ '.join(names)})"
            for t, names in wrong
        ),
        3,
    )
    return (
        f"{len(wrong)} of the {total} trials are labelled against the identities the data folder "
        f"gives their files (a target trial across two identities, or a non-target one within "
        f"one: {shown}). Check the list's label column (1 or target = same identity); if the "
        "folder's identities are not the list's, ignore this."
    )
