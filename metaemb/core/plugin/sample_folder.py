"""The sample folder: the component that lists a data root's samples and their identities, the
small data types it shares with trial lists (`Sample`, `Trial`), and the train/validation split.

A root holds `<identity>/…/<sample>` files; `identity_of` names a file's identity (its first
folder by default) and `subject_of` the person an identity belongs to. Scans are deterministic
(sorted), report empty identities and unknown roots by path, and split by subject so train and
validation identities are disjoint.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from metaemb.core.data.scan import (
    ScanState,
    scan_identity,
    scan_root_files,
    warn_parts_of_one_subject,
    warn_same_looking,
    warn_skipped,
)
from metaemb.core.errors import DataError, PluginError, first_few
from metaemb.core.plugin.contract import Kind


@dataclass(frozen=True)
class Sample:
    """One file of a SampleFolder: its path relative to the root, its identity and label index."""

    path: str
    identity: str
    label: int


@dataclass(frozen=True)
class Trial:
    """A verification trial: enrollment sample(s) vs a test sample; label 1 target, 0 non-target."""

    enroll: tuple[str, ...]
    test: str
    label: int | None = None


class EmptyIdentities(DataError):
    """Identity folders holding no sample file; `paths` are the samples of the others."""

    def __init__(
        self, message: str, paths: Sequence[str] = (), empty: Sequence[str] = ()
    ) -> None:  # (message) alone too: callers re-raise errors as type(exc)(longer message)
        super().__init__(message)
        self.paths, self.empty = list(paths), list(empty)


_empty_folders_skipped: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "empty_folders_skipped", default=False
)


@contextlib.contextmanager
def empty_folders_skipped() -> Iterator[None]:
    """Scans inside this block skip (with a warning) sub-folders that hold no sample file,
    where they are otherwise an error: scoring a trial list, only the files it names matter,
    and a corpus keeps its lists in a sub-folder of the folder it scores (CN-Celeb's
    `eval/lists`)."""
    token = _empty_folders_skipped.set(True)
    try:
        yield
    finally:
        _empty_folders_skipped.reset(token)


def refuse_repeated_samples(folder: Any) -> None:
    """A folder listing one file twice trains on it twice per epoch and, worse, its validation
    and generated trials compare the file with itself (a flattering score of 1)."""
    seen: set[str] = set()
    for s in folder.samples:
        if s.path in seen:
            from metaemb.core.plugin.components import described

            raise PluginError(
                f"{described(folder, 'sample folder')} lists '{s.path}' more than once "
                f"(of {len(folder.samples)} samples); each file must be one sample. Its list "
                "(`samples`) repeats entries."
            )
        seen.add(s.path)


# ---------------------------------------------------------------------------------------------
class SampleFolder(torch.utils.data.Dataset, abc.ABC):
    """A root of `<identity>/…/<sample>` files; the identity is the first path component.

    Scans deterministically (sorted), reports empty identities and unknown roots by path, and
    splits by subject so train and validation identities are disjoint.
    """

    extensions: ClassVar[tuple[str, ...]] = ()
    what: ClassVar[str] = "sample"  # word used in messages ("picture", "recording")
    # What `load` returns, e.g. Kind("waveform", rate=Opt("sample_rate")); None = undeclared.
    yields: ClassVar[Kind | None] = None
    # Constructor arguments that are not user options (`subset` passes the samples).
    internal: ClassVar[frozenset[str]] = frozenset({"samples"})
    # For a container format (one file of records, tar shards): the registered folder that
    # reads the same samples stored as plain files, which commands after training use for
    # loose files and folders that are not in the container format.
    plain: ClassVar[str] = ""

    def __init__(self, root: str | Path, samples: Sequence[Sample] | None = None) -> None:
        # absolute, as the path `load` gets: `path.relative_to(self.root)` works in a plugin
        # whatever the user typed as --data
        self.root = Path(os.path.abspath(root))  # `./B/../B` named as `B` in messages
        scanned = samples is None
        if samples is None:
            samples = self._scan()
        self.samples: list[Sample] = list(samples)
        self.identities: list[str] = sorted({s.identity for s in self.samples})
        if scanned:
            warn_same_looking(self.identities, self.root)
        index = {name: i for i, name in enumerate(self.identities)}
        # Labels are re-indexed so every subset has labels 0..n_identities-1.
        self.samples = [Sample(s.path, s.identity, index[s.identity]) for s in self.samples]

    # -- scanning ------------------------------------------------------------------------
    def _scan(self) -> list[Sample]:
        root = self.root
        from metaemb.core.paths import (
            PACKED_SUFFIXES,
            names_packed_files,
            pattern_matches,
            refuse_looping_link,
        )

        packed = (
            " It names packed files (tar shards?), which this sample folder does not read: "
            "name one that does (--folder NAME, or --set data.folder=NAME to train; "
            "`metaemb list sample_folders` lists them)."
        )
        if not root.exists():
            refuse_looping_link(root)
            matches = pattern_matches(root)  # a brace or glob pattern of existing files
            if matches and names_packed_files(root):
                raise DataError(f"data path '{root}' is a pattern of files, not a folder.{packed}")
            if matches:
                raise DataError(
                    f"data path '{root}' is a pattern of {len(matches)} files or folders "
                    f"('{matches[0]}', …), not a folder: give the folder holding the "
                    f"<identity>/<{self.what}> folders."
                )
            raise DataError(f"data folder '{root}' does not exist.")
        if not root.is_dir():
            hint = packed if root.suffix.lower() in PACKED_SUFFIXES else ""
            raise DataError(
                f"data path '{root}' is not a folder of <identity>/<{self.what}> files.{hint}"
            )
        exts = {e.lower() for e in self.extensions}
        if not exts:  # the scan would find nothing, and blame every identity folder for it
            raise PluginError(
                f"sample folder {type(self).__qualname__} declares no `extensions`, so scanning "
                f"'{root}' finds no file: give the suffixes of its files (extensions = "
                '(".npy",)), or list the samples itself and pass them to '
                "SampleFolder.__init__(root, samples) (as a folder reading an index does)."
            )
        # A large tree is listed once and reused while its directories are unchanged.
        from metaemb.core.data.manifest import cached_scan

        kind = f"{type(self).__module__}.{type(self).__qualname__}"
        try:
            paths = cached_scan(root, kind, exts, lambda: self._walk(root, exts))
        except EmptyIdentities as exc:  # never cached: a later training scan refuses them
            if not _empty_folders_skipped.get():
                raise
            warnings.warn(
                f"data folder '{root}': skipped {len(exc.empty)} sub-folder(s) holding no "
                f"{self.what} files ({first_few(exc.empty, 3)}); the trial list names the "
                "files scored.",
                stacklevel=2,
            )
            paths = exc.paths
        named = ((rel, self._checked_identity(rel)) for rel in paths)
        return [Sample(rel, identity, -1) for rel, identity in named if identity is not None]

    def _checked_identity(self, path: str) -> str | None:
        """`identity_of(path)`, refused unless it is None or a name: an identity of 3, b"u1"
        or "" would be sorted, printed and compared with the others as if it were one. An
        exception names the file it was asked about (else the user bisects the dataset)."""
        try:
            identity = self.identity_of(path)
        except AttributeError as exc:
            if exc.obj is self:  # an attribute set after super().__init__(): building says so
                raise
            raise DataError(  # `re.match(…).group(1)` on a name the pattern does not fit
                f"{type(self).__qualname__}.identity_of({path!r}) under '{self.root}' raised "
                f"AttributeError: {exc}"
            ) from exc
        except Exception as exc:
            raise DataError(
                f"{type(self).__qualname__}.identity_of({path!r}) under '{self.root}' raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if identity is None or (isinstance(identity, str) and identity.strip()):
            return identity
        raise PluginError(
            f"{type(self).__qualname__}.identity_of({path!r}) returned {identity!r:.60}; it must "
            "return the sample's identity as a non-empty str, or None to leave the file out."
        )

    def identity_of(self, path: str) -> str | None:
        """The identity of the sample at relative `path` (its first folder), or None to leave
        the file out. Override it for data whose folders hold other material too: skilled
        forgeries in `u001/forgery/…` become `u001/forgery` (an identity of their own, so a
        genuine-forgery trial is a non-target), or are left out of a training folder. A folder
        that overrides it over a root without sub-folders is asked about the files there (a
        flat layout whose file names carry the identity)."""
        return path.split("/", 1)[0]

    def subject_of(self, identity: str) -> str:
        """The person an identity belongs to: its first path component, so `u001/forgery` is
        u001's. Identities of one subject stay on one side of the train/validation split and
        count as seen in training together; override it when identity names say it otherwise."""
        return identity.split("/", 1)[0]

    def _walk(self, root: Path, exts: set[str]) -> tuple[list[str], list[str]]:
        """(relative sample paths, real paths of the folders listed): the full scan."""
        paths: list[str] = []
        empty: list[str] = []
        identity_dirs = sorted(
            p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        # Symlinks are followed, tracked by real path: no loops, aliases or duplicate files.
        state = ScanState(os.path.realpath(root))
        # A folder naming identities itself (`identity_of` overridden) over a root without
        # sub-folders reads the files there: a flat layout whose file names carry the identity.
        # Beside identity folders, a file in the root is the dataset's own (mean.npy, a preview).
        names_itself = type(self).identity_of is not SampleFolder.identity_of
        if names_itself and not identity_dirs:
            paths.extend(scan_root_files(root, exts, state))
        elif names_itself:
            self._warn_root_files_left_out(root, exts, identity_dirs)
        if not identity_dirs and not paths:
            from metaemb.core.paths import PACKED_SUFFIXES

            packed = sorted(p.name for p in root.iterdir()
                            if p.is_file() and p.name.lower().endswith(PACKED_SUFFIXES))  # fmt: skip
            hint = (
                f" It holds {len(packed)} packed file(s) ({first_few(packed, 2)}: tar shards?), "
                "which this sample folder does not read: name one that does (--folder NAME, or "
                "--set data.folder=NAME to train; `metaemb list sample_folders` lists them)."
                if packed
                else ""
            )
            raise DataError(
                f"data folder '{root}' has no identity sub-folders; expected <identity>/<{self.what}> "
                f"files with extensions {', '.join(sorted(exts))}.{hint}"
            )
        for ident_dir in identity_dirs:
            found = scan_identity(root, ident_dir, exts, state)
            if found is None:
                continue  # a link back to the root, or an alias of another identity folder
            if not found:
                empty.append(ident_dir.name)
            paths.extend(found)
        warn_skipped(root, state, self.what)
        if empty:
            shown = first_few(root / e for e in empty)
            linked = [f"'{a}' = '{b}'" for a, b in state.duplicates if a.split("/")[0] in empty]
            why = (
                f" Their {self.what}s are links to files of other identities ({first_few(linked, 3, quote=False)}), "
                "kept once under the first name: one file cannot belong to two identities."
                if linked
                else ""
            )
            raise EmptyIdentities(
                f"{len(empty)} identity folder(s) under '{root}' contain no {self.what} files "
                f"({', '.join(sorted(exts))}): {shown}.{why} Remove them or add {self.what}s.",
                paths,
                empty,
            )
        return paths, sorted(state.dirs)

    def _warn_root_files_left_out(self, root: Path, exts: set[str], dirs: list[Path]) -> None:
        """Sample files directly in a root that also has sub-folders are not read (a dataset's
        own mean.npy); many of them are a flat layout that a stray folder (lost+found, a link)
        switched off: say how many, and which folders did it."""
        with os.scandir(root) as entries:
            left = sorted(e.name for e in entries if not e.name.startswith(".")
                          and os.path.splitext(e.name)[1].lower() in exts and e.is_file())  # fmt: skip
        if left:
            warnings.warn(
                f"data folder '{root}': {len(left)} {self.what}(s) directly in it are not "
                f"read ({first_few(left, 3)}): a folder naming identities itself reads the "
                "root's files only when the root has no sub-folders, and it has "
                f"{len(dirs)} ({first_few([d.name for d in dirs], 3)}).",
                stacklevel=3,
            )

    # -- structure -----------------------------------------------------------------------
    @property
    def num_identities(self) -> int:
        return len(self.identities)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def by_identity(self) -> dict[int, list[int]]:
        """label → indices of its samples, in scan order."""
        index: dict[int, list[int]] = {}
        for i, s in enumerate(self.samples):
            index.setdefault(s.label, []).append(i)
        return index

    def subset(self, identities: Sequence[str]) -> SampleFolder:
        """A folder of the same kind restricted to some identities (labels re-indexed)."""
        keep = set(identities)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        SampleFolder.__init__(new, self.root, [s for s in self.samples if s.identity in keep])
        return new

    def split(self, val_fraction: float, seed: int = 0) -> tuple[SampleFolder, SampleFolder]:
        """Split by subject into disjoint (train, validation) folders, deterministically: all
        identities of one subject (`subject_of`) fall on the same side, so a user's forgeries
        never train while the user's genuine samples validate."""
        subjects: dict[str, list[str]] = {}
        for name in self.identities:  # sorted, so subjects come in a fixed order
            subjects.setdefault(self._checked_subject(name), []).append(name)
        groups = list(subjects.values())
        if len(groups) == self.num_identities:  # one identity per subject: maybe by default
            warn_parts_of_one_subject(self.identities, f"data folder '{self.root}'")
        n_val = max(2, round(len(groups) * val_fraction))
        if len(groups) - n_val < 2:
            what = "identities" if len(groups) == self.num_identities else "subjects"
            raise DataError(
                f"data folder '{self.root}' has {len(groups)} {what}: too few to hold out "
                f"{n_val} for validation and train on the rest (need at least {n_val + 2})."
            )
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(groups), generator=g).tolist()
        val = sorted(name for i in order[:n_val] for name in groups[i])
        train = sorted(name for i in order[n_val:] for name in groups[i])
        return self.subset(train), self.subset(val)

    def _checked_subject(self, identity: str) -> str:
        subject = self.subject_of(identity)
        if isinstance(subject, str) and subject.strip():
            return subject
        raise PluginError(
            f"{type(self).__qualname__}.subject_of({identity!r}) returned {subject!r:.60}; it "
            "must return the name of the person the identity belongs to as a non-empty str."
        )

    def abspath(self, sample: Sample | str) -> Path:
        """The absolute path `load` gets (docs/plugins.md promises it absolute, also where
        --data was typed relative; a subclass may have set `root` after the base class)."""
        root = self.root if self.root.is_absolute() else Path(os.path.abspath(self.root))
        return root / (sample.path if isinstance(sample, Sample) else sample)

    def source_of(self, sample: Sample) -> str:
        """The file a sample is read from, resolved: what a gallery remembers it by, so the
        same file enrolled through two folders, or probed after enrolling, is recognised.
        Override it when samples are not files of their own (a segment of a recording)."""
        return str(self.abspath(sample).resolve())

    # -- loading -------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self, path: Path) -> Any:
        """Read one raw sample; raise DataError naming the path when it is unreadable."""

    @classmethod
    def examples(cls) -> list[Any]:
        """A few synthetic raw samples of the kind `load` returns, of different lengths where
        the kind varies in length; metaemb's conformance test feeds them to the features and
        backbones that take this kind (a new kind of data is otherwise skipped there)."""
        return []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        s = self.samples[i]
        return self.load(self.abspath(s)), s.label
