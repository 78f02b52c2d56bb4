"""Speaker trial lists: the VoxCeleb and Kaldi text formats and their protocols.

  voxceleb  `label enroll test`, label 1 = target, 0 = non-target (2 columns: unlabelled)
  kaldi     `enroll test target|nontarget`
  cnceleb   `enroll test 1|0` (CN-Celeb's `trials.lst`: Kaldi's column order, VoxCeleb's labels);
            an enrolment key (`id00800-enroll`) is looked up in the `enroll.lst` beside the list,
            and a `.wav` the release ships as `.flac` is read as the `.flac`
Paths are relative to the data root; several enrollment files are joined by ','. Both formats
separate columns by whitespace, so they cannot hold paths with blanks (writing refuses them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaemb.core.errors import DataError
from metaemb.core.eval.trial_checks import safe_path
from metaemb.core.eval.trials import (
    LABEL_WORDS,
    TrialFormat,
    default_file,
    join_enroll,
    read_lines,
    read_trials,
    split_enroll,
    write_lines,
)
from metaemb.core.plugin.interfaces import Trial

KALDI_LABELS = LABEL_WORDS


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise DataError(f"the {name} trial-list format takes no options, got {sorted(options)}.")


class VoxCelebList(TrialFormat):
    """`label enroll test` (label 1 target, 0 non-target), or `enroll test` unlabelled."""

    detect_order = 30
    example = "'1|0 enroll test' (voxceleb)"
    path_leads = False  # a labelled line starts with its label

    def detect(self, fields: list[str]) -> bool:
        if len(fields) == 3:
            return fields[0] in ("0", "1")
        return len(fields) == 2 and not all(x.isdigit() for x in fields)

    def read(self, path: Path, root: Path | None) -> list[Trial]:
        trials = []
        lines = read_lines(path)
        labelled = len(lines[0][1]) != 2  # the first line says which: every line follows it
        for lineno, f in lines:
            where = f"{path}:{lineno}"
            if len(f) == 2 and not labelled:
                trials.append(Trial(split_enroll(f[0], root, where), safe_path(f[1], root, where)))
                continue
            if len(f) != 3 or f[0] not in ("0", "1"):
                kind = "'label enroll test' with label 0 or 1" if labelled else "'enroll test'"
                why = " (the list's first line has a label, so every line needs one)" if (
                    labelled and len(f) == 2) else ""  # fmt: skip
                raise DataError(f"{where}: expected {kind}, got {' '.join(f)!r}{why}.")
            enroll, test = split_enroll(f[1], root, where), safe_path(f[2], root, where)
            trials.append(Trial(enroll, test, int(f[0])))
        return trials

    def write(self, path: Path, trials: Sequence[Trial], **options: Any) -> None:
        _no_options("voxceleb", options)
        lines = []
        for t in trials:
            e = join_enroll(t.enroll, leads_line=t.label is None)
            x = join_enroll([t.test], leads_line=False)
            lines.append(f"{e} {x}" if t.label is None else f"{int(t.label)} {e} {x}")
        write_lines(path, lines)


class KaldiTrials(TrialFormat):
    """Kaldi `enroll test target|nontarget`."""

    detect_order = 20  # before voxceleb: '1 a target' is a Kaldi line
    example = "'enroll test target|nontarget' (kaldi)"

    def detect(self, fields: list[str]) -> bool:
        return len(fields) == 3 and fields[2] in KALDI_LABELS

    def read(self, path: Path, root: Path | None) -> list[Trial]:
        trials = []
        for lineno, f in read_lines(path):
            where = f"{path}:{lineno}"
            if len(f) != 3 or f[2] not in KALDI_LABELS:
                raise DataError(
                    f"{where}: expected 'enroll test target|nontarget', got {' '.join(f)!r}."
                )
            enroll, test = split_enroll(f[0], root, where), safe_path(f[1], root, where)
            trials.append(Trial(enroll, test, KALDI_LABELS[f[2]]))
        return trials

    def write(self, path: Path, trials: Sequence[Trial], **options: Any) -> None:
        _no_options("kaldi", options)
        lines = []
        for t in trials:
            e, x = join_enroll(t.enroll), join_enroll([t.test], leads_line=False)
            if t.label is None:
                raise DataError(f"Kaldi trial lists need labels; trial {e} {x} has none.")
            lines.append(f"{e} {x} {'target' if t.label else 'nontarget'}")
        write_lines(path, lines)


class CnCelebTrials(TrialFormat):
    """CN-Celeb's `enroll test 1|0` (its eval/lists/trials.lst)."""

    detect_order = 25  # after kaldi; '1 a 0' is a VoxCeleb line (its first field is a label)
    example = "'enroll test 1|0' (cnceleb)"

    def detect(self, fields: list[str]) -> bool:
        return len(fields) == 3 and fields[2] in ("0", "1") and fields[0] not in ("0", "1")

    def identity_of(self, path: str) -> str:
        """The speaker prefix of the file name (`test/id00800-singing-01-001.wav`: id00800);
        a name without one (`test/id00800/utt1.wav`) belongs to its folder."""
        folder, _, name = path.rpartition("/")
        if "-" in name or not folder:
            return name.split("-", 1)[0]
        return folder.rsplit("/", 1)[-1]

    def read(self, path: Path, root: Path | None) -> list[Trial]:
        keys = _enroll_keys(path, root)
        trials = []
        for lineno, f in read_lines(path):
            where = f"{path}:{lineno}"
            if len(f) != 3 or f[2] not in ("0", "1"):
                raise DataError(f"{where}: expected 'enroll test 1|0', got {' '.join(f)!r}.")
            enroll_paths = tuple(
                keys[e] if e in keys else _released(_as_file(e, path, root, where, keys), root)
                for e in f[0].split(",")
            )
            test = _released(safe_path(f[1], root, where), root)
            trials.append(Trial(enroll_paths, test, int(f[2])))
        return trials

    def write(self, path: Path, trials: Sequence[Trial], **options: Any) -> None:
        _no_options("cnceleb", options)
        lines = []
        for t in trials:
            e, x = join_enroll(t.enroll), join_enroll([t.test], leads_line=False)
            if t.label is None:
                raise DataError(f"CN-Celeb trial lists need labels; trial {e} {x} has none.")
            lines.append(f"{e} {x} {int(t.label)}")
        write_lines(path, lines)


def _enroll_keys(trials: Path, root: Path | None) -> dict[str, str]:
    """CN-Celeb's `enroll.lst` beside its trial list: `id00800-enroll enroll/id00800-enroll.wav`
    lines, which name the file behind each enrolment key of the list's first column. A key
    given twice with other files is refused (the last line won, and a speaker's target trials
    were scored against another's enrolment); bad paths are named at their own line."""
    table = trials.parent / "enroll.lst"
    if not table.is_file():
        return {}
    keys: dict[str, str] = {}
    first: dict[str, int] = {}
    for lineno, f in read_lines(table):
        where = f"{table}:{lineno}"
        if len(f) != 2:
            raise DataError(f"{where}: expected 'key path', got {' '.join(f)!r}.")
        rel = _released(safe_path(f[1], root, where), root)
        if f[0] in keys and keys[f[0]] != rel:
            raise DataError(
                f"{where}: enrolment key '{f[0]}' is given again, with '{f[1]}'; line "
                f"{first[f[0]]} gave '{keys[f[0]]}'. Keep one line per key."
            )
        keys[f[0]] = rel
        first.setdefault(f[0], lineno)
    return keys


def _as_file(entry: str, trials: Path, root: Path | None, where: str, keys: dict) -> str:
    """An enrolment entry that is not a key of enroll.lst: a file under the root. One with no
    file suffix that is not there is a CN-Celeb key whose table is missing or lacks it."""
    rel = safe_path(entry, root, where)
    if Path(rel).suffix or root is None or (root / rel).exists():
        return rel
    table = trials.parent / "enroll.lst"
    if not keys:
        raise DataError(
            f"{where}: '{entry}' is no file under '{root}' and looks like a CN-Celeb enrolment "
            f"key, which is looked up in the enroll.lst beside the list, and '{table}' does not "
            "exist: put CN-Celeb's lists/enroll.lst beside the list."
        )
    raise DataError(
        f"{where}: '{entry}' is no file under '{root}' and no enrolment key of '{table}'."
    )


def _released(rel: str, root: Path | None) -> str:
    """CN-Celeb's lists name `.wav` files and its release ships `.flac`: a listed file that is
    missing under the root but there as `.flac` is that file."""
    if root is None or not rel.lower().endswith(".wav") or (root / rel).exists():
        return rel
    flac = rel[: -len(".wav")] + ".flac"
    return flac if (root / flac).exists() else rel


def voxceleb_protocol(root: Path, trials: Path | None = None) -> list[Trial]:
    """VoxCeleb `label enroll test` list (default: veri_test2.txt, the cleaned VoxCeleb1-O)."""
    root = Path(root)
    names = ("veri_test2.txt", "veri_test.txt", "trials.txt")
    path = default_file(root, trials, names, "VoxCeleb")
    if trials is None and path.name == "veri_test.txt":
        import warnings

        warnings.warn(
            f"protocol 'voxceleb' reads '{path}', the original VoxCeleb1-O list (37,720 trials, "
            "some with wrong labels), as no cleaned veri_test2.txt (37,611) lies beside it; "
            "published results use the cleaned list: put veri_test2.txt there or pass --trials.",
            stacklevel=2,
        )
    return read_trials(path, root, "voxceleb")


def cnceleb_protocol(root: Path, trials: Path | None = None) -> list[Trial]:
    """CN-Celeb's evaluation: `--data CN-Celeb/eval` and its `lists/trials.lst`, enrolment keys
    looked up in `lists/enroll.lst`."""
    root = Path(root)
    names = ("lists/trials.lst", "trials.lst")
    return read_trials(default_file(root, trials, names, "CN-Celeb"), root, "cnceleb")


def kaldi_protocol(root: Path, trials: Path | None = None) -> list[Trial]:
    """Kaldi `enroll test target|nontarget` list (default: the data dir's `trials` file)."""
    root = Path(root)
    return read_trials(default_file(root, trials, ("trials",), "Kaldi"), root, "kaldi")
