"""scores.txt: one scored trial per line, `enroll test label score`, tab-separated so file
names with spaces round-trip; written atomically, read back for plots and re-scoring."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metaemb.core.errors import DataError
from metaemb.core.eval.trials import read_lines, write_lines
from metaemb.core.plugin.interfaces import Trial


def _score_field(paths: Sequence[str]) -> str:
    for p in paths:
        if not p or any(c in p for c in "\t\n\r"):
            raise DataError(f"cannot write path {p!r} in scores.txt (empty, or a tab or newline).")
    return ",".join(paths)


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
