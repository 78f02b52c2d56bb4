"""The shared on-disk landmark cache: detection dominates face preprocessing, so every outcome
is kept per dataset root and source configuration, keyed by relative path + file size + mtime,
shared by runs, commands and DataLoader workers (appends under a lock, never interleaved)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from metaemb.plugins.vision.landmarks import Landmarks


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: O_APPEND single writes are the safeguard
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


class LandmarkCache:
    """Landmarks per sample on disk: `<cache_dir>/landmarks/<key>.jsonl`, one JSON record a line.

    The file name hashes the dataset root and the source's configuration, so each (dataset,
    detector) pair is computed once and shared by every run and command. Each worker appends
    whole lines under an exclusive lock (one write on an O_APPEND descriptor), so concurrent
    DataLoader workers never interleave records; a torn last line from a crash is ignored. The
    last record for a path wins; a record whose size or mtime no longer matches the file is stale.
    """

    def __init__(self, cache_dir: str | Path, root: str | Path, source_key: str) -> None:
        self.root = Path(root)
        ident = json.dumps({"root": str(self.root.resolve()), "source": source_key})
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        self.dir = Path(cache_dir) / "landmarks"
        self.path = self.dir / f"{digest}.jsonl"
        self.source_key = source_key
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, dict[str, Any]] = {}
        self._offset = 0

    def _refresh(self) -> None:
        """Read records appended since the last read (by this or another process)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # leave a partial last line for later
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
                self._entries[rec["path"]] = rec
            except (ValueError, KeyError, TypeError):
                continue  # torn or foreign line
        self._offset += end

    @staticmethod
    def _stamp(file: Path) -> tuple[int, int]:
        st = file.stat()
        return st.st_size, st.st_mtime_ns

    def get(self, path: str) -> Landmarks | None:
        """The cached record of `path` if it is still valid (same size and mtime), else None."""
        try:
            size, mtime = self._stamp(self.root / path)
        except OSError:
            return None
        for attempt in range(2):
            rec = self._entries.get(path)
            if rec is not None and rec.get("size") == size and rec.get("mtime_ns") == mtime:
                return Landmarks.from_json(rec)
            if attempt == 0:
                self._refresh()
        return None

    def put(self, path: str, landmarks: Landmarks) -> None:
        size, mtime = self._stamp(self.root / path)
        rec = {"path": path, "size": size, "mtime_ns": mtime, **landmarks.to_json()}
        line = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.path.with_suffix(".json")
        if not meta.exists():
            tmp = meta.with_suffix(f".json.tmp{os.getpid()}")
            root = str(self.root.resolve())
            tmp.write_text(json.dumps({"root": root, "source": self.source_key}, indent=2))
            os.replace(tmp, meta)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            with _locked(fd):
                os.write(fd, line)
        finally:
            os.close(fd)
        self._entries[path] = rec

    def lookup(self, path: str, compute: Callable[[], Landmarks]) -> Landmarks:
        """Cached landmarks of `path`, computing (and recording) them on a miss or a stale entry."""
        found = self.get(path)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        result = compute()
        self.put(path, result)
        return result

    def outcomes(self) -> Counter[str]:
        """How many cached samples ended in each outcome (the skip-and-report record)."""
        self._refresh()
        return Counter(rec.get("outcome", "?") for rec in self._entries.values())

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_entries": {}, "_offset": 0, "hits": 0, "misses": 0}
