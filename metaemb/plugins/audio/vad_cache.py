"""The per-file decision cache of the VAD frontends (`DecisionCache`): one small binary entry per
(audio file, frontend configuration) under `cache_dir/vad/`, validated by the file's stamp, plus a
per-process memo of the last decisions."""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import uuid
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HEAD_BYTES = 4096  # the part of each file checksummed into its cache stamp (header + ~0.1 s)
MEMO_ENTRIES = 8192  # decisions kept in memory per frontend and process (each a few hundred bytes)
# Entry format, version 3 (version 1 was one `.npz` zip per file: 10 ms to parse; version 2 had a
# BLAKE2 head hash and no ctime in its stamp, 0.1 ms more per item: both are ignored, recomputed):
# MAGIC, the stamp (6 × int64), the numpy dtype string (8 bytes), ndim (int64), the shape
# (ndim × int64), then the array's bytes; one read and no parsing beyond a few integers.
MAGIC = b"MEVAD\x003\n"
SUFFIX = ".vad"
_STAMP = struct.Struct("<6q")


def _encode(stamp: bytes, data: np.ndarray) -> bytes:
    data = np.ascontiguousarray(data)
    dtype = data.dtype.str.encode().ljust(8)
    shape = np.array([data.ndim, *data.shape], dtype="<i8").tobytes()
    return MAGIC + stamp + dtype + shape + data.tobytes()


def _decode(buf: bytes, stamp: bytes) -> np.ndarray | None:
    """The array stored in `buf` when its stamp equals `stamp`; None if stale or malformed."""
    head = len(MAGIC) + _STAMP.size
    if len(buf) < head + 16 or not buf.startswith(MAGIC):
        return None
    if buf[len(MAGIC) : head] != stamp:
        return None
    try:
        dtype = np.dtype(buf[head : head + 8].decode("ascii").strip())
        ndim = int.from_bytes(buf[head + 8 : head + 16], "little", signed=True)
        at = head + 16 + 8 * ndim
        if not 0 <= ndim <= 4 or dtype.hasobject or len(buf) < at:
            return None
        shape = tuple(np.frombuffer(buf, "<i8", ndim, head + 16).tolist())
        count = int(np.prod(shape, dtype=np.int64))
        if min(shape, default=0) < 0 or len(buf) != at + count * dtype.itemsize:
            return None
        return np.frombuffer(bytearray(buf[at:]), dtype, count).reshape(shape)
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


_UNWRITABLE_SAID: set[str] = set()  # cache folders already said to be unwritable


class DecisionCache:
    """Small numpy arrays per (absolute real path, frontend key), stamped with the file's identity:
    size, mtime, ctime, inode, decoded length and a CRC-32 of its first HEAD_BYTES. Two datasets
    with the same relative names never share entries; a file rewritten in place (same inode) gets
    a new ctime, which no tool can set back, and one replaced by a copy with the same size and
    preserved times has a new inode; the checksum still catches a rewrite of the header or the
    first samples within one tick of a coarse ctime clock. (The stamp was size, mtime, inode and a
    BLAKE2 hash of the first 64 KiB: 0.1 ms per item for the hash alone; now the whole stamp,
    one open, one fstat and a CRC-32 of 4 KiB, costs a few µs and the checksum only has to tell
    an accidental change that the other five fields missed.)

    Entries are small binary files (see `_encode`); the last MEMO_ENTRIES decisions are also kept
    in memory, still checked against a fresh stamp on every call, so a hit skips the file read.
    `get` can memoise a value derived from the decision (the energy VAD's sample ranges) so a hit
    also skips that work."""

    def __init__(self, cache_dir: str | Path | None, key: str) -> None:
        self.dir = Path(cache_dir) / "vad" if cache_dir is not None else None
        self.key = key
        self.unwritable = False  # set when a write failed: read what is there, store nothing
        self._memo: dict[str, tuple[bytes, Any]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_memo": {}}  # each worker keeps its own

    def entry(self, source: str | Path) -> Path:
        """The entry file of `source` (made absolute and resolved, so links share one entry)."""
        assert self.dir is not None
        real = os.path.realpath(source)
        digest = hashlib.sha1(os.fsencode(real) + b"\0" + self.key.encode() + b"\0v2").hexdigest()
        return self.dir / digest[:2] / f"{digest}{SUFFIX}"

    @staticmethod
    def stamp(source: str | Path, n_samples: int) -> bytes | None:
        """The file's identity as 48 bytes, or None when it cannot be opened (not a file)."""
        try:
            with open(source, "rb") as f:
                st = os.fstat(f.fileno())
                head = f.read(HEAD_BYTES)
        except OSError:
            return None
        crc = zlib.crc32(head)
        return _STAMP.pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, n_samples, crc)

    def get(
        self,
        path: str,
        root: str | Path,
        n_samples: int,
        compute: Callable[[], np.ndarray],
        derive: Callable[[np.ndarray], Any] | None = None,
    ) -> Any:
        """The cached array for `root / path`, or `compute()` (stored) when absent or stale;
        `derive(array)` instead when given (memoised with it: do not mutate what it returns).

        The stamp holds the file's size and times and the decoded length (which changes if the
        folder's resampling does). Samples that are not files (Kaldi segments) are not cached.
        """
        source = os.path.join(root, path)
        stamp = self.stamp(source, n_samples) if self.dir is not None else None
        if stamp is None:
            data = np.asarray(compute())
            return data if derive is None else derive(data)
        found, data = self._lookup(source, stamp, derive)
        if found:
            return data
        if data is None:
            data = np.asarray(compute())
            self._store(self.entry(source), stamp, data)
        if derive is None:
            self._remember(source, stamp, data.copy())
            return data
        value = derive(data)
        self._remember(source, stamp, value)
        return value

    def _store(self, entry: Path, stamp: bytes, data: np.ndarray) -> None:
        """Write one decision; a cache folder that cannot be written (a shared read-only cache,
        a full disk) only costs speed: warn once, then work without storing."""
        if self.unwritable:
            return
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(_encode(stamp, data))
            os.replace(tmp, entry)
        except OSError as exc:
            self.unwritable = True
            if str(self.dir) not in _UNWRITABLE_SAID:  # one cache object per frontend built
                _UNWRITABLE_SAID.add(str(self.dir))
                warnings.warn(
                    f"the VAD cache folder '{self.dir}' cannot be written "
                    f"({exc.strerror or exc}); speech detection runs without storing its "
                    "decisions (set METAEMB_CACHE or data.cache_dir to a writable folder to keep "
                    "them). Said once per process (so once per data-loader worker).",
                    stacklevel=2,
                )
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def lookup(
        self, path: str, root: str | Path, n_samples: int, derive: Callable[[np.ndarray], Any]
    ) -> Any | None:
        """`derive(decision)` for `root / path` when a valid decision is cached (in memory or on
        disk), else None: nothing is computed (a training crop may then read only a window)."""
        if self.dir is None:
            return None
        source = os.path.join(root, path)
        stamp = self.stamp(source, n_samples)
        if stamp is None:
            return None
        found, data = self._lookup(source, stamp, derive)
        if found or data is None:
            return data
        value = derive(data)
        self._remember(source, stamp, value)
        return value

    def _lookup(
        self, source: str, stamp: bytes, derive: Callable[[np.ndarray], Any] | None
    ) -> tuple[bool, Any]:
        """(True, what `get` returns) on a memory hit, else (False, the disk entry's array or
        None when it is missing, stale or malformed)."""
        memo = self._memo.get(source)  # valid whatever the path resolves to: the stamp decides
        if memo is not None and memo[0] == stamp:
            return True, memo[1].copy() if derive is None else memo[1]
        try:
            with open(self.entry(source), "rb") as f:
                return False, _decode(f.read(), stamp)
        except OSError:
            return False, None  # missing or unreadable: recompute and overwrite

    def _remember(self, source: str, stamp: bytes, value: Any) -> None:
        self._memo[source] = (stamp, value)
        while len(self._memo) > MEMO_ENTRIES:
            try:  # oldest first; another thread may evict the same one
                self._memo.pop(next(iter(self._memo)), None)
            except (RuntimeError, StopIteration):
                break
