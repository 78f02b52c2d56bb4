"""Face landmark sources (landmark files, detectors) and the shared on-disk landmark cache.

A source turns one image into a `Landmarks` record whose `outcome` says what happened ("ok",
"no_face", "several_faces", "missing"), so skipped samples are recorded, never silently dropped.
Detection dominates preprocessing cost, so `LandmarkCache` keeps every outcome on disk per dataset
root and source configuration, keyed by relative path + file size + mtime, shared by runs,
commands and DataLoader workers.
"""

from __future__ import annotations

import abc
import contextlib
import csv
import glob
import hashlib
import io
import json
import os
import posixpath
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaemb.core.errors import DataError, DatasetError
from metaemb.plugins.vision.landmark_h5 import HDF5_SUFFIXES

OUTCOMES = ("ok", "no_face", "several_faces", "missing")


@dataclass(frozen=True)
class Landmarks:
    """What a source found in one image: 5 points [5, 2] in `scheme` order when outcome is "ok"."""

    outcome: str
    points: np.ndarray | None = None
    faces: int = 0
    scheme: str = "mtcnn5"

    def to_json(self) -> dict[str, Any]:
        pts = None if self.points is None else [[float(x), float(y)] for x, y in self.points]
        return {"outcome": self.outcome, "points": pts, "faces": self.faces, "scheme": self.scheme}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Landmarks:
        pts = d.get("points")
        return cls(
            outcome=str(d["outcome"]),
            points=None if pts is None else np.asarray(pts, dtype=np.float64).reshape(-1, 2),
            faces=int(d.get("faces", 0)),
            scheme=str(d.get("scheme", "mtcnn5")),
        )


class LandmarkSource(abc.ABC):
    """Image → Landmarks. `key()` identifies the configuration (it names the cache)."""

    scheme: str = "mtcnn5"
    #: Worth caching on disk (detectors); landmark files are their own cache.
    cacheable: bool = True

    @abc.abstractmethod
    def key(self) -> str: ...

    @abc.abstractmethod
    def __call__(self, image: Any, path: str, root: Path) -> Landmarks:
        """Landmarks of image `root / path`; `image` is its decoded uint8 tensor [3, H, W]."""


# ---------------------------------------------------------------------------------------------
# Landmark files


def _parse_points(values: list[str], where: str) -> np.ndarray:
    if len(values) != 10:
        raise DataError(f"{where}: expected 10 coordinates (5 points x, y), got {len(values)}.")
    try:
        pts = np.array([float(v) for v in values], dtype=np.float64).reshape(5, 2)
    except ValueError:
        raise DataError(f"{where}: coordinates must be numbers, got {values}.") from None
    if not np.isfinite(pts).all():
        raise DataError(f"{where}: coordinates must be finite, got {values}.")
    return pts


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    """`relpath,x1,y1,…,x5,y5` rows (header optional): the demo generator's landmarks.csv, VGGFace2
    `loose_landmark_*.csv` (`NAME_ID,P1X,P1Y,…`, NAME_ID without extension) or any such CSV."""
    out: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise DataError(f"landmark file '{path}' is not a readable CSV file: {exc}.") from None
    for lineno, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        spaced = len(row) == 1 and len(row[0].split()) == 11  # a blank-separated .txt
        if lineno == 1 and not spaced:
            try:
                float(row[1])
            except (IndexError, ValueError):
                continue  # header
        where = f"landmark file '{path}', line {lineno}"
        if len(row) != 11:
            why = " separated by blanks: a CSV separates them by commas" if spaced else ""
            raise DataError(
                f"{where}: expected 11 comma-separated fields (path + 10 coordinates), got "
                f"{len(row)}{why}."
            )
        rel, pts = row[0].strip().replace("\\", "/"), _parse_points(row[1:], where)
        if rel in out and not np.array_equal(out[rel], pts):
            raise DataError(
                f"{where}: '{rel}' is listed again with other points than on line "
                f"{first_line[rel]}; keep one row per image."
            )
        out[rel] = pts
        first_line.setdefault(rel, lineno)
    return out


def _read_json(path: Path) -> dict[str, np.ndarray]:
    """`{"relpath": [[x, y] × 5] or [x1, y1, …, x5, y5], …}`."""
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"landmark file '{path}' is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise DataError(f"landmark file '{path}' must hold an object {{relpath: 5 points}}.")
    out = {}
    for rel, pts in data.items():
        flat = np.asarray(pts, dtype=object).reshape(-1).tolist()
        out[rel.replace("\\", "/")] = _parse_points(
            [str(v) for v in flat], f"landmark file '{path}', key '{rel}'"
        )
    return out


def read_landmark_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read a landmark file (CSV, JSON or HDF5) into {relative path: [5, 2]}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"landmark file '{path}' does not exist.")
    if path.suffix.lower() in HDF5_SUFFIXES:
        from metaemb.plugins.vision.landmark_h5 import read_h5

        raw = read_h5(path)
    else:
        raw = _read_json(path) if path.suffix.lower() == ".json" else _read_csv(path)
    return _normalised_keys(raw, path)


def normalise_key(key: str) -> str:
    """A landmark key as samples are named: `/` separators, no `./`, `//` or `a/../`
    (`./id/x.png` and `id//x.png` name the sample `id/x.png`)."""
    key = posixpath.normpath(key.replace("\\", "/"))
    return "" if key == "." else key


def _normalised_keys(table: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    spelled: dict[str, str] = {}
    for key, pts in table.items():
        norm = normalise_key(key)
        if norm in out and not np.array_equal(out[norm], pts):
            raise DataError(
                f"landmark file '{path}': '{spelled[norm]}' and '{key}' name the same image "
                f"('{norm}') with other points; keep one entry per image."
            )
        out[norm] = pts
        spelled.setdefault(norm, key)
    return out


def recorded_scheme(path: str | Path) -> str | None:
    """The point order a landmark file records, or None: the `scheme` attribute of an HDF5 file,
    or a CSV header whose first field is `scheme=NAME` (as `metaemb landmarks` writes for points
    in another order than MTCNN's)."""
    path = Path(path)
    if path.suffix.lower() in HDF5_SUFFIXES:
        from metaemb.plugins.vision.landmark_h5 import read_h5_scheme

        return read_h5_scheme(path)
    if path.suffix.lower() == ".json":
        return None
    with contextlib.suppress(OSError, csv.Error, StopIteration):
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            first = next(csv.reader(f))
        if first and first[0].strip().startswith("scheme="):
            return first[0].strip().split("=", 1)[1].strip()
    return None


class FileLandmarks(LandmarkSource):
    """Landmarks shipped with a dataset: one or more CSV/JSON files (a glob such as
    `loose_landmark_*.csv` works), relative to the data root unless absolute.

    Entries match a sample by relative path, or by relative path without extension (VGGFace2).
    Points are in MTCNN order (eyes, nose tip, mouth corners) unless `scheme` says otherwise, or
    the file records its own order (`recorded_scheme`: dlib's 5 points, from
    `metaemb landmarks --set points=5`), which then wins.
    """

    cacheable = False

    def __init__(
        self,
        root: Path | None = None,
        landmarks_file: str = "landmarks.csv",
        scheme: str = "mtcnn5",
    ) -> None:
        self.root = Path(root) if root is not None else None
        self.landmarks_file = landmarks_file
        self.scheme = scheme
        self._table: dict[str, np.ndarray] | None = None

    def files(self) -> list[Path]:
        pattern = Path(self.landmarks_file)
        if not pattern.is_absolute():
            if self.root is None:
                raise DataError(f"landmark file '{pattern}' is relative but no data root is known.")
            pattern = self.root / pattern
        if any(c in str(pattern) for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(str(pattern)))
            if not found:
                raise DataError(f"no landmark file matches '{pattern}'.")
            return found
        if not pattern.is_file():
            raise DataError(
                f"landmark file '{pattern}' does not exist. The run aligns faces with the "
                f"landmarks of '{self.landmarks_file}' under the data root (frontend."
                "landmarks_file): put there a landmark file covering these images (the lines "
                "of a larger one will do; `metaemb landmarks DATA --out FILE` writes one), name "
                "another with --frontend-set landmarks_file=FILE (after training) or "
                "frontend.landmarks_file, or detect landmarks with frontend.source = 'dlib' "
                "(pip install 'metaemb[face]')."
            )
        return [pattern]

    def table(self) -> dict[str, np.ndarray]:
        if self._table is None:
            table: dict[str, np.ndarray] = {}
            try:
                files = self.files()
                for f in files:
                    table.update(self._relative_to_root(read_landmark_file(f)))
                self.scheme = self._files_scheme(files)
            except DataError as exc:  # the table, not the sample that first needed it
                raise DatasetError(str(exc)) from None
            self._table = table
        return self._table

    def _relative_to_root(self, table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Absolute keys inside the data root become relative ones, as samples are named."""
        if self.root is None or not any(k.startswith("/") for k in table):
            return table
        root = posixpath.normpath(self.root.resolve().as_posix())
        plain = posixpath.normpath(self.root.absolute().as_posix())
        out = {}
        for key, pts in table.items():
            for base in (root, plain):
                if key.startswith(base + "/"):
                    key = key[len(base) + 1 :]
                    break
            out[key] = pts
        return out

    def _files_scheme(self, files: list[Path]) -> str:
        """The order of the files' points: the one they record, else `scheme`."""
        from metaemb.plugins.vision.align import SCHEMES

        recorded = {f: recorded_scheme(f) for f in files}
        found = {s for s in recorded.values() if s is not None}
        if len(found) > 1:
            raise DataError(
                "landmark files record different point orders: "
                + ", ".join(f"'{f}' {s}" for f, s in recorded.items() if s)
                + "; align with one kind of landmarks."
            )
        scheme = found.pop() if found else self.scheme
        if scheme not in SCHEMES:
            raise DataError(
                f"landmark file '{files[0]}' records scheme '{scheme}'; known: "
                f"{', '.join(SCHEMES)}."
            )
        return scheme

    def key(self) -> str:
        with contextlib.suppress(DatasetError):
            self.table()  # settles the scheme the files record
        return f"file:{self.landmarks_file}:{self.scheme}"

    def __call__(self, image: Any, path: str, root: Path) -> Landmarks:
        table = self.table()
        pts = table.get(path)
        if pts is None:
            pts = table.get(os.path.splitext(path)[0])
        if pts is None:
            return Landmarks("missing", scheme=self.scheme)
        return Landmarks("ok", pts, faces=1, scheme=self.scheme)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_table": None}  # re-read in each worker, not pickled


# ---------------------------------------------------------------------------------------------
# The cache


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
