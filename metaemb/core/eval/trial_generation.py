"""Seeded trial lists over a sample folder, and how much of a dataset a trial list covers.

Used by the engine's validation, `metaemb trials make|coverage`, `evaluate --measure` and the
warm start's forgetting measurement; the text formats live in core/eval/trials.py.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from metaemb.core.errors import DataError
from metaemb.core.plugin.interfaces import Trial


def make_trials(
    folder: Any,
    n_target: int | None = None,
    n_nontarget: int | None = None,
    enroll_samples: int = 1,
    seed: int = 0,
    cross_session: bool = False,
) -> list[Trial]:
    """Seeded trials over `folder.samples` (Sample(path, identity, label)); same input, same list.

    Targets: with one enrollment sample, every unordered pair of samples of one identity; with
    k > 1, each sample of an identity that has more than k is tested against k other samples of
    its identity. `n_target` samples that many (all when None or when fewer exist). Non-targets:
    `n_nontarget` distinct (enrollment, test) pairs of different identities (default: as many as
    targets; all when fewer exist). Targets come first, each part in sample order. With `cross_session`, a
    target's enrollment and test samples come from different sessions
    (`<identity>/<session>/<file>`: the folders between identity and file), as NIST SRE and
    VoxCeleb's lists are built: two utterances of one video share channel and room.
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
        raise DataError(
            f"{where}: no identity has more than {k} samples, so no target trials (a trial "
            f"enrolls {k} sample(s) and tests another of the same identity: lower the "
            "enrolment samples per trial)."
        )
    if cross_session:
        own = getattr(folder, "session_of", None)  # a folder that knows (tar shards' keys)
        sessions = [own(s) if own else session_of(s.path) for s in folder.samples]
        if not any(sessions):
            raise DataError(
                f"{where}: cross-session targets need sessions, folders between identity and "
                "file (<identity>/<session>/<file>, as VoxCeleb's <id>/<video>/<utt>.wav); "
                "its samples are <identity>/<file>."
            )
        targets = _cross_session_targets(members, sessions, k, n_target, rng)
        if not targets:
            raise DataError(f"{where}: no identity has samples in two sessions, so no "
                            "cross-session target trials.")  # fmt: skip
        single = [g for g in members if len(g) > 1 and len({sessions[i] for i in g}) < 2]
        if single:
            import warnings

            warnings.warn(
                f"{where}: {len(single)} of the {len(members)} identities scored have samples of one "
                "session only (no folder between identity and file, or one), so they give no "
                "cross-session target trial; they are in non-target trials only.",
                stacklevel=2,
            )
    else:
        targets = _targets(members, k, n_target, rng)
    n_non = len(targets) if n_nontarget is None else int(n_nontarget)
    nontargets = _nontargets(groups, ids, k, n_non, rng)
    return [Trial(tuple(paths[e] for e in enr), paths[t], 1) for enr, t in targets] + [
        Trial(tuple(paths[e] for e in enr), paths[t], 0) for enr, t in nontargets
    ]


def _targets(members, k, n_target, rng) -> list[tuple[tuple[int, ...], int]]:
    if k == 1:
        # pairs (i < j) per identity, indexed globally without enumerating them all
        offsets = _pair_offsets(members)
        total = int(offsets[-1])
        chosen = (
            np.arange(total)
            if n_target is None or n_target >= total
            else np.sort(rng.choice(total, size=int(n_target), replace=False))
        )
        return [_pair_at(members, offsets, r) for r in chosen.tolist()]
    cands = []
    for g in members:
        for pos, test in enumerate(g):
            others = g[:pos] + g[pos + 1 :]
            pick = np.sort(rng.choice(len(others), size=k, replace=False))
            cands.append((tuple(others[p] for p in pick.tolist()), test))
    return _some(cands, n_target, rng)


def _pair_offsets(members: list[list[int]]) -> np.ndarray:
    """Where each identity's pairs (i < j) start in one global index of all same-identity
    pairs; the last entry is their number."""
    sizes = np.array([len(g) for g in members], dtype=np.int64)
    return np.concatenate(([0], np.cumsum(sizes * (sizes - 1) // 2)))


def _pair_at(members: list[list[int]], offsets: np.ndarray, r: int) -> tuple[tuple[int, ...], int]:
    """The r-th pair of the global index as a target (enrollment sample, test sample)."""
    g = int(np.searchsorted(offsets, r, side="right") - 1)
    a, b = _pair_of(r - int(offsets[g]), len(members[g]))
    return (members[g][a],), members[g][b]


def _some(cands: list, n_target: int | None, rng: np.random.Generator) -> list:
    """`n_target` of the candidates drawn (all when None or fewer exist), in their order."""
    if n_target is not None and n_target < len(cands):
        keep = np.sort(rng.choice(len(cands), size=int(n_target), replace=False))
        cands = [cands[i] for i in keep.tolist()]
    return cands


def session_of(path: str) -> str:
    """The session of a sample path: the folders between its identity folder and its file
    (`id10001/1zcIwhmdeo4/00001.wav` → `1zcIwhmdeo4`; "" for `<identity>/<file>`)."""
    return "/".join(path.split("/")[1:-1])


def _cross_session_targets(
    members: list[list[int]], sessions: list[str], k: int, n_target: int | None,
    rng: np.random.Generator,
) -> list[tuple[tuple[int, ...], int]]:  # fmt: skip
    """Targets whose enrollment and test samples come from different sessions of an identity:
    every such pair (k = 1) or each test sample against k samples of its identity's other
    sessions, `n_target` of them drawn (all when None or fewer exist), in sample order."""
    if k == 1 and n_target is not None:
        drawn = _draw_cross_session_pairs(members, sessions, int(n_target), rng)
        if drawn is not None:
            return drawn
    cands: list[tuple[tuple[int, ...], int]] = []
    for g in members:
        s = np.asarray([sessions[i] for i in g])
        if k == 1:
            a, b = np.triu_indices(len(g), 1)
            keep = s[a] != s[b]
            pairs = zip(a[keep].tolist(), b[keep].tolist(), strict=True)
            cands += [((g[x],), g[y]) for x, y in pairs]
            continue
        for pos, test in enumerate(g):
            others = [g[j] for j in np.flatnonzero(s != s[pos]).tolist()]
            if len(others) >= k:
                pick = np.sort(rng.choice(len(others), size=k, replace=False))
                cands.append((tuple(others[p] for p in pick.tolist()), test))
    return _some(cands, n_target, rng)


def _draw_cross_session_pairs(
    members: list[list[int]], sessions: list[str], n_target: int, rng: np.random.Generator
) -> list[tuple[tuple[int, ...], int]] | None:
    """`n_target` cross-session pairs drawn from the index of every same-identity pair (as
    `_targets` draws), rejecting same-session ones, in sample order: memory O(n_target), where
    listing every pair of VoxCeleb2 took gigabytes. None when they are too rare to draw (the
    caller lists them all)."""
    offsets = _pair_offsets(members)
    total = int(offsets[-1])
    if total == 0 or 4 * n_target >= total:
        return None
    chosen: set[int] = set()
    for _ in range(64):
        need = n_target - len(chosen)
        if need <= 0:
            break
        draw = rng.integers(0, total, size=4 * need + 16)
        owner = np.searchsorted(offsets, draw, side="right") - 1
        for r, gi in zip(draw.tolist(), owner.tolist(), strict=True):
            if r in chosen:
                continue
            a, b = _pair_of(r - int(offsets[gi]), len(members[gi]))
            if sessions[members[gi][a]] != sessions[members[gi][b]]:
                chosen.add(r)
                if len(chosen) == n_target:
                    break
    if len(chosen) < n_target:
        return None
    return [_pair_at(members, offsets, r) for r in sorted(chosen)]


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
