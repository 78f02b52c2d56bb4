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
from pathlib import Path

from metaemb.core.errors import OutputError

# OS errors a user fixes by choosing another output path or freeing space.
WRITE_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "a file is in the way of a folder",
    errno.ENAMETOOLONG: "the file name is too long",
}
EXAMPLE_NAMES = {  # a file name to suggest when a folder is given for one
    "gallery file": "gallery.pt",
    "embeddings file": "embeddings.pt",
    "trial list": "trials.txt",
    "results file": "results.tsv",
    "export file": "model.onnx",
}
PROBE_BYTES = 4096  # written and fsynced by the probe, so a full disk shows up too


def is_write_error(exc: BaseException) -> bool:
    """True for the OS errors `output_error` explains (permissions, full disk, wrong kind)."""
    return isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS


def output_error(exc: OSError, path: str | Path, what: str = "output") -> OutputError:
    """An OutputError naming `path` with the cause and the fix."""
    where = path
    cause = WRITE_ERRNOS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space, or write the output to another disk"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = "remove or rename the file that is in the way, or choose another output path"
    elif exc.errno == errno.EISDIR:
        fix = "give a file name, not a folder"
    else:
        fix = "choose a writable output path or fix the folder's permissions"
    return OutputError(f"cannot write the {what} '{where}': {cause}; {fix}.")


def _first_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path, path: Path, what: str) -> None:
    """Create, fill, fsync and remove a temporary file in `folder` (as atomic writes do)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".metaemb-probe.", suffix=".tmp")
    except OSError as exc:
        raise output_error(exc, folder, what) from None
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


def ensure_writable(path: str | Path, what: str = "output file") -> Path:
    """Prove that file `path` can be written atomically: not a folder, not read-only, its folder
    creatable and writable, its disk not full. Nothing is created or left behind."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(
            f"the {what} '{path}' is a folder; give a file name inside it (e.g. "
            f"'{path / EXAMPLE_NAMES.get(what, 'out')}')."
        )
    _check_parents(path, what)
    if is_run_checkpoint(path):
        raise OutputError(
            f"the {what} '{path}' is a checkpoint of the run in '{path.parent}'; writing there "
            "would destroy the trained model. Choose another output path."
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(
            f"cannot write the {what} '{path}': the file is read-only; make it writable or "
            "choose another output path."
        )
    _probe(_first_existing(path.parent), path, what)
    return path
