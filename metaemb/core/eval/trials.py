"""Trial lists: read and write the field's text formats, generate seeded lists, report coverage.

Formats (paths relative to the data root; several enrollment samples are joined by ','):
  voxceleb  `label enroll test`, label 1 = target, 0 = non-target (2 columns: unlabelled)
  kaldi     `enroll test target|nontarget`
  lfw       LFW View 2 pairs.txt: header `folds<TAB>n` (or `n`), then per fold n matched lines
            `name n1 n2` and n mismatched lines `name1 n1 name2 n2`; path `name/name_%04d.jpg`.
A trial path may not escape the data root ('..', or an absolute path outside it).

A protocol (registry "protocols") is a callable `(root: Path, path: Path | None) -> list[Trial]`:
it reads (or generates) the trials of a dataset rooted at `root`, from `path` when given, else
from the protocol's default file; trial paths are relative to `root` and in file order.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from metaemb.core.errors import DataError
from metaemb.core.plugin.interfaces import Sample, Trial

FORMATS = ("voxceleb", "kaldi", "lfw")
KALDI_LABELS = {"target": 1, "nontarget": 0}


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


def _enroll(field: str, root: Path | None, where: str) -> tuple[str, ...]:
    return tuple(safe_path(p, root, where) for p in field.split(","))


# ---------------------------------------------------------------------------------------------
# reading


def _lines(path: Path, tabs: bool = False) -> list[tuple[int, list[str]]]:
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
    """'voxceleb', 'kaldi' or 'lfw', from the first line of the file."""
    path = Path(path)
    lineno, f = _lines(path)[0]
    if 1 <= len(f) <= 2 and all(x.isdigit() for x in f):
        return "lfw"
    if len(f) == 3 and f[2] in KALDI_LABELS:
        return "kaldi"
    if (len(f) == 3 and f[0] in ("0", "1")) or len(f) == 2:
        return "voxceleb"
    raise DataError(
        f"{path}:{lineno}: cannot tell the trial-list format from {' '.join(f)!r}; expected "
        "'label enroll test' (voxceleb), 'enroll test target|nontarget' (kaldi) or an LFW "
        "pairs.txt header; or pass the format explicitly."
    )


def read_trials(
    path: str | Path, root: str | Path | None = None, format: str = "auto"
) -> list[Trial]:
    """Read a trial list ('auto' detects the format); trials come back in file order."""
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    root_p = Path(root) if root is not None else None
    if fmt == "lfw":
        trials = read_lfw_pairs(path, root_p)
        warn_duplicates(trials, str(path))
        return trials
    if fmt not in FORMATS:
        raise DataError(f"unknown trial-list format '{fmt}'; known: {', '.join(FORMATS)}.")
    trials = []
    for lineno, f in _lines(path):
        where = f"{path}:{lineno}"
        if fmt == "voxceleb":
            if len(f) == 2:
                trials.append(Trial(_enroll(f[0], root_p, where), safe_path(f[1], root_p, where)))
                continue
            if len(f) != 3 or f[0] not in ("0", "1"):
                raise DataError(
                    f"{where}: expected 'label enroll test' with label 0 or 1, got {' '.join(f)!r}."
                )
            label, enroll, test = int(f[0]), f[1], f[2]
        else:
            if len(f) != 3 or f[2] not in KALDI_LABELS:
                raise DataError(
                    f"{where}: expected 'enroll test target|nontarget', got {' '.join(f)!r}."
                )
            enroll, test, label = f[0], f[1], KALDI_LABELS[f[2]]
        trials.append(Trial(_enroll(enroll, root_p, where), safe_path(test, root_p, where), label))
    warn_duplicates(trials, str(path))
    return trials


def lfw_path(name: str, number: int, ext: str = ".jpg") -> str:
    return f"{name}/{name}_{int(number):04d}{ext}"


def _lfw_header(path: Path, lines: list[tuple[int, list[str]]]) -> tuple[int, int]:
    head_no, head = lines[0]
    if not (1 <= len(head) <= 2 and all(x.isdigit() and int(x) > 0 for x in head)):
        raise DataError(
            f"{path}:{head_no}: expected the header 'folds<TAB>pairs' (e.g. '10\\t300') or "
            f"'pairs', got {' '.join(head)!r}."
        )
    return (1, int(head[0])) if len(head) == 1 else (int(head[0]), int(head[1]))


def lfw_folds(path: str | Path) -> int:
    """The number of folds a pairs.txt declares (1 for a View 1 file with a bare `n` header)."""
    path = Path(path)
    return _lfw_header(path, _lines(path))[0]


def read_lfw_pairs(path: str | Path, root: Path | None = None, ext: str = ".jpg") -> list[Trial]:
    """LFW pairs.txt → trials in file order, so fold f is the f-th contiguous block of 2n."""
    path = Path(path)
    lines = _lines(path)
    folds, n = _lfw_header(path, lines)
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
        numbers = (f[1], f[2]) if matched else (f[1], f[3] if len(f) > 3 else "")
        ok = len(f) == (3 if matched else 4) and all(x.isdigit() for x in numbers)
        if matched and ok:
            a, b = lfw_path(f[0], int(f[1]), ext), lfw_path(f[0], int(f[2]), ext)
        elif ok:
            a, b = lfw_path(f[0], int(f[1]), ext), lfw_path(f[2], int(f[3]), ext)
        else:
            kind = "matched 'name n1 n2'" if matched else "mismatched 'name1 n1 name2 n2'"
            raise DataError(f"{where}: expected a {kind} pair, got {' '.join(f)!r}.")
        trials.append(Trial((safe_path(a, root, where),), safe_path(b, root, where), int(matched)))
    return trials


# ---------------------------------------------------------------------------------------------
# writing (atomically)


def _atomic_lines(path: str | Path, lines: Sequence[str]) -> None:
    from metaemb.core.runs import atomic_write_text

    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))


def _field(paths: Sequence[str]) -> str:
    for p in paths:
        if not listable(p):
            raise DataError(
                f"cannot write path {p!r} in a VoxCeleb or Kaldi trial list: these formats "
                "separate columns by whitespace and enrollment files by ',', so a path may not "
                "be empty or contain spaces or ','. Rename the file or folder."
            )
    return ",".join(paths)


def listable(path: str) -> bool:
    """Whether `path` fits a whitespace-separated trial list (non-empty, no blank, no ',')."""
    return bool(path) and "," not in path and not any(c.isspace() for c in path)


def check_listable(paths: Sequence[str], where: str) -> None:
    """Refuse, before any trial is made, sample paths the VoxCeleb/Kaldi formats cannot hold."""
    bad = [p for p in paths if not listable(p)]
    if bad:
        shown = ", ".join(repr(p) for p in bad[:3]) + (" …" if len(bad) > 3 else "")
        raise DataError(
            f"{len(bad)} sample path(s) of {where} contain spaces or ',' ({shown}); VoxCeleb and "
            "Kaldi trial lists separate columns by whitespace and enrollment files by ',', so "
            "they cannot hold these paths. Rename those files or folders (e.g. spaces to '_'). "
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


def write_trials(
    path: str | Path, trials: Sequence[Trial], format: str = "voxceleb", folds: int = 10
) -> None:
    """Write a VoxCeleb, Kaldi or LFW list (LFW: `folds` blocks of n matched, n mismatched)."""
    if format == "lfw":
        return _atomic_lines(path, lfw_lines(trials, folds))
    if format not in ("voxceleb", "kaldi"):
        raise DataError(f"unknown trial-list format '{format}'; known: {', '.join(FORMATS)}.")
    lines = []
    for t in trials:
        e, x = _field(t.enroll), _field([t.test])
        if t.label is None and format == "voxceleb":
            lines.append(f"{e} {x}")
        elif t.label is None:
            raise DataError(f"Kaldi trial lists need labels; trial {e} {x} has none.")
        else:
            lines.append(
                f"{int(t.label)} {e} {x}"
                if format == "voxceleb"
                else f"{e} {x} {'target' if t.label else 'nontarget'}"
            )
    _atomic_lines(path, lines)


_LFW_NAME = re.compile(r"^([^/]+)/\1_(\d+)\.[A-Za-z]+$")


def lfw_lines(trials: Sequence[Trial], folds: int = 10) -> list[str]:
    """pairs.txt lines; trials must be `folds` blocks of n matched then n mismatched pairs."""
    if not trials or len(trials) % (2 * folds):
        raise DataError(f"{len(trials)} trials cannot form {folds} LFW folds of equal size.")
    n = len(trials) // (2 * folds)
    lines = [f"{folds}\t{n}"]
    for k, t in enumerate(trials):
        parts = [_LFW_NAME.match(p) for p in (*t.enroll, t.test)]
        matched = k % (2 * n) < n
        if len(t.enroll) != 1 or not all(parts) or t.label != int(matched):
            raise DataError(
                f"trial {k + 1} ({', '.join(t.enroll)} vs {t.test}) does not fit LFW pairs.txt: "
                "each fold needs n matched then n mismatched single-image name/name_NNNN trials."
            )
        (na, ia), (nb, ib) = (m.groups() for m in parts)  # type: ignore[union-attr]
        if matched and na != nb:
            raise DataError(f"matched LFW trial {k + 1} compares '{na}' with '{nb}'.")
        lines.append(
            f"{na}\t{int(ia)}\t{int(ib)}" if matched else f"{na}\t{int(ia)}\t{nb}\t{int(ib)}"
        )
    return lines


def write_scores(path: str | Path, trials: Sequence[Trial], scores: Sequence[float]) -> None:
    """Four tab-separated columns `enroll test label score` (label target, nontarget or -),
    atomically; tabs, so file names with spaces round-trip."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(trials) != scores.size:
        raise DataError(f"{len(trials)} trials but {scores.size} scores.")
    label = {1: "target", 0: "nontarget", None: "-"}
    _atomic_lines(
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
    for lineno, f in _lines(path, tabs=True):
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
# dataset lists and names


def read_vggface2_list(path: str | Path) -> list[Sample]:
    """VGGFace2 `train_list.txt` / `test_list.txt`: one `n000002/0001_01.jpg` per line → samples
    (identity = first path component, labels indexed by sorted identity)."""
    path = Path(path)
    rel = []
    for lineno, f in _lines(path):
        p = safe_path(f[0], None, f"{path}:{lineno}")
        if len(f) != 1 or "/" not in p:
            raise DataError(f"{path}:{lineno}: expected 'identity/image', got {' '.join(f)!r}.")
        rel.append(p)
    index = {name: i for i, name in enumerate(sorted({p.split("/", 1)[0] for p in rel}))}
    return [Sample(p, p.split("/", 1)[0], index[p.split("/", 1)[0]]) for p in rel]


@dataclass(frozen=True)
class AgeDBName:
    index: int
    name: str
    age: int
    gender: str


_AGEDB = re.compile(r"^(\d+)_(.+)_(\d+)_([mfMF])$")


def parse_agedb_name(filename: str) -> AgeDBName:
    """`<index>_<Name>_<age>_<gender>.jpg` → its fields; the identity is `name`."""
    m = _AGEDB.match(PurePosixPath(filename.replace("\\", "/")).stem)
    if not m:
        raise DataError(
            f"AgeDB file name '{filename}' does not follow '<index>_<Name>_<age>_<gender>.jpg'."
        )
    return AgeDBName(int(m.group(1)), m.group(2), int(m.group(3)), m.group(4).lower())


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
# protocols (registered in core/builtins.py)


def _default_file(root: Path, path: Path | None, names: Sequence[str], what: str) -> Path:
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


def voxceleb_protocol(root: Path, path: Path | None = None) -> list[Trial]:
    """VoxCeleb `label enroll test` list (default: veri_test2.txt, the cleaned VoxCeleb1-O)."""
    root = Path(root)
    names = ("veri_test2.txt", "veri_test.txt", "trials.txt")
    return read_trials(_default_file(root, path, names, "VoxCeleb"), root, "voxceleb")


def kaldi_protocol(root: Path, path: Path | None = None) -> list[Trial]:
    """Kaldi `enroll test target|nontarget` list (default: the data dir's `trials` file)."""
    root = Path(root)
    return read_trials(_default_file(root, path, ("trials",), "Kaldi"), root, "kaldi")


def lfw_protocol(root: Path, path: Path | None = None) -> list[Trial]:
    """LFW View 2 pairs.txt (default root/pairs.txt): 10 folds = 10 contiguous blocks."""
    root = Path(root)
    return read_lfw_pairs(_default_file(root, path, ("pairs.txt",), "LFW"), root)
