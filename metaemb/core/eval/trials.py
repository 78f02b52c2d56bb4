"""Trial lists: the registry of text formats, reading and writing them.

Checks on trials (paths inside the root, a plugin's trials well-formed, duplicates, labels):
core/eval/trial_checks.py. The scores file: core/eval/scores_file.py. Seeded generation of trial
lists and their coverage: core/eval/trial_generation.py.

A trial-list format (registry "trial_formats", hook `register_trial_formats`) is a `TrialFormat`
registered by the plugin that owns it (dataset formats live in the modality plugins);
`read_trials`, `write_trials` and `detect_format` dispatch through that registry, so a plugin's
format works wherever a built-in one does. Paths in a list are relative to the data root
(several enrollment samples joined by ','); a path may not escape the root ('..', or an
absolute path outside it): formats check each with `safe_path`, and `read_trials` checks a
plugin format's result the same way.

A protocol (registry "protocols") is a callable `(root: Path, trials: Path | None = None) ->
list[Trial]` (both are context, never options): it reads (or generates) the trials of a dataset
rooted at `root`, from the list `trials` when given, else
from the protocol's default file; trial paths are relative to `root` and in file order. It may
return a `TrialList` whose `folds` says the trials form that many contiguous folds (k-fold
accuracy is then reported).
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from metaemb.core.errors import DataError, PluginError
from metaemb.core.eval.trial_checks import (
    checked_trials,
    listable,
    relative_trials,
    safe_path,
    warn_duplicates,
)
from metaemb.core.plugin.interfaces import Trial

#: label words of lists that spell the label out (`enroll test target|nontarget`)
LABEL_WORDS = {"target": 1, "nontarget": 0}
KALDI_LABELS = LABEL_WORDS  # the name core/eval/triplets.py imports


class TrialList(list):
    """Trials in file order; `folds` > 1 when they form that many contiguous, equal folds;
    `read_as` names the format they were read in, for messages ("format 'x' (plugin 'p')");
    `path` the file they were read from ("" when generated)."""

    def __init__(
        self, trials: Iterable[Trial] = (), folds: int = 0, read_as: str = "", path: str = ""
    ) -> None:
        super().__init__(trials)
        self.folds = int(folds)
        self.read_as = read_as
        self.path = path


def folds_of(trials: Sequence[Trial]) -> int:
    """The folds a protocol or format declared for `trials` (0: not a k-fold list)."""
    return trials.folds if isinstance(trials, TrialList) and trials.folds > 1 else 0


class TrialFormat(abc.ABC):
    """A trial-list text format. `detect` looks at the first trial line (its whitespace-split
    fields) of a file; formats are tried in `detect_order` (lower first)."""

    detect_order: ClassVar[int] = 100
    #: how the format looks, for error messages, e.g. "'label enroll test' (NAME)"
    example: ClassVar[str] = ""
    #: whether a labelled line starts with a path (so a path starting with '#' cannot be
    #: written: the line would read as a comment); False where it starts with its label
    path_leads: ClassVar[bool] = True

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

    def identity_of(self, path: str) -> str:
        """The identity a listed path belongs to, for `trials coverage`: its first folder by
        default; a format whose folders are not identities (CN-Celeb's enroll/, test/) says."""
        return path.split("/", 1)[0]

    def near_miss(self, fields: list[str]) -> str:
        """When no format accepts a first line: a sentence (starting with a space) saying how
        `fields` are almost this format's and what to fix, else ""."""
        return ""


def formats() -> dict[str, TrialFormat]:
    """Every registered trial-list format by name, in detection order."""
    from metaemb.core.plugin.manager import registry

    made = {e.name: e.factory() for e in registry("trial_formats").entries()}
    return dict(sorted(made.items(), key=lambda kv: (kv[1].detect_order, kv[0])))


def get_format(name: str) -> TrialFormat:
    from metaemb.core.plugin.manager import registry

    return registry("trial_formats").get(name)()


def format_label(name: str) -> str:
    """How messages name a trial-list format: "format 'x' (plugin 'p')", so a list misread by
    another plugin's format points at that plugin."""
    return f"format '{name}' (plugin '{_owner(name)}')"


def _owner(name: str) -> str:
    """The plugin that registered trial-list format `name`."""
    from metaemb.core.plugin.manager import registry

    formats_ = registry("trial_formats")
    return formats_.entry(name).plugin if name in formats_ else "?"


_REPEATS_SAID: set[str] = set()


def split_enroll(field: str, root: Path | None, where: str) -> tuple[str, ...]:
    """An enrollment field 'a,b,c' → checked relative paths, as listed (scores.txt keys each
    trial as its list does); a file named twice is said once per list, and pooled once when
    scored: it is no more evidence (a GME would sum it twice), as a gallery enrolls it once."""
    paths = tuple(safe_path(p, root, where) for p in field.split(","))
    listed = where.rsplit(":", 1)[0]
    if len(set(paths)) < len(paths) and listed not in _REPEATS_SAID:
        _REPEATS_SAID.add(listed)
        repeated = next(p for p in paths if paths.count(p) > 1)
        warnings.warn(
            f"{where}: the enrolment names '{repeated}' {paths.count(repeated)} times; each file "
            "is pooled once, as a gallery enrolls it. Further lines like it in this list are "
            "not reported.",
            stacklevel=2,
        )
    return paths


# ---------------------------------------------------------------------------------------------
# reading


def _refuse_binary(data: bytes, path: Path, what: str) -> None:
    """A pickle or a gzip file given as a list read as pages of garbage fields (and a pickle
    was called a triplet list): say what it is."""
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise DataError(
            f"{what} '{path}' is a binary Python pickle, not text. An InsightFace verification "
            f"pack (cfp_fp.bin, agedb_30.bin)? `metaemb unpack-bin {path} --out DIR` unpacks one "
            "into files and a pair list, without running code from it."
        )
    if data[:2] == b"\x1f\x8b":
        raise DataError(f"{what} '{path}' is gzip-compressed: decompress it first (gunzip).")


def read_list_text(path: Path, what: str) -> str:
    """A list file's text: UTF-8 (file names that are not valid UTF-8 come back as the same str
    os.listdir gives), without the byte-order mark some Windows editors write, or UTF-16 when
    it starts with a UTF-16 mark (PowerShell's `>` and Notepad's "Unicode" write that)."""
    from metaemb.core.files import MiB, read_bounded

    try:
        data = read_bounded(path, what, 1024 * MiB)
        _refuse_binary(data, path, what)
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return data.decode("utf-16")
        return data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what} '{path}': {exc}") from None


def read_lines(
    path: Path, tabs: bool = False, what: str = "trial list", items: str = "trials"
) -> list[tuple[int, list[str]]]:
    """Non-empty, non-comment lines as (line number, fields); with `tabs`, a line holding a tab
    is split at tabs only (so fields may contain spaces). `what` names the file in messages (a
    score file is read the same way) and `items` what it holds."""
    if path.is_dir():
        raise DataError(f"{what} '{path}' is a folder; give the file.")
    if not path.is_file():
        from metaemb.core.files import not_a_file

        kind = not_a_file(path)
        if kind:  # `--trials <(…)`: a list is read more than once, which a pipe cannot be
            raise DataError(f"{what} '{path}' is {kind}, not a file: save it to a file and "
                            "give that.")  # fmt: skip
        raise DataError(f"{what} '{path}' does not exist.")
    text = read_list_text(path, what)
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        fields = line.strip("\r\n").split("\t") if tabs and "\t" in line else line.split()
        if fields and not fields[0].startswith("#"):
            out.append((i, fields))
    if not out:
        raise DataError(f"{what} '{path}' holds no {items}.")
    return out


def looks_like_triplet(fields: Sequence[str]) -> bool:
    """A line of three paths (`anchor positive negative`), not a labelled pair."""
    labels = ("0", "1", *KALDI_LABELS)
    return len(fields) == 3 and fields[0] not in labels and fields[2] not in labels


def looks_like_header(fields: Sequence[str]) -> bool:
    """A line of column names (`label enroll test`), not of paths: no field holds a '/' or a
    '.', and none is a label."""
    return all(
        "/" not in f and "." not in f and f not in ("0", "1") and f.replace("_", "").isalpha()
        for f in fields
    )


def detect_format(path: str | Path) -> str:
    """The registered format whose `detect` accepts the first trial line of the file."""
    path = Path(path)
    lineno, f = read_lines(path)[0]
    known = formats()
    claims = [name for name, fmt in known.items() if _claims(name, fmt, f)]
    if claims:
        _warn_rival_claims(f"{path}:{lineno}", f, claims)
        return claims[0]
    expected = "; ".join(fmt.example or name for name, fmt in known.items()) or "(none registered)"
    scores = len(f) == 4 and f[2] in ("target", "nontarget")
    hint = " This looks like a scores.txt written by `metaemb evaluate`, not a trial list." if (
        scores) else ""  # fmt: skip
    if not hint and looks_like_header(f):
        hint = (f" Line {lineno} looks like a header (column names, no path): remove it; a trial "
                "list starts with its first trial.")  # fmt: skip
    if not hint:
        hint = _label_hint(f)
    if not hint:
        hint = next((h for fmt in known.values() if (h := _near_miss(fmt, f))), "")
    if not hint and looks_like_triplet(f):
        hint = (" This is a triplet list ('anchor positive negative'): score it with "
                "`metaemb evaluate --measure match`.")  # fmt: skip
    raise DataError(
        f"{path}:{lineno}: cannot tell the trial-list format from {' '.join(f)!r}; expected one "
        f"of: {expected}.{hint} Write the list in one of these formats (`metaemb trials make` "
        "does), or register a reader for yours (register_trial_formats)."
    )


def _near_miss(fmt: TrialFormat, fields: list[str]) -> str:
    """A format's own hint; one that fails or returns another type gives none (this runs only
    to word an error, which a plugin's bug must not replace)."""
    try:
        hint = fmt.near_miss(list(fields))
    except Exception:
        return ""
    return hint if isinstance(hint, str) else ""


def reads_as_label(fields: Sequence[str]) -> bool:
    """`2 a/1 b/1`: three fields whose first is no path (a path always holds '/' under a data
    root) and whose others are: a labelled pair with a bad label, not a triplet."""
    return len(fields) == 3 and "/" not in fields[0] and "/" in fields[1] and "/" in fields[2]


def _label_hint(fields: list[str]) -> str:
    """What is wrong with a first line that is a labelled pair with a bad label: `2 a/1 b/1`
    (a path always holds '/', a label does not) or Kaldi's `a/1 b/1 TARGET`."""
    if len(fields) != 3:
        return ""
    if fields[2].lower() in KALDI_LABELS and fields[2] not in KALDI_LABELS:
        return f" Kaldi's label '{fields[2]}' is written in lower case: target or nontarget."
    if reads_as_label(fields):
        return (f" Its first field '{fields[0]}' reads as a label: a VoxCeleb list's label is 1 "
                "(target) or 0 (non-target).")  # fmt: skip
    return ""


def claiming_formats(path: str | Path) -> list[str]:
    """The registered formats whose `detect` accepts the list's first line, in detect order
    (a plugin's 3-column format is a trial list, not a triplet list)."""
    _, f = read_lines(Path(path))[0]
    return [name for name, fmt in formats().items() if _claims(name, fmt, f)]


def _claims(name: str, fmt: TrialFormat, fields: list[str]) -> bool:
    """Whether format `name` accepts a first line; a `detect` that raises (a plugin's bug)
    claims nothing, with a warning naming the format and its plugin."""
    try:
        return bool(fmt.detect(fields))
    except Exception as exc:
        warnings.warn(
            f"trial-list {format_label(name)}: detect({fields!r}) raised "
            f"{type(exc).__name__}: {exc}; the format is skipped for this list.",
            stacklevel=3,
        )
        return False


def _warn_rival_claims(where: str, fields: list[str], claims: list[str]) -> None:
    """Several formats of different plugins accept a first line: say which one reads it, so a
    list misread after installing a plugin names that plugin (a plugin orders its own formats
    by `detect_order` on purpose: no warning among them)."""
    if len({_owner(n) for n in claims}) < 2:
        return
    names = ", ".join(f"'{n}' (plugin '{_owner(n)}')" for n in claims)
    warnings.warn(
        f"{where}: trial-list formats {names} all accept the first line "
        f"{' '.join(fields)!r}; it is read as '{claims[0]}' (lowest detect_order). If that is "
        "wrong, that format's `detect` claims other formats' lists.",
        stacklevel=3,
    )


def read_trials(
    path: str | Path, root: str | Path | None = None, format: str = "auto"
) -> list[Trial]:
    """Read a trial list ('auto' detects the format); trials come back in file order (a
    TrialList with `folds` when the format declares folds, and `read_as` naming the format,
    which every error about the list names too)."""
    path = Path(path)
    _REPEATS_SAID.discard(str(path))  # said once per reading of a list, not once per process
    name = detect_format(path) if format == "auto" else format
    fmt = _format_or_error(name)
    try:
        trials = fmt.read(path, Path(root) if root is not None else None)
    except DataError as exc:
        raise type(exc)(f"{_sentence(str(exc))} Read as trial-list {format_label(name)}.") from None
    except Exception as exc:  # a plugin format's bug: name it, not only a traceback line
        raise PluginError(
            f"trial-list {format_label(name)} failed reading '{path}': {type(exc).__name__}: {exc}"
        ) from exc
    who = f"trial-list {format_label(name)} reading '{path}'"
    given_root = Path(root) if root is not None else None
    trials = TrialList(
        relative_trials(checked_trials(trials, who), given_root, who),
        folds_of(trials),
        read_as=format_label(name),
        path=str(path),
    )
    warn_duplicates(trials, str(path))
    return trials


def _sentence(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith((".", "?", "!")) else text + "."


def _format_or_error(name: str) -> TrialFormat:
    from metaemb.core.errors import UnknownComponentError

    try:
        return get_format(name)
    except UnknownComponentError as exc:
        raise DataError(str(exc)) from None  # it names the format and the closest one


# ---------------------------------------------------------------------------------------------
# writing (atomically)


def write_lines(path: str | Path, lines: Sequence[str]) -> None:
    """Write text lines atomically (a reader never sees half a list)."""
    from metaemb.core.files import atomic_write_text

    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))


def join_enroll(paths: Sequence[str], leads_line: bool = True) -> str:
    """Paths as one field of a whitespace-separated list ('a,b'); refuses what it cannot hold.
    `leads_line`: the field starts a line, where a leading '#' would make it a comment."""
    for i, p in enumerate(paths):
        if not listable(p, leads_line and i == 0):
            hash_note = ", or start a line with '#'" if leads_line and i == 0 else ""
            raise DataError(
                f"cannot write path {p!r} in a whitespace-separated trial list: such lists "
                "separate columns by whitespace and enrollment files by ',', so a path may not "
                f"be empty or contain spaces or ','{hash_note}. Rename the file or folder."
            )
    return ",".join(paths)


def write_trials(path: str | Path, trials: Sequence[Trial], format: str, **options: Any) -> None:
    """Write `trials` in a registered format (options are the format's, e.g. a fold count)."""
    _format_or_error(format).write(Path(path), trials, **options)


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
