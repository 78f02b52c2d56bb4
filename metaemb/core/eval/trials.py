"""Trial lists: the registry of text formats, seeded generation, scores files and coverage.

A trial-list format (registry "trial_formats", hook `register_trial_formats`) is a `TrialFormat`
registered by the plugin that owns it (dataset formats live in the modality plugins); `read_trials`, `write_trials` and `detect_format` dispatch through that registry, so a
plugin's format works wherever a built-in one does. Paths in a list are relative to the data
root (several enrollment samples joined by ','); a path may not escape the root ('..', or an
absolute path outside it): formats check each with `safe_path`.

A protocol (registry "protocols") is a callable `(root: Path, path: Path | None) -> list[Trial]`:
it reads (or generates) the trials of a dataset rooted at `root`, from `path` when given, else
from the protocol's default file; trial paths are relative to `root` and in file order. It may
return a `TrialList` whose `folds` says the trials form that many contiguous folds (k-fold
accuracy is then reported).
"""

from __future__ import annotations

import abc
import math
import os
import re
import statistics
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, ClassVar

import numpy as np

from metaemb.core.errors import DataError
from metaemb.core.plugin.interfaces import Trial

#: label words of lists that spell the label out (`enroll test target|nontarget`)
LABEL_WORDS = {"target": 1, "nontarget": 0}
KALDI_LABELS = LABEL_WORDS  # the name core/eval/triplets.py imports


class TrialList(list):
    """Trials in file order; `folds` > 1 when they form that many contiguous, equal folds."""

    def __init__(self, trials: Iterable[Trial] = (), folds: int = 0) -> None:
        super().__init__(trials)
        self.folds = int(folds)


def folds_of(trials: Sequence[Trial]) -> int:
    """The folds a protocol or format declared for `trials` (0: not a k-fold list)."""
    return trials.folds if isinstance(trials, TrialList) and trials.folds > 1 else 0


class TrialFormat(abc.ABC):
    """A trial-list text format. `detect` looks at the first trial line (its whitespace-split
    fields) of a file; formats are tried in `detect_order` (lower first)."""

    detect_order: ClassVar[int] = 100
    #: how the format looks, for error messages, e.g. "'label enroll test' (NAME)"
    example: ClassVar[str] = ""

    @abc.abstractmethod
    def detect(self, fields: list[str]) -> bool:
        """Whether a file whose first trial line splits into `fields` is in this format."""

    @abc.abstractmethod
    def read(self, path: Path, root: Path | None) -> list[Trial]:
        """The trials of `path` in file order (a TrialList when they form folds); DataError with
        `path:line` on any malformed line; every path checked with `safe_path`."""

    def write(self, path: Path, trials: Sequence[Trial], **options: Any) -> None:
        """Write `trials` atomically (see `write_lines`)."""
        raise DataError(f"trial-list format '{type(self).__name__}' cannot be written.")


def formats() -> dict[str, TrialFormat]:
    """Every registered trial-list format by name, in detection order."""
    from metaemb.core.plugin.manager import registry

    made = {e.name: e.factory() for e in registry("trial_formats").entries()}
    return dict(sorted(made.items(), key=lambda kv: (kv[1].detect_order, kv[0])))


def get_format(name: str) -> TrialFormat:
    from metaemb.core.plugin.manager import registry

    return registry("trial_formats").get(name)()


# ---------------------------------------------------------------------------------------------
# paths


def safe_path(path: str, root: Path | None, where: str) -> str:
    """`path` as a POSIX path relative to the data root; refuses '..' and paths outside root."""
    if not path:
        raise DataError(f"{where}: empty path.")
    posix = path.replace("\\", "/")
    if ".." in PurePosixPath(posix).parts:
        raise DataError(f"{where}: path '{path}' escapes the data root with '..'.")
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


def split_enroll(field: str, root: Path | None, where: str) -> tuple[str, ...]:
    """An enrollment field 'a,b,c' → checked relative paths."""
    return tuple(safe_path(p, root, where) for p in field.split(","))


# ---------------------------------------------------------------------------------------------
# reading


def read_lines(path: Path, tabs: bool = False) -> list[tuple[int, list[str]]]:
    """Non-empty, non-comment lines as (line number, fields); with `tabs`, a line holding a tab
    is split at tabs only (so fields may contain spaces)."""
    if not path.is_file():
        raise DataError(f"trial list '{path}' does not exist.")
    try:
        # File names that are not valid UTF-8 come back as the same str os.listdir gives.
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read trial list '{path}': {exc}") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        fields = line.strip("\r\n").split("\t") if tabs and "\t" in line else line.split()
        if fields and not fields[0].startswith("#"):
            out.append((i, fields))
    if not out:
        raise DataError(f"trial list '{path}' holds no trials.")
    return out


def detect_format(path: str | Path) -> str:
    """The registered format whose `detect` accepts the first trial line of the file."""
    path = Path(path)
    lineno, f = read_lines(path)[0]
    known = formats()
    for name, fmt in known.items():
        if fmt.detect(f):
            return name
    expected = "; ".join(fmt.example or name for name, fmt in known.items()) or "(none registered)"
    raise DataError(
        f"{path}:{lineno}: cannot tell the trial-list format from {' '.join(f)!r}; expected one "
        f"of: {expected}. Or pass the format explicitly."
    )


def read_trials(
    path: str | Path, root: str | Path | None = None, format: str = "auto"
) -> list[Trial]:
    """Read a trial list ('auto' detects the format); trials come back in file order (a
    TrialList with `folds` when the format declares folds)."""
    path = Path(path)
    name = detect_format(path) if format == "auto" else format
    fmt = _format_or_error(name)
    trials = fmt.read(path, Path(root) if root is not None else None)
    warn_duplicates(trials, str(path))
    return trials


def _format_or_error(name: str) -> TrialFormat:
    from metaemb.core.errors import UnknownComponentError

    try:
        return get_format(name)
    except UnknownComponentError as exc:
        raise DataError(f"unknown trial-list format '{name}': {exc}") from None


# ---------------------------------------------------------------------------------------------
# writing (atomically)


def write_lines(path: str | Path, lines: Sequence[str]) -> None:
    """Write text lines atomically (a reader never sees half a list)."""
    from metaemb.core.runs import atomic_write_text

    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))


def join_enroll(paths: Sequence[str]) -> str:
    """Paths as one field of a whitespace-separated list ('a,b'); refuses what it cannot hold."""
    for p in paths:
        if not listable(p):
            raise DataError(
                f"cannot write path {p!r} in a whitespace-separated trial list: such lists "
                "separate columns by whitespace and enrollment files by ',', so a path may not "
                "be empty or contain spaces or ','. Rename the file or folder."
            )
    return ",".join(paths)


_UNLISTABLE = re.compile(r"[\s,]")  # str.split() separators (Unicode whitespace) and ','


def listable(path: str) -> bool:
    """Whether `path` fits a whitespace-separated trial list (non-empty, no blank, no ',')."""
    return bool(path) and _UNLISTABLE.search(path) is None


def check_listable(paths: Sequence[str], where: str) -> None:
    """Refuse, before any trial is made, sample paths whitespace-separated formats cannot hold."""
    bad = [p for p in paths if not listable(p)]
    if bad:
        shown = ", ".join(repr(p) for p in bad[:3]) + (" …" if len(bad) > 3 else "")
        raise DataError(
            f"{len(bad)} sample path(s) of {where} contain spaces or ',' ({shown}); "
            "whitespace-separated trial lists separate columns by whitespace and enrollment "
            "files by ',', so they cannot hold these paths. Rename those files or folders (e.g. spaces to '_'). "
            "Training, embedding, enrollment and `evaluate` on a run's own validation trials "
            "accept such names."
        )


def _score_field(paths: Sequence[str]) -> str:
    for p in paths:
        if not p or any(c in p for c in "\t\n\r"):
            raise DataError(f"cannot write path {p!r} in scores.txt (empty, or a tab or newline).")
    return ",".join(paths)


def check_scorable(trials: Sequence[Trial]) -> None:
    """Refuse, before anything is embedded, trials whose paths scores.txt cannot hold."""
    for t in trials:
        _score_field([*t.enroll, t.test])


def warn_duplicates(trials: Sequence[Trial], where: str) -> None:
    """Warn about trials listed twice (they count twice in every metric) and pairs listed with
    both labels (one of the two is wrong)."""
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


def write_trials(path: str | Path, trials: Sequence[Trial], format: str, **options: Any) -> None:
    """Write `trials` in a registered format (options are the format's, e.g. a fold count)."""
    _format_or_error(format).write(Path(path), trials, **options)


def write_scores(path: str | Path, trials: Sequence[Trial], scores: Sequence[float]) -> None:
    """Four tab-separated columns `enroll test label score` (label target, nontarget or -),
    atomically; tabs, so file names with spaces round-trip."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(trials) != scores.size:
        raise DataError(f"{len(trials)} trials but {scores.size} scores.")
    label = {1: "target", 0: "nontarget", None: "-"}
    write_lines(
        path,
        [
            f"{_score_field(t.enroll)}\t{_score_field([t.test])}\t{label[t.label]}\t{s:.9g}"
            for t, s in zip(trials, scores.tolist(), strict=True)
        ],
    )


def read_scores(path: str | Path) -> tuple[list[Trial], np.ndarray]:
    """Read a file written by write_scores (tab-separated; older space-separated files too)."""
    path = Path(path)
    inverse = {"target": 1, "nontarget": 0, "-": None}
    trials, scores = [], []
    for lineno, f in read_lines(path, tabs=True):
        try:
            if len(f) != 4 or f[2] not in inverse:
                raise ValueError
            scores.append(float(f[3]))
        except ValueError:
            raise DataError(
                f"{path}:{lineno}: expected 'enroll test target|nontarget|- score', "
                f"got {' '.join(f)!r}."
            ) from None
        trials.append(Trial(tuple(f[0].split(",")), f[1], inverse[f[2]]))
    return trials, np.asarray(scores)


# ---------------------------------------------------------------------------------------------
# generation


def make_trials(
    folder: Any,
    n_target: int | None = None,
    n_nontarget: int | None = None,
    enroll_samples: int = 1,
    seed: int = 0,
) -> list[Trial]:
    """Seeded trials over `folder.samples` (Sample(path, identity, label)); same input, same list.

    Targets: with one enrollment sample, every unordered pair of samples of one identity; with
    k > 1, each sample of an identity that has more than k is tested against k other samples of
    its identity. `n_target` samples that many (all when None or when fewer exist). Non-targets:
    `n_nontarget` distinct (enrollment, test) pairs of different identities (default: as many as
    targets; all when fewer exist). Targets come first, each part in sample order.
    """
    k = int(enroll_samples)
    if k < 1:
        raise DataError(f"enroll_samples must be ≥ 1, got {k}.")
    rng = np.random.default_rng(seed)
    paths = [s.path for s in folder.samples]
    ids = [s.identity for s in folder.samples]
    groups: dict[str, list[int]] = {}
    for i, ident in enumerate(ids):
        groups.setdefault(ident, []).append(i)
    where = f"data folder '{getattr(folder, 'root', '?')}'"
    if len(groups) < 2:
        raise DataError(f"{where} has {len(groups)} identities; trials need at least two.")
    members = [g for g in groups.values() if len(g) > k]
    if not members:
        raise DataError(f"{where}: no identity has more than {k} samples, so no target trials.")
    targets = _targets(members, k, n_target, rng)
    n_non = len(targets) if n_nontarget is None else int(n_nontarget)
    nontargets = _nontargets(groups, ids, k, n_non, rng)
    return [Trial(tuple(paths[e] for e in enr), paths[t], 1) for enr, t in targets] + [
        Trial(tuple(paths[e] for e in enr), paths[t], 0) for enr, t in nontargets
    ]


def _targets(members, k, n_target, rng) -> list[tuple[tuple[int, ...], int]]:
    if k == 1:
        # pairs (i < j) per identity, indexed globally without enumerating them all
        sizes = np.array([len(g) for g in members], dtype=np.int64)
        counts = sizes * (sizes - 1) // 2
        total = int(counts.sum())
        chosen = (
            np.arange(total)
            if n_target is None or n_target >= total
            else np.sort(rng.choice(total, size=int(n_target), replace=False))
        )
        offsets = np.concatenate(([0], np.cumsum(counts)))
        owner = np.searchsorted(offsets, chosen, side="right") - 1
        out = []
        for g, r in zip(owner.tolist(), (chosen - offsets[owner]).tolist(), strict=True):
            a, b = _pair_of(r, len(members[g]))
            out.append(((members[g][a],), members[g][b]))
        return out
    cands = []
    for g in members:
        for pos, test in enumerate(g):
            others = g[:pos] + g[pos + 1 :]
            pick = np.sort(rng.choice(len(others), size=k, replace=False))
            cands.append((tuple(others[p] for p in pick.tolist()), test))
    if n_target is not None and n_target < len(cands):
        keep = np.sort(rng.choice(len(cands), size=int(n_target), replace=False))
        cands = [cands[i] for i in keep.tolist()]
    return cands


def _pair_of(r: int, n: int) -> tuple[int, int]:
    """The r-th pair (a < b) of range(n) in row-major order; row a starts at a(2n−1−a)/2."""
    m = 2 * n - 1
    a = (m - math.isqrt(m * m - 8 * r)) // 2
    while a > 0 and a * (m - a) // 2 > r:
        a -= 1
    while (a + 1) * (m - a - 1) // 2 <= r:
        a += 1
    return a, a + 1 + r - a * (m - a) // 2


def _nontargets(groups, ids, k, wanted, rng) -> list[tuple[tuple[int, ...], int]]:
    enrollable = [g for g in groups.values() if len(g) >= k]
    n = len(ids)
    if k == 1:
        possible = (n * n - sum(len(g) ** 2 for g in groups.values())) // 2
    else:  # bounded by #identities able to enroll × #test samples of other identities
        possible = sum(math.comb(len(g), k) * (n - len(g)) for g in enrollable)
    wanted = min(wanted, possible)
    if k == 1 and 2 * wanted >= possible:  # dense: enumerate every pair, then sample
        lab = np.unique(np.asarray(ids), return_inverse=True)[1]
        a, b = np.triu_indices(n, 1)
        cross = lab[a] != lab[b]
        a, b = a[cross], b[cross]
        keep = np.sort(rng.choice(a.size, size=wanted, replace=False))
        return [((int(x),), int(y)) for x, y in zip(a[keep], b[keep], strict=True)]
    owner = ids
    seen: set[tuple[tuple[int, ...], int]] = set()
    out: list[tuple[tuple[int, ...], int]] = []
    while len(out) < wanted:
        need = wanted - len(out)
        for _ in range(2 * need + 16):
            g = enrollable[int(rng.integers(len(enrollable)))]
            enr = tuple(sorted(g[i] for i in rng.choice(len(g), size=k, replace=False).tolist()))
            test = int(rng.integers(n))
            if owner[test] == owner[enr[0]]:
                continue
            key = (enr, test) if k > 1 else (tuple(sorted((enr[0], test))), -1)
            if key in seen:
                continue
            seen.add(key)
            out.append((enr, test))
            if len(out) == wanted:
                break
    return sorted(out, key=lambda p: (p[0], p[1]))


# ---------------------------------------------------------------------------------------------
# coverage


def first_component(path: str) -> str:
    return path.split("/", 1)[0]


def coverage(
    trials: Sequence[Trial], identity: Callable[[str], str] = first_component
) -> dict[str, Any]:
    """How much of a dataset a trial list touches: trial counts, distinct identities and
    samples, and the distribution of distinct samples per identity."""
    samples = {p for t in trials for p in (*t.enroll, t.test)}
    per_id: dict[str, int] = {}
    for p in samples:
        per_id[identity(p)] = per_id.get(identity(p), 0) + 1
    counts = sorted(per_id.values())
    target_ids = {identity(p) for t in trials if t.label == 1 for p in (*t.enroll, t.test)}
    return {
        "trials": len(trials),
        "target": sum(1 for t in trials if t.label == 1),
        "nontarget": sum(1 for t in trials if t.label == 0),
        "unlabelled": sum(1 for t in trials if t.label is None),
        "identities": len(per_id),
        "identities_with_targets": len(target_ids),
        "samples": len(samples),
        "enroll_samples_max": max((len(t.enroll) for t in trials), default=0),
        "samples_per_identity": {
            "min": counts[0] if counts else 0,
            "median": float(statistics.median(counts)) if counts else 0.0,
            "mean": float(statistics.fmean(counts)) if counts else 0.0,
            "max": counts[-1] if counts else 0,
        },
    }


# ---------------------------------------------------------------------------------------------
# protocols (registered by the plugins that own them)


def default_file(root: Path, path: Path | None, names: Sequence[str], what: str) -> Path:
    if path is not None:
        return Path(path)
    for base in (root, root.parent):
        for name in names:
            if (base / name).is_file():
                return base / name
    raise DataError(
        f"no {what} trial list given and none of {', '.join(names)} found in '{root}' or its "
        "parent; pass --trials FILE."
    )
