"""The LFW View 2 `pairs.txt` trial-list format (registered as trial format "lfw").

Header `folds<TAB>n` (or `n`: one fold, as in View 1), then per fold n matched lines
`name n1 n2` and n mismatched lines `name1 n1 name2 n2`; image paths are `name/name_%04d.jpg`.
The trials come back in file order as a TrialList whose `folds` is the header's, so fold f is
the f-th contiguous block of 2n trials and `metaemb evaluate` reports k-fold accuracy over them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaemb.core.errors import DataError
from metaemb.core.eval.trial_checks import safe_path
from metaemb.core.eval.trials import TrialFormat, TrialList, read_lines, write_lines
from metaemb.core.plugin.interfaces import Trial


def lfw_path(name: str, number: int, ext: str = ".jpg") -> str:
    return f"{name}/{name}_{int(number):04d}{ext}"


def _number(text: str) -> bool:
    """A plain decimal number (str.isdigit alone also accepts '²' and other digits int() refuses)."""
    return text.isascii() and text.isdigit()


def _header(path: Path, lines: list[tuple[int, list[str]]]) -> tuple[int, int]:
    head_no, head = lines[0]
    if not (1 <= len(head) <= 2 and all(_number(x) and int(x) > 0 for x in head)):
        raise DataError(
            f"{path}:{head_no}: expected the header 'folds<TAB>pairs' (e.g. '10\\t300') or "
            f"'pairs', got {' '.join(head)!r}."
        )
    return (1, int(head[0])) if len(head) == 1 else (int(head[0]), int(head[1]))


def lfw_folds(path: str | Path) -> int:
    """The number of folds a pairs.txt declares (1 for a View 1 file with a bare `n` header)."""
    path = Path(path)
    return _header(path, read_lines(path))[0]


def read_lfw_pairs(path: str | Path, root: Path | None = None, ext: str = ".jpg") -> TrialList:
    """LFW pairs.txt → trials in file order, with `folds` from its header."""
    path = Path(path)
    lines = read_lines(path)
    folds, n = _header(path, lines)
    body = lines[1:]
    if len(body) != 2 * folds * n:
        raise DataError(
            f"{path}: the header says {folds} fold(s) of {n} matched and {n} mismatched pairs "
            f"({2 * folds * n} lines) but {len(body)} pair lines follow."
        )
    trials = []
    for k, (lineno, f) in enumerate(body):
        where = f"{path}:{lineno}"
        matched = k % (2 * n) < n
        if matched:
            numbers = (f[1], f[2]) if len(f) == 3 else None
        else:
            numbers = (f[1], f[3]) if len(f) == 4 else None
        ok = numbers is not None and all(_number(x) for x in numbers)
        if matched and ok:
            a, b = lfw_path(f[0], int(f[1]), ext), lfw_path(f[0], int(f[2]), ext)
        elif ok:
            a, b = lfw_path(f[0], int(f[1]), ext), lfw_path(f[2], int(f[3]), ext)
        else:
            kind = "matched 'name n1 n2'" if matched else "mismatched 'name1 n1 name2 n2'"
            raise DataError(f"{where}: expected a {kind} pair, got {' '.join(f)!r}.")
        trials.append(Trial((safe_path(a, root, where),), safe_path(b, root, where), int(matched)))
    return TrialList(trials, folds=folds)


_NAME = re.compile(r"^([^/]+)/\1_(\d+)\.[A-Za-z]+$")


def lfw_lines(trials: Sequence[Trial], folds: int = 10) -> list[str]:
    """pairs.txt lines; trials must be `folds` blocks of n matched then n mismatched pairs."""
    if folds < 1 or not trials or len(trials) % (2 * folds):
        raise DataError(f"{len(trials)} trials cannot form {folds} LFW folds of equal size.")
    n = len(trials) // (2 * folds)
    lines = [f"{folds}\t{n}"]
    for k, t in enumerate(trials):
        parts = [_NAME.match(p) for p in (*t.enroll, t.test)]
        matched = k % (2 * n) < n
        if len(t.enroll) != 1 or not all(parts) or t.label != int(matched):
            raise DataError(
                f"trial {k + 1} ({', '.join(t.enroll)} vs {t.test}) does not fit LFW pairs.txt: "
                "each fold needs n matched then n mismatched single-image trials of files named "
                "as LFW's, <name>/<name>_NNNN.jpg."
            )
        (na, ia), (nb, ib) = (m.groups() for m in parts)  # type: ignore[union-attr]
        for path, name, number in ((t.enroll[0], na, ia), (t.test, nb, ib)):
            if lfw_path(name, int(number)) != path:  # pairs.txt keeps a name and a number only
                raise DataError(
                    f"LFW trial {k + 1}: '{path}' would be read back as "
                    f"'{lfw_path(name, int(number))}': pairs.txt names an image by its person "
                    "and number only, so its files must be named <name>/<name>_NNNN.jpg (four "
                    "digits, .jpg). Rename the files, or write another format (--format voxceleb)."
                )
        if matched and na != nb:
            raise DataError(f"matched LFW trial {k + 1} compares '{na}' with '{nb}'.")
        if any(c.isspace() for c in na + nb):
            raise DataError(f"LFW trial {k + 1}: the names '{na}', '{nb}' may not hold blanks.")
        lines.append(
            f"{na}\t{int(ia)}\t{int(ib)}" if matched else f"{na}\t{int(ia)}\t{nb}\t{int(ib)}"
        )
    return lines


class LFWPairs(TrialFormat):
    """LFW View 2 pairs.txt: a `folds n` header, then n matched and n mismatched pairs per fold."""

    detect_order = 10  # its header (one or two numbers) is unambiguous: try it first
    example = "an LFW pairs.txt header 'folds<TAB>n' (lfw)"

    def detect(self, fields: list[str]) -> bool:
        return 1 <= len(fields) <= 2 and all(_number(x) for x in fields)

    def near_miss(self, fields: list[str]) -> str:
        matched = len(fields) == 3 and _number(fields[1]) and _number(fields[2])
        mismatched = len(fields) == 4 and _number(fields[1]) and _number(fields[3])
        if (matched or mismatched) and not _number(fields[0]):
            return (" It reads as an LFW pairs line ('name n1 n2' or 'name1 n1 name2 n2') of a "
                    "list without its header: add the first line 'folds<TAB>n' (10<TAB>300 for "
                    "LFW View 2, 1<TAB>n for one fold of n pairs of each kind).")  # fmt: skip
        return ""

    def read(self, path: Path, root: Path | None) -> TrialList:
        return read_lfw_pairs(path, root)

    def write(self, path: Path, trials: Sequence[Trial], folds: int = 10, **options: Any) -> None:
        if options:
            raise DataError(f"the LFW format takes only the option 'folds', got {sorted(options)}.")
        if getattr(trials, "folds", 0) != folds:  # not laid out in folds yet (`trials make`)
            trials = in_folds(trials, folds)
        write_lines(path, lfw_lines(trials, folds))


def in_folds(trials: Sequence[Trial], folds: int = 10) -> TrialList:
    """Trials in any order → `folds` blocks of n matched then n mismatched, in their order, with
    n = min(matched, mismatched) // folds; the rest are left out, with a warning."""
    import warnings

    matched = [t for t in trials if t.label == 1]
    mismatched = [t for t in trials if t.label == 0]
    n = min(len(matched), len(mismatched)) // folds
    if n < 1:
        raise DataError(
            f"LFW pairs.txt needs at least {folds} matched and {folds} mismatched trials "
            f"({folds} folds); got {len(matched)} and {len(mismatched)}."
        )
    out: list[Trial] = []
    for f in range(folds):
        out += matched[f * n : (f + 1) * n] + mismatched[f * n : (f + 1) * n]
    if len(out) < len(trials):
        warnings.warn(
            f"LFW folds hold equal numbers of matched and mismatched pairs: {folds} folds of "
            f"{n} + {n} are written, {len(trials) - len(out)} of the {len(trials)} trials left "
            "out (give --targets and --nontargets as equal multiples of 10).",
            stacklevel=3,
        )
    return TrialList(out, folds=folds)
