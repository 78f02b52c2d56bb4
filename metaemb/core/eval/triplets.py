"""Triplet lists (a match measure of some face benchmarks): `anchor positive negative` per line, paths
relative to the data root; the positive shares the anchor's identity, the negative does not.

`make_triplets` draws a seeded list of distinct triplets over a sample folder; `triplet_coverage`
says how much of the dataset a list touches. The measure on such a list, the share of triplets
whose anchor scores higher with its positive than with its negative, is
`metrics.triplet_match_accuracy`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaemb.core.errors import DataError
from metaemb.core.eval.trial_checks import safe_path
from metaemb.core.eval.trial_generation import coverage, first_component
from metaemb.core.eval.trials import (
    KALDI_LABELS,
    looks_like_triplet,
    read_list_text,
    reads_as_label,
)
from metaemb.core.plugin.interfaces import Trial

HEADER = "# triplets: anchor positive negative"


@dataclass(frozen=True)
class Triplet:
    anchor: str
    positive: str
    negative: str


def make_triplets(folder: Any, n: int, seed: int = 0) -> list[Triplet]:
    """`n` distinct seeded triplets (all possible ones when fewer exist), in draw order."""
    if n < 1:
        raise DataError(f"--triplets must be ≥ 1, got {n}.")
    ids = [s.identity for s in folder.samples]
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(ids):
        groups.setdefault(name, []).append(i)
    where = f"data folder '{getattr(folder, 'root', '?')}'"
    if len(groups) < 2:
        raise DataError(f"{where} has {len(groups)} identities; triplets need at least two.")
    anchors = [i for i, name in enumerate(ids) if len(groups[name]) > 1]
    if not anchors:
        raise DataError(f"{where}: no identity has two samples, so no anchor has a positive.")
    total = len(ids)
    possible = sum((len(groups[ids[a]]) - 1) * (total - len(groups[ids[a]])) for a in anchors)
    n = min(n, possible)
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, int, int]] = set()
    out: list[Triplet] = []
    paths = [s.path for s in folder.samples]
    while len(out) < n:
        a = anchors[int(rng.integers(len(anchors)))]
        mates = groups[ids[a]]
        p = mates[int(rng.integers(len(mates)))]
        neg = int(rng.integers(total))
        if p == a or ids[neg] == ids[a] or (a, p, neg) in seen:
            continue
        seen.add((a, p, neg))
        out.append(Triplet(paths[a], paths[p], paths[neg]))
    return out


def check_triplet_paths(paths: Sequence[str], where: str) -> None:
    """Refuse, before any triplet is drawn, sample paths a triplet list cannot hold: blanks
    separate its columns, and a line starting with '#' is a comment (any path may be drawn as
    an anchor), so one such file failed or not by seed, named one at a time."""
    from metaemb.core.errors import first_few

    bad = [p for p in paths if not p or p.startswith("#") or any(c.isspace() for c in p)]
    if bad:
        raise DataError(
            f"{len(bad)} sample path(s) of {where} contain spaces or start with '#' "
            f"({first_few(bad, 3)}); a triplet list separates its columns by whitespace and "
            "reads a line starting with '#' as a comment, so it cannot hold them. Rename those "
            "files or folders (e.g. spaces to '_')."
        )


def write_triplets(path: Path, triplets: Sequence[Triplet]) -> None:
    from metaemb.core.files import atomic_write_text

    for t in triplets:
        for p in (t.anchor, t.positive, t.negative):
            if not p or any(c.isspace() for c in p):
                raise DataError(f"cannot write path {p!r} in a triplet list (empty or blank).")
        if t.anchor.startswith("#"):  # the line would read as a comment and be skipped
            raise DataError(
                f"cannot write anchor {t.anchor!r} in a triplet list: a line starting with '#' "
                "reads as a comment. Rename the file or folder."
            )
    lines = [HEADER, *(f"{t.anchor} {t.positive} {t.negative}" for t in triplets)]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise DataError(f"triplet list '{path}' does not exist.")
    text = read_list_text(path, "triplet list")
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        f = line.split()
        if f and not f[0].startswith("#"):
            rows.append((i, f))
    return rows


def is_triplet_list(path: str | Path) -> bool:
    """True for `anchor positive negative` lists (3 paths; not a labelled pair list)."""
    path = Path(path)
    if not path.is_file():
        return False
    text = path.read_text(errors="replace")
    if text.startswith(HEADER):
        return True
    rows = _rows(path)
    if not rows:
        return False
    return looks_like_triplet(rows[0][1]) and not reads_as_label(rows[0][1])


def looks_like_pair_list(path: str | Path) -> bool:
    """True when the first row is a labelled pair ('1 a b' or 'a b target'), not a triplet."""
    path = Path(path)
    if not path.is_file() or path.read_text(errors="replace").startswith(HEADER):
        return False
    rows = _rows(path)
    f = rows[0][1] if rows else []
    return len(f) == 3 and (f[0] in ("0", "1") or f[2] in KALDI_LABELS)


def read_triplets(
    path: str | Path, root: Path | None = None, identity: Callable[[str], str] = first_component
) -> list[Triplet]:
    """The triplets of a list file; `identity` (a sample folder's, when known) judges which
    ones contradict their roles."""
    path = Path(path)
    out = []
    for lineno, f in _rows(path):
        where = f"{path}:{lineno}"
        if len(f) != 3:
            raise DataError(f"{where}: expected 'anchor positive negative', got {' '.join(f)!r}.")
        out.append(Triplet(*(safe_path(p, root, where) for p in f)))
    if not out:
        raise DataError(f"triplet list '{path}' holds no triplets.")
    warn_triplet_problems(out, str(path), identity)
    return out


def warn_triplet_problems(
    triplets: Sequence[Triplet], where: str, identity=first_component
) -> None:
    """Warn, as for pair lists, about triplets listed twice (they count twice), triplets that
    repeat a file (a sample against itself) and triplets whose positive is of another identity
    or whose negative is of the anchor's (by the first path component, the identity folder)."""
    problems = []
    repeated = len(triplets) - len(set(triplets))
    if repeated:
        problems.append(f"{repeated} duplicated triplet(s), which count twice")
    same_file = [t for t in triplets if len({t.anchor, t.positive, t.negative}) < 3]
    if same_file:
        problems.append(f"{len(same_file)} triplet(s) naming one file twice (e.g. "
                        f"{' '.join(astuple(same_file[0]))})")  # fmt: skip
    wrong = [t for t in triplets if identity(t.anchor) != identity(t.positive)
             or identity(t.anchor) == identity(t.negative)]  # fmt: skip
    if wrong:
        problems.append(f"{len(wrong)} triplet(s) whose positive is not of the anchor's identity "
                        f"folder or whose negative is (e.g. {' '.join(astuple(wrong[0]))})")  # fmt: skip
    if problems:
        warnings.warn(
            f"{where}: {'; '.join(problems)}. The match accuracy counts them as listed; fix the "
            "list (metaemb trials make --triplets N writes a clean one).",
            stacklevel=2,
        )


def triplet_coverage(triplets: Sequence[Triplet], identity=first_component) -> dict[str, Any]:
    """Triplets, distinct identities and samples, identities used as anchors, samples/identity."""
    pairs = [Trial((t.anchor,), t.positive, 1) for t in triplets]
    pairs += [Trial((t.anchor,), t.negative, 0) for t in triplets]
    cov = coverage(pairs, identity)
    bad = [t for t in triplets if identity(t.anchor) != identity(t.positive)]
    bad += [t for t in triplets if identity(t.anchor) == identity(t.negative)]
    return {
        "triplets": len(triplets),
        "identities": cov["identities"],
        "anchor_identities": len({identity(t.anchor) for t in triplets}),
        "samples": cov["samples"],
        "samples_per_identity": cov["samples_per_identity"],
        "inconsistent": len(bad),
    }
