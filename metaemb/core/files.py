"""Files written whole or not at all: atomic replace (temp file, fsync, rename), sets of files
replaced together, and the temps a killed writer leaves behind.

Every output of metaemb (checkpoints, configs, galleries, scores, exports) goes through
`atomic_write_bytes`, so a reader never sees half a file and an interrupted write leaves the
previous file as it was.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a temp's or a lock's writer)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


_deferred: contextvars.ContextVar[list[tuple[str, Path]] | None] = contextvars.ContextVar(
    "deferred_renames", default=None
)


@contextlib.contextmanager
def written_together() -> Iterator[None]:
    """Inside this block, `atomic_write_bytes` writes and fsyncs each file's temp copy but
    renames none: they are all renamed when the block ends, in the order written, or all
    removed when it raises. A set of outputs (metrics, scores, plots) is then replaced as a
    whole: a disk that fills up half-way leaves the previous set, not new metrics beside old
    plots. The file written last is the set's marker (metrics.json, an export's model): its
    previous version is removed before the others are renamed and it is renamed last, so a
    process killed among the renames leaves a set without its marker (its files new up to the
    kill, the others the previous set's), never one read as complete."""
    pending: list[tuple[str, Path]] = []
    token = _deferred.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _deferred.reset(token)
    if len(pending) > 1:
        pending[-1][1].unlink(missing_ok=True)
    rewritten = {path for tmp, path in pending if tmp}
    for tmp, path in pending:
        if tmp:
            os.replace(tmp, path)
        elif path not in rewritten:  # a `remove_with_set` of a file the new set has no
            # version of; one it writes again is replaced by its rename, never missing
            path.unlink(missing_ok=True)


def remove_with_set(path: Path) -> None:
    """Remove `path` as part of the set being written (`written_together`): when the set is
    renamed into place, not before, so a write that fails leaves the previous set whole."""
    pending = _deferred.get()
    if pending is None:
        path.unlink(missing_ok=True)
    else:
        pending.append(("", path))


def hidden_stem(path: Path) -> str:
    """`.<name>`, or `.metaemb-<digest of the name>` for a name so long (over 200 bytes) that
    the extra characters of a temp or lock beside it would pass the 255-byte name limit."""
    if len(path.name.encode("utf-8", "surrogateescape")) <= 200:
        return f".{path.name}"
    import hashlib

    return ".metaemb-" + hashlib.sha1(path.name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _temp_prefix(path: Path) -> str:
    """`.<name>.<pid>.`: a temp copy names the process writing it, so one left by a killed
    process is told from one being written now (`remove_orphan_temps`)."""
    return f"{hidden_stem(path)}.{os.getpid()}."


def remove_orphan_temps(path: Path) -> None:
    """Delete the temp copies of `path` that killed processes left beside it: an output written
    again and again (a gallery, an export) would otherwise gather one full-size copy per kill.
    A temp whose writer is alive, or that changed in the last minute (its writer may be
    another machine sharing the folder), is left alone; one without a pid (an older metaemb)
    once it is a day old."""
    import glob
    import time

    stem = hidden_stem(path)
    # `.<name>.<pid>.<random>.tmp` (mkstemp's random part has no dot) or, from an older
    # metaemb, `.<name>.<random>.tmp`: a sibling `<name>.7000`'s temps never match
    ours = re.compile(rf"^{re.escape(stem)}\.(?:(\d+)\.)?[^.]+\.tmp$")

    def orphaned(name: str, writer: str | None) -> bool:
        age = time.time() - os.path.getmtime(name)
        if writer is not None:
            return age > 60 and not process_alive(int(writer))
        return age > 86400

    for name in glob.glob(glob.escape(str(path.parent / f"{stem}.")) + "*.tmp"):
        m = ours.match(Path(name).name)
        try:
            if m and orphaned(name, m.group(1)):
                os.unlink(name)
        except OSError:
            continue


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file.

    A read-only folder, a full disk or a file/folder in the way raises OutputError naming `path`
    (the previous file, if any, is left as it was)."""
    from metaemb.core.paths import is_write_error, output_error

    if path.is_symlink():  # write the file the link names, as `>` would; keep the link
        path = Path(os.path.realpath(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphan_temps(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    except OSError as exc:
        if is_write_error(exc):
            raise output_error(exc, path, "file") from None
        raise
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        pending = _deferred.get()
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((tmp, path))
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_write_error(exc):
            raise output_error(exc, path, "file") from None  # type: ignore[arg-type]
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8, with file names that are not valid UTF-8 written back as their original bytes."""
    atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


MiB = 1 << 20


def not_a_file(path: Path) -> str:
    """What `path` is when it exists and is no regular file ("a pipe", "a device", "a folder"),
    else "" — for a message that does not call a FIFO or /dev/zero missing."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def read_bounded(
    path: Path, what: str, limit: int, pipes: bool = False, kind: str | None = None
) -> bytes:
    """The bytes of a small input file (a config, a list of names), refused when it is a
    device, a folder, a pipe (unless `pipes`) or larger than `limit`: /dev/zero given as a
    config was read until the kernel killed the process. Raises MetaembError naming it as
    `what` ("--identities-file"); `kind` says what such a file is ("list of names")."""
    from metaemb.core.errors import MetaembError

    special = not_a_file(path)
    if special and not (pipes and special == "a pipe"):
        raise MetaembError(f"{what} '{path}' is {special}, not a file: give a file.")
    size = path.stat().st_size
    if size > limit:
        raise MetaembError(
            f"{what} '{path}' holds {size / MiB:.0f} MiB, more than a {kind or what} holds (at most "
            f"{limit // MiB} MiB): is it the right file?"
        )
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # a pipe that does not end
        raise MetaembError(
            f"{what} '{path}' gave more than {limit // MiB} MiB: is it the right input?"
        )
    return data
