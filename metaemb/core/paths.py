"""Output paths checked before any work, and OS write errors turned into one-paragraph messages.

Every command that writes (train, evaluate, embed, enroll, identify, trials make, export) calls
`ensure_writable` on its outputs before it loads a model or reads data, so an unusable path (a
read-only folder, a file where a folder is needed, a folder where a file is needed, a full disk)
is reported at once instead of after minutes of embedding. Writes that still fail later (the disk
fills up mid-run) go through `output_error`, which names the file and the fix.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from metaemb.core.errors import ConfigError, DataError, OutputError

# OS errors a user fixes by choosing another output path or freeing space.
WRITE_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than this file system or process allows (ulimit -f)",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "a file is in the way of a folder",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.ELOOP: "a symbolic link in it loops",
}
EXAMPLE_NAMES = {  # a file name to suggest when a folder is given for one
    "gallery file": "gallery.pt",
    "embeddings file": "embeddings.pt",
    "trial list": "trials.txt",
    "results file": "results.tsv",
    "export file": "model.onnx",
    "metrics file": "metrics.json",
}
PROBE_BYTES = 4096  # written and fsynced by the probe, so a full disk shows up too


def is_write_error(exc: BaseException) -> bool:
    """True for the OS errors `output_error` explains (permissions, full disk, wrong kind)."""
    return isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS


def output_error(exc: OSError, path: str | Path, what: str = "output") -> OutputError:
    """An OutputError naming `path` with the cause and the fix."""
    if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.ELOOP):  # "a file in the way"?
        looped = loop_said(path, what)
        if looped is not None:
            return looped
    where = path
    cause = WRITE_ERRNOS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space, or write the output to another disk"
    elif exc.errno == errno.EFBIG:
        fix = "raise the limit (ulimit -f), or write the output to another file system"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = "remove or rename the file that is in the way, or choose another output path"
    elif exc.errno == errno.EISDIR:
        fix = "give a file name, not a folder"
    elif exc.errno == errno.EROFS:  # no permission fixes a read-only mount
        fix = "choose an output path on a writable disk"
    elif exc.errno == errno.ENAMETOOLONG:
        size = len(Path(path).name.encode("utf-8", "surrogateescape"))
        fix = f"choose a shorter name (this one is {size} bytes; file systems allow 255 per name)"
    else:
        fix = "choose a writable output path or fix the folder's permissions"
    return OutputError(f"cannot write the {what} '{where}': {cause}; {fix}.")


def _first_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path, path: Path, what: str) -> None:
    """Create, fill, fsync and remove a temporary file in `folder` (as atomic writes do). Its
    name carries the pid, so the probes of killed processes are swept as temps are."""
    from metaemb.core.files import remove_orphan_temps

    remove_orphan_temps(folder / "metaemb-probe")
    try:
        fd, tmp = tempfile.mkstemp(
            dir=folder, prefix=f".metaemb-probe.{os.getpid()}.", suffix=".tmp"
        )
    except OSError as exc:  # named by the file to be written (its folder is in its path)
        raise output_error(exc, path, what) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise output_error(exc, path, what) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _check_parents(path: Path, what: str) -> None:
    """Every existing ancestor of `path` must be a folder (not a file in the way)."""
    base = _first_existing(path)
    if base != path.absolute() and not base.is_dir():
        raise OutputError(
            f"cannot write the {what} '{path}': '{base}' is a file, not a folder; remove or "
            "rename it, or choose another output path."
        )


def refuse_looping_link(path: str | Path, what: str = "data folder") -> None:
    """A symbolic link that loops (`ln -s d d`, or two links naming each other) exists as a name
    but resolves to nothing: resolving it raised a traceback, and `exists()` said "does not
    exist". Said as what it is."""
    import errno

    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(
                f"{what} '{path}' is a symbolic link that loops (it points to itself, or around "
                f"a circle of links: {os.readlink(path) if os.path.islink(path) else '?'}); "
                "point it at the folder it stands for."
            ) from None


def looping_link(path: str | Path) -> Path | None:
    """The part of `path` (itself or a folder above it) that is a symbolic link looping back
    on itself, or None: such a name exists but resolves to nothing, so writes under it fail
    with EEXIST or ENOTDIR and `resolve()` raises."""
    p = Path(path).absolute()
    for part in (p, *p.parents):
        if os.path.islink(part):
            try:
                os.stat(part)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    return part
    return None


def loop_said(path: str | Path, what: str) -> OutputError | None:
    """The error for an output whose path goes through a looping link, or None."""
    loop = looping_link(path)
    if loop is None:
        return None
    return OutputError(
        f"cannot write the {what} '{path}': '{loop}' is a symbolic link that loops (it points "
        f"to itself, or around a circle of links: {os.readlink(loop)}); point it at a folder, "
        "or choose another output path."
    )


def recordable(path: str | Path, what: str) -> Path:
    """A path a run records in its config.toml (UTF-8 text): a name holding bytes that are not
    UTF-8 (a Latin-1 folder name, or any non-ASCII name under a C locale) cannot be written
    there, so it is refused by name instead of failing later."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ConfigError(
            f"the {what} '{shown}' has a name that is not UTF-8 text (a file name written under "
            "another encoding, or a non-ASCII name read under a C/POSIX locale); a run records "
            "it in config.toml, which is UTF-8. Rename it, or run with a UTF-8 locale "
            "(LANG=C.UTF-8)."
        ) from None
    return Path(path)


PACKED_SUFFIXES = (".tar", ".rec", ".idx")  # files that hold many samples (shards, RecordIO)


def data_path_exists(root: str | Path) -> bool:
    """Whether a data path names something: a folder or file, or a pattern of files
    (`shards/train-{000000..000099}.tar`, `shards/*.tar`) of which at least one exists."""
    text = str(root)
    refuse_looping_link(text, "data path")
    return Path(text).exists() or bool(pattern_matches(text))


def pattern_matches(pattern: str | Path) -> list[str]:
    """The existing paths a brace or glob pattern names, sorted ([] for a plain path)."""
    import glob

    text = str(pattern)
    if not any(c in text for c in "{*?["):
        return []
    from metaemb.core.data.tar_index import expand_braces

    found: set[str] = set()
    for p in expand_braces(text):
        found.update([p] if os.path.exists(p) else glob.glob(p))
    return sorted(found)


def names_packed_files(pattern: str | Path) -> bool:
    """Whether a pattern names files that hold many samples each (tar shards, RecordIO), as
    opposed to a pattern of sample files (`photos/*.png`)."""
    return any(Path(p).suffix.lower() in PACKED_SUFFIXES for p in pattern_matches(pattern))


def default_cache_dir() -> Path:
    """$METAEMB_CACHE, else ~/.cache/metaemb (demo data, frontend caches, manifests); an empty
    variable counts as unset, not as the working directory."""
    return Path(os.environ.get("METAEMB_CACHE") or Path.home() / ".cache" / "metaemb")


def refuse_inside(out: str | Path, root: str | Path | None, what: str) -> None:
    """An output folder inside a data folder would add its files to the data (a plot becomes a
    sample): refuse it before anything is written."""
    looped = loop_said(out, what)
    if looped is not None:
        raise looped
    if root is None or not Path(root).is_dir():
        return
    out_abs, root_abs = Path(out).resolve(), Path(root).resolve()
    if out_abs == root_abs or out_abs.is_relative_to(root_abs):
        raise OutputError(
            f"the {what} '{out}' is inside the data folder '{root}'; what is written there would "
            "be read back as data. Choose a folder outside it."
        )


def refuse_replacing_data_file(out: str | Path, root: str | Path, what: str) -> None:
    """An output file that already exists inside the data folder being read is part of the
    data (its landmark file, its trial list): refuse to replace it."""
    out = Path(out)
    if out.exists() and Path(root).is_dir() and out.resolve().is_relative_to(Path(root).resolve()):
        raise OutputError(
            f"the {what} '{out}' is an existing file inside the data folder '{root}'; writing "
            "there would replace part of the data. Choose a new file name, or a path outside the "
            "data folder."
        )


def ensure_writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Prove that folder `path` can be created (if missing) and written into; OutputError if not.
    Nothing is created: the probe file goes into the nearest existing folder and is removed."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(
            f"the {what} '{path}' is a file, not a folder; give a folder path (or remove the file)."
        )
    _check_parents(path, what)
    _probe(_first_existing(path), path, what)
    return path


def is_run_checkpoint(path: Path) -> bool:
    """An existing best.pt, last.pt or snapshot of a run folder (one holding config.toml)."""
    name = path.name
    is_ckpt = name in ("best.pt", "last.pt") or (
        name.startswith("snapshot-") and name.endswith(".pt")
    )
    return is_ckpt and path.is_file() and (path.parent / "config.toml").is_file()


RUN_FILES = (
    "config.toml", "metrics.jsonl", "train.log", "baseline.json", "skipped.txt", "training.png",
)  # fmt: skip
SAMPLE_SUFFIXES = frozenset(
    [
        ".png",
        ".jpg",
        ".jpeg",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".wav",
        ".flac",
        ".ogg",
        ".opus",
        ".mp3",
        ".m4a",
        ".aac",
        ".sph",
        ".npy",
    ]
)
# What an existing .pt file is, from its pickled index (tensors are not read): the marker each
# metaemb file kind writes, and the `what` of the outputs allowed to replace it.
_PT_KINDS = (
    (b"metaemb-gallery", "gallery", ("gallery file",)),
    (b"config_hash", "checkpoint", ()),
    (b"identities", "embeddings file", ("embeddings file",)),
)


def existing_kind(path: Path) -> tuple[str, tuple[str, ...]] | None:
    """(kind, outputs that may replace it) of an existing metaemb .pt file, or of an embeddings
    archive (.npz: `paths`, `identities` and `embeddings` or `a`/`b` arrays), else None."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            index = next((n for n in names if n.endswith("/data.pkl")), None)
            data = z.read(index) if index else b""
    except (OSError, zipfile.BadZipFile, KeyError, RuntimeError, ValueError):
        return None
    if {"paths.npy", "identities.npy"} <= names and (
        "embeddings.npy" in names or {"a.npy", "b.npy"} <= names
    ):
        return "embeddings file", ("embeddings file",)
    for marker, kind, replaceable_by in _PT_KINDS:
        if marker in data:
            return kind, replaceable_by
    return None


PLOT_SOFTWARE = "metaemb"  # the PNG text chunk `Software` of every plot metaemb draws


def is_our_plot(path: Path) -> bool:
    """A PNG that metaemb drew: its text chunk `Software` = PLOT_SOFTWARE (written before the
    pixel data, so the first KiB holds it). A new plot may replace it; nothing else."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    tag = b"Software\x00" + PLOT_SOFTWARE.encode()
    return head.startswith(b"\x89PNG\r\n\x1a\n") and tag in head


def _refuse_replacing_an_input(path: Path, what: str) -> None:
    """An output never replaces what metaemb reads: a run's own files, a checkpoint, a gallery
    or collection (unless the output is one), or a data sample."""
    if not path.is_file():
        return
    if is_run_checkpoint(path):
        raise OutputError(
            f"the {what} '{path}' is a checkpoint of the run in '{path.parent}'; writing there "
            "would destroy the trained model. Choose another output path."
        )
    if path.name in RUN_FILES and (path.parent / "config.toml").is_file():
        raise OutputError(
            f"the {what} '{path}' is the run's own {path.name} in '{path.parent}'; writing there "
            "would damage the run. Choose another output path."
        )
    if path.suffix.lower() in SAMPLE_SUFFIXES and not (what == "plot" and is_our_plot(path)):
        raise OutputError(
            f"the {what} '{path}' is an existing {path.suffix} file (a data sample or a probe?); "
            f"writing the {what} there would replace it. Choose another output path."
        )
    found = existing_kind(path)
    if found is not None and what not in found[1]:
        raise OutputError(
            f"the {what} '{path}' is an existing metaemb {found[0]}; writing the {what} there "
            "would replace it. Choose another output path (or delete the file first)."
        )


def refuse_replacing_another_file(
    path: str | Path, what: str, ours: Callable[[Path], bool], writer: str
) -> None:
    """An existing `path` that is not an earlier output of the same kind (`ours`) is refused:
    a results table written over a deployable model, its sidecar or an evaluation's
    metrics.json replaced it without a word."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        same = ours(path)
    except (OSError, ValueError):
        same = False
    if not same:
        raise OutputError(
            f"the {what} '{path}' exists and is not one that `{writer}` wrote (a model, an "
            "export's sidecar, another command's results?); writing there would replace it. "
            "Choose another output path (or delete the file first)."
        )


def _read_only_mount(path: Path) -> bool:
    """Whether `path` lies on a file system mounted read-only (os.access says only "no")."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def ensure_writable(path: str | Path, what: str = "output file") -> Path:
    """Prove that file `path` can be written atomically: not a folder, not read-only, not an
    input of metaemb's (see `_refuse_replacing_an_input`), its folder creatable and writable,
    its disk not full. Nothing is created or left behind."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(
            f"the {what} '{path}' is a folder; give a file name inside it (e.g. "
            f"'{path / EXAMPLE_NAMES.get(what, 'out')}')."
        )
    _check_parents(path, what)
    _refuse_replacing_an_input(path, what)
    if path.exists() and not os.access(path, os.W_OK):
        if _read_only_mount(path):  # chmod cannot help there
            raise OutputError(
                f"cannot write the {what} '{path}': its file system is mounted read-only; "
                "copy it to a writable disk, or choose another output path."
            )
        raise OutputError(
            f"cannot write the {what} '{path}': the file is read-only; make it writable or "
            "choose another output path."
        )
    _probe(_first_existing(path.parent), path, what)
    return path
