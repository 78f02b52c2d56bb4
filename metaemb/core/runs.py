"""Run directories keyed by the resolved config, atomic full-state checkpoints, and run locks.

`runs/<modality>/<name>-<hash8>/` holds config.toml, last.pt, best.pt, metrics.jsonl and reports.
Two configurations never share a directory; re-running the same command resumes from last.pt.
One trainer at a time holds a run directory (`RunLock`); a lock left by a dead process is taken
over.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

import metaemb
from metaemb.core.config import Config
from metaemb.core.errors import ConfigError, MetaembError

CHECKPOINT_FORMAT = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def run_dir(runs_root: str | Path, config: Config) -> Path:
    return Path(runs_root) / config.modality / f"{config.name}-{config.hash()}"


def related_runs(
    runs_root: str | Path, config: Config
) -> tuple[Path | None, tuple[Path, str] | None]:
    """Run folders of the same name that hold this same configuration under another hash, in
    one scan (both None when this run's own folder exists):
    - an earlier run: its config.toml, read by this version, is this configuration, though an
      earlier metaemb hashed it otherwise (e.g. before composites took nested tables);
    - (a run, its --data) of this configuration on the same data folder given another way
      (`face` and `$PWD/face`, a symlink): runs are keyed by the path as typed."""
    import os
    import warnings

    from metaemb.core.config import from_dict
    from metaemb.core.config.toml_io import load_toml

    here = run_dir(runs_root, config)
    if here.exists():
        return None, None
    digest, mine = config.hash(), ""
    if config.data.root:
        mine = os.path.realpath(config.data.root_absolute or config.data.root)
    earlier: Path | None = None
    twin: tuple[Path, str] | None = None
    for folder in sorted(here.parent.glob(f"{config.name}-*")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                other = from_dict(load_toml(folder / "config.toml"))
                same_form = len(folder.name) == len(here.name)
                if earlier is None and same_form and other.hash() == digest:
                    earlier = folder
                    continue
                typed = other.data.root
                if twin is None and mine and typed and typed != config.data.root:
                    same_data = os.path.realpath(other.data.root_absolute or typed) == mine
                    other.data.root, other.data.root_absolute = config.data.root, ""
                    if same_data and other.hash() == digest:
                        twin = (folder, typed)
        except (MetaembError, OSError):
            continue
    return earlier, twin


def earlier_equivalent_run(runs_root: str | Path, config: Config) -> Path | None:
    """The earlier run of `related_runs`: this same configuration, another hash."""
    return related_runs(runs_root, config)[0]


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
    process killed among the renames leaves a set without its marker, never a mixed one."""
    pending: list[tuple[str, Path]] = []
    token = _deferred.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _deferred.reset(token)
    if len(pending) > 1:
        pending[-1][1].unlink(missing_ok=True)
    for tmp, path in pending:
        os.replace(tmp, path)


def _temp_stem(path: Path) -> str:
    """`.<name>`, or `.metaemb-<digest of the name>` for a name so long (over 200 bytes) that
    the temp's extra characters would pass the file system's 255-byte limit."""
    if len(path.name.encode("utf-8", "surrogateescape")) <= 200:
        return f".{path.name}"
    import hashlib

    return ".metaemb-" + hashlib.sha1(path.name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _temp_prefix(path: Path) -> str:
    """`.<name>.<pid>.`: a temp copy names the process writing it, so one left by a killed
    process is told from one being written now (`remove_orphan_temps`)."""
    return f"{_temp_stem(path)}.{os.getpid()}."


def remove_orphan_temps(path: Path) -> None:
    """Delete the temp copies of `path` that killed processes left beside it: an output written
    again and again (a gallery, an export) would otherwise gather one full-size copy per kill.
    A temp whose writer is alive, or that changed in the last minute (its writer may be
    another machine sharing the folder), is left alone; one without a pid (an older metaemb)
    once it is a day old."""
    import glob
    import time

    stem = _temp_stem(path)
    # `.<name>.<pid>.<random>.tmp` (mkstemp's random part has no dot) or, from an older
    # metaemb, `.<name>.<random>.tmp`: a sibling `<name>.7000`'s temps never match
    ours = re.compile(rf"^{re.escape(stem)}\.(?:(\d+)\.)?[^.]+\.tmp$")

    def orphaned(name: str, writer: str | None) -> bool:
        age = time.time() - os.path.getmtime(name)
        if writer is not None:
            return age > 60 and not _alive(int(writer))
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


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save a full training state atomically (serialised in memory, then temp file + rename)."""
    state = {**state, "format": CHECKPOINT_FORMAT, "metaemb_version": metaemb.__version__}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_error_reason(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in one line: a pickled object is named
    (it is never unpickled: that could run code), anything else by its first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (
            f"it holds a pickled Python object ({found.group(1)}), which metaemb never unpickles "
            "because unpickling can run code; it was not written by metaemb, or was altered"
        )
    legacy = isinstance(exc, (EOFError, IndexError, KeyError, pickle.UnpicklingError))
    not_torch = legacy or "invalid load key" in text  # torch's pre-zip reader on other bytes
    if not_torch or "Weights only load failed" in text:
        return "it is not a file written by torch.save (another kind of file, or damaged)"
    if "zip archive" in text or "central directory" in text:
        return "it is truncated or damaged (its zip archive cannot be read)"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_checkpoint(path: str | Path, expect_hash: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only=True) and refuse incompatible ones with a reason."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise MetaembError(f"checkpoint '{p}' {what}.")
    export = _export_format(p)
    if export:
        raise MetaembError(
            f"'{p}' is a {export} export (from `metaemb export`), not a checkpoint: metaemb's "
            "commands read the run folder or its best.pt. Run the export itself with "
            + ("onnxruntime." if export == "ONNX" else "torch.jit.load.")
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or not a checkpoint at all
        advice = (
            "Re-run train with --fresh to start over."
            if expect_hash is not None
            else "Use the run's other checkpoint (best.pt or last.pt) or retrain the run."
        )
        best = p.with_name("best.pt")
        if expect_hash is not None and p.name != best.name and zipfile.is_zipfile(best):
            advice = (f"'{best}' beside it is intact: evaluate or export it, and copy it away "
                      "before re-running train with --fresh, which starts over and replaces it.")  # fmt: skip
        raise MetaembError(
            f"checkpoint '{p}' cannot be read ({load_error_reason(exc)}). {advice}"
        ) from None
    if not isinstance(state, dict) or "format" not in state:
        raise MetaembError(f"'{p}' is not a metaemb checkpoint.")
    if state["format"] != CHECKPOINT_FORMAT and str(state["format"]).startswith("metaemb-"):
        kind = str(state["format"]).removeprefix("metaemb-")
        raise MetaembError(
            f"'{p}' is a metaemb {kind} file (format {state['format']!r}), not a model "
            "checkpoint: give a run folder or its best.pt."
        )
    if state["format"] != CHECKPOINT_FORMAT or _major(state.get("metaemb_version")) != _major(
        metaemb.__version__
    ):
        raise MetaembError(
            f"checkpoint '{p}' was written by metaemb {state.get('metaemb_version')} (checkpoint "
            f"format {state['format']}); this is metaemb {metaemb.__version__} (format "
            f"{CHECKPOINT_FORMAT}), which cannot load it. Use the matching metaemb version or "
            "retrain the run."
        )
    if expect_hash is not None and state.get("config_hash") != expect_hash:
        raise MetaembError(
            f"checkpoint '{p}' belongs to configuration {state.get('config_hash')}, not {expect_hash}; "
            "it will not be mixed into this run. Use --fresh to start this run over."
        )
    return state


def _export_format(path: Path) -> str | None:
    """ "ONNX" or "TorchScript" for a file `metaemb export` writes, else None."""
    import zipfile

    if path.suffix.lower() == ".onnx":
        return "ONNX"
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return "TorchScript" if any(n.endswith("/constants.pkl") for n in names) else None


def _major(version: str | None) -> str:
    if not version:
        return "?"
    parts = version.split(".")
    # 0.x releases may break compatibility at every minor version.
    return ".".join(parts[:2]) if parts[0] == "0" else parts[0]


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def trim_jsonl(path: Path, epoch: int) -> None:
    """Drop metrics.jsonl records newer than the checkpoint a run resumes from, and a line torn
    by a kill in the middle of an append."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    epochs = [record_epoch(ln) for ln in lines]
    keep = [ln for ln, e in zip(lines, epochs, strict=True) if e is not None and e <= epoch]
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def record_epoch(line: str) -> int | None:
    """The epoch of one metrics.jsonl line; None for a line that is not a whole record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return int(record.get("epoch", 0)) if isinstance(record, dict) else None


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Delete the `.<name>.*.tmp` files an interrupted atomic write left behind (call it only while
    holding the folder's RunLock, so no write of another process is in flight)."""
    removed = []
    if folder.is_dir():
        for p in sorted(folder.glob(".*.tmp")):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


class RunInProgress(MetaembError):
    """Another live process trains in this run directory."""


LOCK_NAME = ".lock"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


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


class RunLock:
    """An exclusive lock on a run directory: `<run>/.lock` holds the owner's pid.

    With fcntl (Linux, macOS) the lock is a `flock` on that file, released by the kernel when the
    process dies however it dies, so a lock file left by a killed trainer is simply taken over.
    Elsewhere the pid in the file decides: a lock whose process is gone is stale and replaced.
    """

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
                raise output_error(exc, self.path, "run-folder lock") from None
            raise

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
                if owner is not None and _alive(owner) and owner != os.getpid():
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


def saved_config(run: Path) -> dict[str, Any] | None:
    """The config.toml of a run folder (or of a checkpoint's folder) as a dict; None when there
    is none that reads, for callers that only take a hint from it."""
    from metaemb.core.config.toml_io import load_toml

    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    try:
        return load_toml(folder / "config.toml")
    except ConfigError:
        return None


class FileLock(RunLock):
    """An exclusive lock on one output file that a command reads, extends and rewrites (a
    gallery): `.<name>.lock` beside it, so two writers never drop each other's additions."""

    def __init__(self, target: Path, what: str) -> None:
        real = Path(os.path.realpath(target))  # one lock for the file, whatever link names it
        super().__init__(real.parent)
        self.target, self.what = Path(target), what
        self.path = real.parent / f".{real.name}.lock"

    def _refuse(self, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "another process"
        raise RunInProgress(
            f"{self.what} '{self.target}' is being written by {who}; wait for it to finish, "
            "then run this again (its additions and yours would otherwise overwrite each other)."
        )
