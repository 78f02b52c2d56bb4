"""scores.txt: one scored trial per line, `enroll test label score`, tab-separated so file
names with spaces round-trip; written atomically, read back for plots and re-scoring. Score
files of other toolkits (Kaldi's and WeSpeaker's `enroll test score`, optionally labelled) are
read too, so `metaemb metrics` puts them through the same metric definitions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metaemb.core.errors import DataError
from metaemb.core.eval.trials import LABEL_WORDS, read_lines, write_lines
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
    for lineno, f in read_lines(path, tabs=True, what="score file", items="scores"):
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


def is_scores_file(path: Path) -> bool:
    """Whether `path` is a scores.txt metaemb wrote (its first line: four tab-separated fields,
    the third a label word or '-'), so an evaluation may replace it; another toolkit's score
    file (SpeechBrain's own scores.txt) may not be."""
    with open(path, "rb") as f:  # the first line, however long (many enrollment files)
        line = f.readline(1 << 24).decode("utf-8", errors="replace").rstrip("\r\n")
    first = line.split("\t") if "\t" in line else line.split()  # older ones: spaces
    return len(first) == 4 and first[2] in ("target", "nontarget", "-")


def is_evaluation_metrics(path: Path) -> bool:
    """Whether `path` is a metrics.json an evaluation wrote (a JSON object naming its scorer
    and what it measured, as every version wrote it), so another evaluation may replace it."""
    import json

    if path.stat().st_size > 64 << 20:
        return False
    held = json.loads(path.read_text(encoding="utf-8"))
    measured = ("trials_source", "eer", "class_accuracy", "match_accuracy", "labelled")
    return isinstance(held, dict) and "scorer" in held and any(k in held for k in measured)


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


#: labels of other toolkits' score lines: Kaldi's and WeSpeaker's words, SpeechBrain's 1|0,
#: and the tgt|imp, true|false others write
OTHER_LABELS = {**LABEL_WORDS, "1": 1, "0": 0, "tgt": 1, "imp": 0, "true": 1, "false": 0}


def _label(text: str) -> int:
    """1 or 0 for a label word, -1 for anything else."""
    return OTHER_LABELS.get(text.lower(), -1)


class ScoredTrials(list):
    """Trials of a score file; `undecided` when every four-column line read both ways (label
    then score, or score then label) and the reading was the default one."""

    undecided: bool = False


def read_any_scores(
    path: str | Path, label_first: bool | None = None
) -> tuple[ScoredTrials, np.ndarray]:
    """Scored trials of metaemb's scores.txt (`enroll test target|nontarget|- score`) or of
    another toolkit's score file: `enroll test score` (Kaldi), `… score target|nontarget`
    (WeSpeaker), `enroll test 1|0 score` (SpeechBrain); a trial's label is None when its line
    has none. Whether the label comes after or before the score is decided once for the file,
    from the lines that can be read one way only (a line `a b 1 0` alone: score 1, label 0)."""
    path = Path(path)
    own = {**LABEL_WORDS, "-": None}
    _refuse_other_kinds(path)
    lines = read_lines(path, tabs=True, what="score file", items="scores")
    decided = _label_first(path, lines, own)
    trials, scores = ScoredTrials(), []
    trials.undecided = decided is None and label_first is None and _ambiguous(lines, own)
    label_first = decided if decided is not None else bool(label_first)
    for lineno, f in lines:
        after = len(f) == 4 and _label(f[3]) != -1 and _finite(f[2]) is not None
        before = len(f) == 4 and _label(f[2]) != -1 and _finite(f[3]) is not None
        if len(f) == 4 and f[2] in own and _finite(f[3]) is not None:  # metaemb's own
            enroll, test, label, score = tuple(f[0].split(",")), f[1], own[f[2]], f[3]
        elif before and (label_first or not after):
            enroll, test, label, score = (f[0],), f[1], _label(f[2]), f[3]
        elif after:
            enroll, test, label, score = (f[0],), f[1], _label(f[3]), f[2]
        elif len(f) == 3 and _finite(f[2]) is not None:
            enroll, test, label, score = (f[0],), f[1], None, f[2]
        else:
            raise DataError(
                f"{path}:{lineno}: {' '.join(f)[:80]!r} is no score line: expected 'enroll test "
                "score' (Kaldi), 'enroll test score target|nontarget' (WeSpeaker), 'enroll test "
                "1|0 score' (SpeechBrain) or metaemb's 'enroll test target|nontarget score' (a "
                "finite number for the score)."
            )
        trials.append(Trial(enroll, test, label))
        scores.append(float(score))
    return trials, np.asarray(scores)


def _refuse_other_kinds(path: Path) -> None:
    """A file that is plainly no score file (metrics.json, a checkpoint, an archive) named as
    what it is, not as 'line 1 is no score line'."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return  # read_lines says what is wrong with it
    kinds = {b"PK\x03\x04": "a zip archive (a torch checkpoint, a gallery, an .npz?)",
             b"\x80\x02": "a pickle", b"\x89PNG": "a PNG file", b"\x93NUMPY": "a NumPy array"}  # fmt: skip
    kind = next((k for magic, k in kinds.items() if head.startswith(magic)), None)
    if kind is None and head.lstrip()[:1] in (b"{", b"["):
        kind = "JSON (metrics.json? give the scores.txt beside it)"
    if kind:
        raise DataError(f"score file '{path}' is {kind}, not a score file.")


def _ambiguous(lines: list[tuple[int, list[str]]], own: dict[str, Any]) -> bool:
    """Whether some four-column line of another toolkit reads both ways (`a b 1 0`)."""
    return any(
        len(f) == 4 and _label(f[3]) != -1 and _label(f[2]) != -1
        and _finite(f[2]) is not None and _finite(f[3]) is not None
        for _, f in lines
    )  # fmt: skip


def _label_first(
    path: Path, lines: list[tuple[int, list[str]]], own: dict[str, Any]
) -> bool | None:
    """Whether the file's four-column lines put the label before the score (SpeechBrain), from
    the lines only one reading fits (None when none does); a file whose lines disagree is
    refused."""
    first: dict[bool, int] = {}  # label first? → the first line that says so
    for lineno, f in lines:
        if len(f) != 4 or (f[2] in own and _finite(f[3]) is not None):
            continue
        after = _label(f[3]) != -1 and _finite(f[2]) is not None
        before = _label(f[2]) != -1 and _finite(f[3]) is not None
        if after != before:
            first.setdefault(before, lineno)
    if len(first) == 2:
        raise DataError(
            f"{path}: line {first[False]} puts the label after the score and line {first[True]} "
            "before it; a score file has one layout (two files put together?)."
        )
    return next(iter(first)) if first else None


def labelled_scores(
    scores: Path, trials: Path | None = None, flag: str = "--trials"
) -> tuple[np.ndarray, np.ndarray]:
    """(target scores, non-target scores) of a score file, labelled by its own lines or by the
    trial list `trials` (joined on enroll and test; every scored trial must be listed)."""
    import warnings

    scored, values = read_any_scores(scores)
    labels: dict[tuple[str, str], int] = {}
    if trials is not None:
        from metaemb.core.eval.trials import read_trials

        labels = {(",".join(t.enroll), t.test): int(t.label) for t in read_trials(trials)
                  if t.label is not None}  # fmt: skip
    if scored.undecided:  # every `a b 1 0` line reads both ways: the list, if any, decides
        other, other_values = read_any_scores(scores, label_first=True)
        if trials is not None and _agreement(other, labels) > _agreement(scored, labels):
            scored, values = other, other_values
        warnings.warn(
            f"every line of '{scores}' with a 0 or 1 reads both as 'score label' and as 'label "
            f"score'; read as {'label score' if scored is other else 'score label'}"
            + (", the reading its trial list agrees with" if trials is not None else
               f" (give {flag} to decide by the list)") + ".",
            stacklevel=2,
        )  # fmt: skip
    tar, non, unlisted, disagree = [], [], [], []
    seen: dict[tuple[str, str], tuple[float, int | None]] = {}
    repeated, conflicting, opposite = [], [], []
    for t, score in zip(scored, values.tolist(), strict=True):
        enroll = ",".join(t.enroll)
        pair = (enroll, t.test)
        if pair in seen:  # a list naming a trial twice, or two score files concatenated
            before, said = seen[pair]
            bucket = conflicting if before != score else opposite if said != t.label else repeated
            bucket.append(f"{enroll} {t.test}")
        seen.setdefault(pair, (score, t.label))
        label = t.label
        if trials is not None:
            label = labels.get(pair, labels.get((t.test, enroll)))
            if t.label is not None and label is not None and label != t.label:
                disagree.append(f"{enroll} {t.test}")
        if label is None:
            unlisted.append(f"{enroll} {t.test}")
            continue
        (tar if label else non).append(score)
    if conflicting:
        raise DataError(
            f"{len(conflicting)} trials of '{scores}' are scored more than once with different "
            f"scores (first: {conflicting[0]!r}): two score files put together? Keep one score "
            "per trial."
        )
    if disagree:
        raise DataError(
            f"{len(disagree)} of the {len(scored)} scored trials of '{scores}' carry a label "
            f"that the trial list '{trials}' contradicts (first: {disagree[0]!r}): the scores "
            "were made for another list (a cleaned or an original version?). Give the list "
            f"they were scored on, or leave {flag} out to use their own labels."
        )
    if opposite:
        warnings.warn(
            f"{len(opposite)} lines of '{scores}' repeat a trial with the opposite label (first: "
            f"{opposite[0]!r}): the file contradicts itself; each line counts, so that trial is "
            "wrong once whatever it is.",
            stacklevel=2,
        )
    if trials is not None:
        missing = len(set(labels) - {p for p in seen} - {(b, a) for a, b in seen})
        if missing:
            warnings.warn(
                f"{missing} of the {len(labels)} labelled trials of '{trials}' have no score in "
                f"'{scores}' (a scoring that stopped early?): the metrics are of the "
                f"{len(labels) - missing} scored ones.",
                stacklevel=2,
            )
    if repeated:
        warnings.warn(
            f"{len(repeated)} lines of '{scores}' repeat a trial with the same score (first: "
            f"{repeated[0]!r}): each line counts, as `evaluate` counts a list's duplicates (its "
            "scores.txt has a line per listed trial); remove the repeats to count them once.",
            stacklevel=2,
        )
    if unlisted:
        said = "are not in the trial list" if trials is not None else "have no label"
        raise DataError(
            f"{len(unlisted)} of the {len(scored)} scored trials of '{scores}' {said} (first: "
            f"{unlisted[0]!r}): give {flag} with the labelled list they were scored on"
            + (", written with the same paths" if trials is not None else "")
            + "."
        )
    if not tar or not non:
        raise DataError(
            f"'{scores}' scores {len(tar)} target and {len(non)} non-target trials; the metrics "
            "need both."
        )
    return np.asarray(tar, float), np.asarray(non, float)


def _agreement(scored: list[Trial], labels: dict[tuple[str, str], int]) -> int:
    """How many of the scored trials' own labels the trial list's `labels` confirm."""
    return sum(
        labels.get((",".join(t.enroll), t.test), labels.get((t.test, ",".join(t.enroll))))
        == t.label
        for t in scored
    )
