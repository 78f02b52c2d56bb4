"""HDF5 landmark files (the `hdf5` extra): datasets `paths` and `points` [N, 5, 2] and the
attribute `scheme`, as `metaemb landmarks --out X.h5` writes them and the `file` landmark source
reads them. One module for both sides, so the format lives in one place."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from metaemb.core.errors import DataError, MetaembError
from metaemb.core.files import atomic_write_bytes

HDF5_SUFFIXES = (".h5", ".hdf5")


def h5py_module() -> Any:
    """h5py, or one message naming the extra that installs it."""
    try:
        import h5py
    except ImportError:
        raise MetaembError(
            "HDF5 landmark files need h5py: pip install 'metaemb[hdf5]' (or write a .csv)."
        ) from None
    return h5py


def write_h5(out: Path, rows: list[tuple[str, np.ndarray]], scheme: str) -> None:
    """Write (relative path, [5, 2] points) rows atomically, with the points' scheme."""
    h5py = h5py_module()
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("paths", data=[p.encode() for p, _ in rows], dtype=h5py.string_dtype())
        pts = np.stack([p for _, p in rows]) if rows else np.zeros((0, 5, 2))
        f.create_dataset("points", data=pts)
        f.attrs["scheme"] = scheme
    atomic_write_bytes(out, buf.getvalue())


def read_h5(path: Path) -> dict[str, np.ndarray]:
    """{relative path: [5, 2]} of an HDF5 landmark file written by `metaemb landmarks`."""
    h5py = h5py_module()
    try:
        with h5py.File(path, "r") as f:
            paths = [p.decode() if isinstance(p, bytes) else str(p) for p in f["paths"][()]]
            points = np.asarray(f["points"][()], dtype=np.float64)
    except (OSError, KeyError) as exc:
        raise DataError(
            f"landmark file '{path}' is not a readable landmark HDF5 file: {exc}"
        ) from None
    if points.shape != (len(paths), 5, 2) or not np.isfinite(points).all():
        raise DataError(f"landmark file '{path}': 'points' must be finite [N, 5, 2] for N paths.")
    return dict(zip(paths, points, strict=True))


def read_h5_scheme(path: Path) -> str | None:
    """The `scheme` attribute of an HDF5 landmark file (None when it has none or is unreadable:
    reading its points reports that)."""
    h5py = h5py_module()
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("scheme")
    except OSError:
        return None
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
