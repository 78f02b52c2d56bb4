"""Face landmark sources (landmark files, detectors): what one image's landmarks are.

A source turns one image into a `Landmarks` record whose `outcome` says what happened ("ok",
"no_face", "several_faces", "missing"), so skipped samples are recorded, never silently dropped.
Detectors' outcomes are kept on disk by `LandmarkCache` (landmark_cache.py); landmark files are
read in landmark_files.py.
"""

from __future__ import annotations

import abc
import contextlib
import glob
import os
import posixpath
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaemb.core.errors import DataError, DatasetError
from metaemb.plugins.vision.landmark_files import read_landmark_file, recorded_scheme

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
            if not getattr(self, "_layout_checked", False):  # once, not again in each worker
                self._layout_checked = True
                warn_if_another_layout(table, self.scheme, files[0])
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


def _misfit(points: np.ndarray, target: np.ndarray) -> float:
    """RMS distance of 5 points from `target` after the best similarity (no reflection), in
    units of the target's first two points' distance: about 0.1 for real faces."""
    src, dst = points - points.mean(0), target - target.mean(0)
    u, sv, vt = np.linalg.svd(dst.T @ src / len(src))
    d = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ d @ vt
    scale = np.trace(np.diag(sv) @ d) / max(float((src**2).sum() / len(src)), 1e-12)
    fitted = scale * src @ rotation.T
    rms = float(np.sqrt(((fitted - dst) ** 2).sum(1).mean()))
    return rms / max(float(np.linalg.norm(target[0] - target[1])), 1e-12)


#: other ways face datasets write 5 points, per scheme: x1..x5 then y1..y5 (any scheme), and
#: the subject's left first where metaemb's order puts the image's left first
OTHER_LAYOUTS = {
    "mtcnn5": {
        "x1 … x5, y1 … y5 (all x, then all y)": lambda p: np.stack([p.ravel()[:5],
                                                                     p.ravel()[5:]], 1),
        "the subject's left eye and mouth corner first (mirrored order)":
            lambda p: p[[1, 0, 2, 4, 3]],
    },
    "dlib5": {
        "x1 … x5, y1 … y5 (all x, then all y)": lambda p: np.stack([p.ravel()[:5],
                                                                     p.ravel()[5:]], 1),
        "the other eye's two corners first (mirrored order)": lambda p: p[[2, 3, 0, 1, 4]],
    },
}  # fmt: skip


def warn_if_another_layout(table: dict[str, np.ndarray], scheme: str, where: Path) -> None:
    """A landmark file whose points fit the face template badly row after row (in another
    layout or order, which parse alike) aligns every face into a garbage crop without a word:
    said, naming the layout that fits when one does."""
    from metaemb.plugins.vision.align import template

    values = list(table.values())
    step = max(1, len(values) // 200)  # rows spread over the file, not one folder's first
    rows = [p for p in values[::step][:200] if np.shape(p) == (5, 2)]
    if scheme not in OTHER_LAYOUTS or len(rows) < 3 or not np.isfinite(np.stack(rows)).all():
        return
    target = template(112, scheme)
    misfit = float(np.median([_misfit(p, target) for p in rows]))
    if misfit < 0.3:  # turned heads (profile sets) reach 0.3–0.45 in metaemb's own layout
        return
    others = {n: float(np.median([_misfit(f(p), target) for p in rows]))
              for n, f in OTHER_LAYOUTS[scheme].items()}  # fmt: skip
    best = min(others, key=others.get)  # type: ignore[arg-type]
    if others[best] >= misfit / 2:  # no layout fits clearly better: hard poses, not a layout
        return
    warnings.warn(
        f"landmark file '{where}': its points fit the face template badly (median misfit "
        f"{misfit:.2f} of the eye distance, about 0.1 for frontal faces) and fit as {best} "
        f"({others[best]:.2f}), so aligned crops will be skewed. metaemb reads rows as "
        f"path,x1,y1,…,x5,y5 in {scheme} order (eye, eye, nose, mouth corner, mouth corner, the "
        "image's left first): rewrite the file in that order.",
        stacklevel=2,
    )
