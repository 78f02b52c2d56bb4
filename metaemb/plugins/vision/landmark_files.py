"""Reading landmark files that datasets ship or `metaemb landmarks` writes (CSV, JSON, HDF5)
into {relative path: 5 points [5, 2]}, with keys spelled as samples are named, refusing
malformed or contradictory rows by file and line, and the point order a file records."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import posixpath
from pathlib import Path

import numpy as np

from metaemb.core.errors import DataError
from metaemb.plugins.vision.landmark_h5 import HDF5_SUFFIXES


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
