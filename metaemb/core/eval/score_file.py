"""Scores written by another toolkit (or an earlier `metaemb evaluate`), read as target and
non-target scores, so Kaldi's, WeSpeaker's or SpeechBrain's numbers go through metaemb's own
metric definitions (hull EER, normalised minDCF, Cllr).

A score line is `enroll test score` (Kaldi's and WeSpeaker's score files), optionally with the
label after the score (`enroll test score target`), or metaemb's `enroll test target score`.
Without a label on the line, the trial list names it (`--trials`, any format metaemb reads).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from metaemb.core.errors import DataError

LABELS = {"target": 1, "nontarget": 0, "1": 1, "0": 0, "tgt": 1, "imp": 0}


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_scores(path: Path) -> list[tuple[str, str, float, int | None]]:
    """(enroll, test, score, label or None) per line; blank and `#` lines skipped."""
    from metaemb.core.eval.trials import read_list_text

    out = []
    for n, line in enumerate(read_list_text(path, "score file").splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{path}:{n}"
        if len(fields) == 3 and _number(fields[2]) is not None:
            out.append((fields[0], fields[1], float(fields[2]), None))
        elif len(fields) == 4 and _number(fields[2]) is not None and fields[3] in LABELS:
            out.append((fields[0], fields[1], float(fields[2]), LABELS[fields[3]]))
        elif len(fields) == 4 and fields[2] in LABELS and _number(fields[3]) is not None:
            out.append((fields[0], fields[1], float(fields[3]), LABELS[fields[2]]))
        else:
            raise DataError(
                f"{where}: {line.strip()[:80]!r} is no score line: expected 'enroll test score', "
                "'enroll test score target|nontarget' or 'enroll test target|nontarget score' "
                "(a finite number for the score)."
            )
    if not out:
        raise DataError(f"score file '{path}' holds no scores.")
    return out


def labelled_scores(scores: Path, trials: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(target scores, non-target scores) of a score file, labelled by its own lines or by the
    trial list `trials` (joined on enroll and test; every scored trial must be listed)."""
    rows = read_scores(scores)
    labels: dict[tuple[str, str], int] = {}
    if trials is not None:
        from metaemb.core.eval.trials import read_trials

        for t in read_trials(trials):
            if t.label is not None:
                labels[(",".join(t.enroll), t.test)] = int(t.label)
    tar, non, unlisted = [], [], []
    for enroll, test, score, label in rows:
        if trials is not None:
            label = labels.get((enroll, test), labels.get((test, enroll)))
        if label is None:
            unlisted.append(f"{enroll} {test}")
            continue
        (tar if label else non).append(score)
    if unlisted:
        said = "are not in the trial list" if trials is not None else "have no label"
        raise DataError(
            f"{len(unlisted)} of the {len(rows)} scored trials of '{scores}' {said} (first: "
            f"{unlisted[0]!r}): give --trials with the labelled list they were scored on"
            + (", written with the same paths" if trials is not None else "")
            + "."
        )
    if not tar or not non:
        raise DataError(
            f"'{scores}' scores {len(tar)} target and {len(non)} non-target trials; the metrics "
            "need both."
        )
    return np.asarray(tar, float), np.asarray(non, float)
