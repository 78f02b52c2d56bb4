"""Scanning `<root>/<identity>/…/<sample>` trees safely in the presence of symbolic links.

Symlinks are common in real datasets (a dataset assembled from folders on other disks), so they
are followed, but every folder and file is tracked by its real path:

- a folder whose real path is the data root or one of its ancestors (`ln -s . root/zz`,
  `ln -s .. root/id/up`) is skipped: following it would loop, or turn the whole dataset into a
  phantom identity holding a copy of every sample;
- a folder already scanned under another name (an alias of an identity folder) is skipped;
- a file already found under another name (a symlink to a sample, inside or outside the root,
  or a hard link) is kept once, at its first path in sorted order: a sample paired with its own copy would be a
  target trial labelled non-target, or vice versa.

Every skip is counted and reported once as a warning naming the first few paths.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metaemb.core.errors import first_few


@dataclass
class ScanState:
    """Real paths seen so far and what was skipped (shared by all identities of one scan)."""

    root_real: str
    dirs: set[str] = field(default_factory=set)
    files: dict[str, str] = field(default_factory=dict)  # real path → first relative path
    inodes: dict[int, str] = field(default_factory=dict)  # inode → real path (hard links)
    loops: list[str] = field(default_factory=list)  # relative folders pointing at the root/above
    aliases: list[str] = field(default_factory=list)  # relative folders already scanned
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (skipped, kept) files
    dangling: list[str] = field(default_factory=list)  # symlinks to nothing
    special: list[str] = field(default_factory=list)  # FIFOs, sockets, devices named as samples
    other: list[str] = field(default_factory=list)  # files of suffixes the folder does not read


#: Suffixes of files that sit beside samples without being one (lists, tables, sidecars,
#: notes): left out without a word. A file of any other suffix left out is warned about.
COMPANIONS = frozenset(
    {".txt", ".json", ".csv", ".tsv", ".xml", ".yaml", ".yml", ".md", ".lst", ".log", ".db",
     ".ini", ".scp", ".pts", ".lab", ".textgrid", ".sha256", ".md5", ".h5", ".hdf5"}
)  # fmt: skip


def _suffix(name: str) -> str:
    """Lower-case extension as Path.suffix gives it ('' for '.hidden' and 'name.')."""
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def _is_ancestor_or_same(folder: str, path: str) -> bool:
    """True when real path `folder` is `path` or contains it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def scan_identity(
    root: Path, ident_dir: Path, exts: set[str], state: ScanState
) -> list[str] | None:
    """Sample paths (POSIX, relative to `root`, sorted depth-first) under one identity folder,
    or None when the folder itself is skipped (a loop back to the root, or an alias)."""
    found: list[str] = []
    stack = [ident_dir]
    first = True
    while stack:
        folder = stack.pop()
        rel_dir = folder.relative_to(root).as_posix()
        real = os.path.realpath(folder)
        if _is_ancestor_or_same(real, state.root_real):
            state.loops.append(rel_dir)
            if first:
                return None
            continue
        if real in state.dirs:
            state.aliases.append(rel_dir)
            if first:
                return None
            continue
        state.dirs.add(real)
        first = False
        files, subdirs = _list_folder(folder, rel_dir + "/", real, exts, state)
        found.extend(files)
        # Files of a folder first, then its sub-folders in name order (depth first).
        stack.extend(reversed(subdirs))
    return found


def _list_folder(
    folder: Path,
    rel_dir: str,
    real: str,
    exts: set[str],
    state: ScanState,
    note_others: bool = True,
) -> tuple[list[str], list[Path]]:
    """(the sample files of one folder as `rel_dir` + name, its sub-folders), in name order.
    Links to nothing, FIFOs and second names of one file are noted in `state`, not listed; so
    are files of other suffixes, with `note_others`."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return [], []  # unreadable folder: nothing to list (a missing sample is reported at load)
    found: list[str] = []
    subdirs: list[Path] = []
    prefix = real + os.sep
    for e in entries:
        try:
            is_dir = e.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        if is_dir:
            if not e.name.startswith("."):
                subdirs.append(Path(e.path))
        elif e.name[0] != "." and _suffix(e.name) not in exts:
            if note_others and _suffix(e.name) not in COMPANIONS and _regular(e):
                state.other.append(f"{rel_dir}{e.name}")  # a .gif among .png: said
        elif _suffix(e.name) in exts and e.name[0] != ".":  # hidden (macOS '._x.png') files
            # are not samples, like hidden folders; plain str operations: a tree may hold
            # millions
            rel = f"{rel_dir}{e.name}"
            if e.is_symlink() and not os.path.exists(e.path):
                state.dangling.append(rel)  # a link to nothing is not a sample
                continue
            if not _regular(e):  # reading a FIFO would wait for a writer forever
                state.special.append(rel)
                continue
            real_file = os.path.realpath(e.path) if e.is_symlink() else prefix + e.name
            real_file = _hard_link_of(e, real_file, state)
            kept = state.files.get(real_file)
            if kept is not None:
                state.duplicates.append((rel, kept))
                continue
            state.files[real_file] = rel
            found.append(rel)
    return found, subdirs


def scan_root_files(root: Path, exts: set[str], state: ScanState) -> list[str]:
    """Sample files directly in `root` (not in a sub-folder), for a folder that names each
    file's identity itself (a flat Market-1501 part: `0002_c1s1_000451_03.jpg`). Other files
    there are a dataset's own (RECORDS, README, checksums), not samples of another format: not
    warned about."""
    return _list_folder(root, "", state.root_real, exts, state, note_others=False)[0]


def _regular(entry: os.DirEntry) -> bool:
    """A regular file (through a symlink too); the listing's file type answers without a stat."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _hard_link_of(entry: os.DirEntry, real_file: str, state: ScanState) -> str:
    """The real path of the file first found with this one's inode on the same device (a hard
    link: one file under two names, as `cp -l` and rsync --link-dest trees make), else
    `real_file`. The inode comes with the directory listing; only a repeated one costs a stat."""
    try:
        inode = entry.inode()
    except OSError:
        return real_file
    first = state.inodes.setdefault(inode, real_file)
    if first == real_file:
        return real_file
    try:
        same = os.path.samefile(first, real_file)
    except OSError:
        return real_file
    return first if same else real_file


def warn_skipped(root: Path, state: ScanState, what: str) -> None:
    """One warning per kind of skip, naming the first few paths."""
    if state.loops:
        warnings.warn(
            f"data folder '{root}': skipped {len(state.loops)} symlinked folder(s) that point at "
            f"the data root or above it ({first_few(state.loops, 3)}); they would loop or "
            "duplicate the whole dataset. Remove the links.",
            stacklevel=3,
        )
    if state.aliases:
        warnings.warn(
            f"data folder '{root}': skipped {len(state.aliases)} folder(s) that are symlinks to "
            f"folders already scanned ({first_few(state.aliases, 3)}).",
            stacklevel=3,
        )
    if state.dangling:
        warnings.warn(
            f"data folder '{root}': skipped {len(state.dangling)} symlink(s) that point at "
            f"nothing or form a loop ({first_few(state.dangling, 3)}).",
            stacklevel=3,
        )
    if state.special:
        warnings.warn(
            f"data folder '{root}': skipped {len(state.special)} {what} name(s) that are not "
            f"regular files (a FIFO, socket or device: {first_few(state.special, 3)}); reading "
            "one would wait forever. Remove them.",
            stacklevel=3,
        )
    if state.other:
        from collections import Counter

        counts = Counter(_suffix(rel.rsplit("/", 1)[-1]) or "(no suffix)" for rel in state.other)
        kinds = ", ".join(f"{k} ×{n}" for k, n in sorted(counts.items()))
        warnings.warn(
            f"data folder '{root}': left out {len(state.other)} file(s) whose suffix the "
            f"{what} folder does not read ({kinds}; {first_few(state.other, 3)}). If they are "
            f"{what}s, convert or rename them to a suffix it reads.",
            stacklevel=3,
        )
    if state.duplicates:
        pairs = [f"{a} = {b}" for a, b in state.duplicates]
        warnings.warn(
            f"data folder '{root}': skipped {len(state.duplicates)} {what}(s) that are links to "
            f"{what}s already found under another name ({first_few(pairs, 3)}); each file "
            "counts once.",
            stacklevel=3,
        )


def warn_same_looking(identities: Sequence[str], root: Path) -> None:
    """Two identity folders whose names print alike but are two identities: they differ only
    in Unicode form (NFC and NFD, e.g. one copied from macOS), in invisible characters (a
    zero-width space, a right-to-left mark), in compatibility forms (`Ａnna`, `Anna`) or in case (`Ali`, `ali`: one folder on a
    case-insensitive disk). Said once per kind and scan."""
    import unicodedata

    def invisible(name: str) -> str:  # format characters (Cf) removed, blanks of any kind one
        shown = unicodedata.normalize("NFC", name)
        kept = (" " if unicodedata.category(c) == "Zs" else c for c in shown)  # no-break space
        return " ".join("".join(c for c in kept if unicodedata.category(c) != "Cf").split())

    kinds = (
        (lambda n: unicodedata.normalize("NFC", n), "only in Unicode form (NFC and NFD) and "
         "print alike"),
        (invisible, "only in invisible characters or blanks (zero-width or direction marks, a "
         "no-break or trailing space) and print alike"),
        (lambda n: invisible(unicodedata.normalize("NFKC", n)), "only in compatibility "
         "forms (full-width letters, ligatures, superscripts), which look alike"),
        (lambda n: unicodedata.normalize("NFC", n).casefold(), "only in case, and are one "
         "folder once copied to a case-insensitive disk (macOS, Windows)"),
    )  # fmt: skip
    said: set[tuple[str, str]] = set()
    for key, how in kinds:
        seen: dict[str, str] = {}
        pairs = []
        for name in identities:
            first = seen.setdefault(key(name), name)
            if first != name and (first, name) not in said:
                said.add((first, name))
                pairs.append((first, name))
        if pairs:
            first, name = pairs[0]
            more = f" ({len(pairs) - 1} more such pair(s))" if len(pairs) > 1 else ""
            warnings.warn(
                f"'{root}' has two identity folders named {first!r} and {name!r}, which differ "
                f"{how}; they are two identities{more}. Merge or rename one.",
                stacklevel=3,
            )


_PART = re.compile(r"^(.*[^_\-.])[_\-.]([^_\-.]+)$")


def warn_parts_of_one_subject(identities: Sequence[str], where: str) -> None:
    """Identities named `<person><sep><part>` from a few parts (`p003_left`, `p003_right`) are
    most likely parts of one person; with the default subject (the whole name) the split may
    put a person's parts on both sides, so say how to keep them together."""
    stems: dict[str, list[str]] = {}
    parts: set[str] = set()
    for name in identities:
        m = _PART.match(name)
        if m is None:
            return
        stems.setdefault(m.group(1), []).append(name)
        parts.add(m.group(2))
    grouped = [names for names in stems.values() if len(names) > 1]
    numbered = all(part.isdigit() for part in parts)  # person_1 … person_6: a naming prefix
    if numbered or len(stems) < 2 or not 2 <= len(parts) <= 6:
        return
    if sum(map(len, grouped)) < 0.8 * len(identities):
        return
    warnings.warn(
        f"the {len(identities)} identities of {where} look like parts of {len(stems)} "
        f"persons ({first_few(grouped[0], 2)}): the "
        "train/validation split keeps each identity's samples together, not each person's. "
        "If they are parts of one person, the sample folder needs a subject_of that names the "
        "person (docs/plugins.md), so a person is never on both sides.",
        stacklevel=3,
    )
