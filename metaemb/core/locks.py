"""One writer at a time: an exclusive lock on a run folder (one trainer per run) or on one
output file that is read, extended and rewritten (a gallery).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from metaemb.core.errors import MetaembError
from metaemb.core.files import FILE_MODE, hidden_stem, process_alive


class RunInProgress(MetaembError):
    """Another live process trains in this run directory."""


LOCK_NAME = ".lock"


def _flock_soon(fd: int, mode: int, tries: int = 5) -> bool:
    """Take flock `mode` without waiting, trying a few times 20 ms apart: `metaemb runs`
    holds a shared lock for an instant to see whether a run is being trained."""
    import fcntl
    import time

    for attempt in range(tries):
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except OSError:
            if attempt + 1 < tries:
                time.sleep(0.02)
    return False


def holder(path: Path) -> int | None:
    """The pid of a process holding the lock file `path`, or None. Where locks are `flock`s the
    kernel says whether one is held (a killed holder's file may name a pid reused since): a
    shared lock is tried and dropped at once (a holder starting meanwhile retries)."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the pid decides
        return pid if pid != os.getpid() and process_alive(pid) else None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return pid  # held
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """An exclusive lock on a run directory: `<run>/.lock` holds the owner's pid.

    With fcntl (Linux, macOS) the lock is a `flock` on that file, released by the kernel when the
    process dies however it dies, so a lock file left by a killed trainer is simply taken over.
    Elsewhere the pid in the file decides: a lock whose process is gone is stale and replaced.
    """

    #: what the lock is called when it cannot be written
    lock_name = "run-folder lock"

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise RunInProgress naming the live owner's pid (OutputError when
        the run folder cannot be written at all)."""
        try:
            return self._acquire()
        except OSError as exc:
            from metaemb.core.paths import is_write_error, output_error

            if is_write_error(exc):
                raise output_error(exc, *self._written()) from None
            raise

    def _written(self) -> tuple[Path, str]:
        """(path, what) a lock that cannot be written names: the run folder's lock here."""
        return self.path, self.lock_name

    def _acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            self._acquire_by_pid()
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            if not _flock_soon(fd, fcntl.LOCK_EX):
                os.close(fd)
                self._refuse(self._owner())
            try:  # the holder may have released (and unlinked) the file meanwhile: retry
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _acquire_by_pid(self) -> None:  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and process_alive(owner) and owner != os.getpid():
                    self._refuse(owner)
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return
        self._refuse(self._owner())

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _refuse(self, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "another process"
        raise RunInProgress(
            f"run in progress ({who}): '{self.path.parent}' is being trained by another process. "
            "Wait for it to finish (or stop it), or change the configuration or --set name=… to "
            "train a separate run."
        )

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)  # still ours: nobody else can hold the flock
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_name(target: Path) -> str:
    """`.<name>.lock`, as every metaemb names it, or, where that would pass the 255-byte name
    limit (names of 250–255 bytes), `.metaemb-<digest of the name>.lock`."""
    plain = f".{target.name}.lock"
    if len(plain.encode("utf-8", "surrogateescape")) <= 255:
        return plain
    return f"{hidden_stem(target)}.lock"


class FileLock(RunLock):
    """An exclusive lock on one output file that a command reads, extends and rewrites (a
    gallery): `.<name>.lock` beside it, so two writers never drop each other's additions."""

    def __init__(self, target: Path, what: str, shown: Path | None = None) -> None:
        real = Path(os.path.realpath(target))  # one lock for the file, whatever link names it
        super().__init__(real.parent)
        self.target, self.what = Path(target), what
        self.path = real.parent / lock_name(real)
        # what refusals name: the target, or what it stands for (a folder's `evaluating`)
        self.shown = Path(shown or target)
        self.named = f"{what} '{self.shown}'"

    def _written(self) -> tuple[Path, str]:
        """A lock that cannot be written is named by what it guards (the export, the gallery),
        not by its hidden file, which nobody asked for."""
        return self.shown, self.what

    def _refuse(self, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "another process"
        raise RunInProgress(
            f"{self.named} is being written by {who}; wait for it to finish, then run this "
            "again (two writers at once would mix or drop each other's files)."
        )
