"""`metaemb landmarks DATA --out FILE`: run a landmark source (a detector such as dlib) over every
image of a folder once, on several DataLoader workers, and write a landmark file the `file`
source reads back (frontend.source = "file", frontend.landmarks_file = FILE).

FILE is CSV (`path,x1,y1,…,x5,y5`, header line first) or, with the `hdf5` extra, HDF5 (`.h5`:
datasets `paths` and `points` [N, 5, 2], attribute `scheme`). Images where no usable face was
found are not written; they are counted and listed in FILE.skipped.txt with their outcome.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from torch.utils.data import DataLoader, Dataset

from metaemb.core.errors import DataError, MetaembError
from metaemb.core.files import atomic_write_text
from metaemb.plugins.vision.landmark_h5 import HDF5_SUFFIXES, h5py_module, write_h5


class _Detect(Dataset):
    """Item i → (relative path, outcome, points [5, 2] or None, scheme) of sample i."""

    def __init__(self, folder: Any, source: Any) -> None:
        self.folder, self.source = folder, source

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[str, str, Any, str]:
        sample = self.folder.samples[i]
        try:
            image = self.folder.load(self.folder.abspath(sample))
        except DataError as exc:
            return sample.path, f"unreadable: {exc}", None, ""
        found = self.source(image, sample.path, self.folder.root)
        return sample.path, found.outcome, found.points, found.scheme


def _first(items: list[Any]) -> Any:
    return items[0]


def extract_landmarks(
    data: Path,
    out: Path,
    source: str = "dlib",
    options: dict[str, Any] | None = None,
    folder: str = "image",
    workers: int = 2,
) -> dict[str, Any]:
    """Detect landmarks for every image of `data` with landmark source `source` → summary."""
    from metaemb.core.data.loaders import check_workers
    from metaemb.core.paths import ensure_writable, refuse_replacing_data_file
    from metaemb.core.plugin.components import build
    from metaemb.plugins.vision.frontend import build_source

    suffix = out.suffix.lower()
    if suffix in (*HDF5_SUFFIXES, ".csv", ".txt"):
        ensure_writable(out, "landmark file")  # before any detection
        refuse_replacing_data_file(out, data, "landmark file")  # e.g. the folder's own
    if suffix in HDF5_SUFFIXES:
        h5py_module()  # fail before any detection work
    elif suffix not in (".csv", ".txt"):
        raise MetaembError(f"landmark file '{out}': use a .csv or .h5 name.")
    images = build("sample_folders", folder, {}, root=Path(data))
    src = build_source(source, Path(data), dict(options or {}), strict=True)
    loader = DataLoader(_Detect(images, src), batch_size=1, num_workers=check_workers(workers),
                        collate_fn=_first)  # fmt: skip
    rows: list[tuple[str, np.ndarray]] = []
    skipped: list[str] = []
    outcomes: Counter[str] = Counter()
    schemes: set[str] = set()
    for path, outcome, points, scheme in loader:
        kind = outcome.split(":", 1)[0]
        outcomes[kind] += 1
        if outcome == "ok" and points is not None:
            rows.append((path, np.asarray(points, dtype=np.float64).reshape(5, 2)))
            schemes.add(scheme)
        else:
            skipped.append(f"{path}\t{outcome}")
    if len(schemes) > 1:
        raise DataError(f"landmark source '{source}' returned mixed schemes {sorted(schemes)}.")
    scheme = schemes.pop() if schemes else "mtcnn5"
    if not rows:  # nothing to write: an existing file (another dataset's?) is kept
        kept = f"; '{out}' was left as it was" if out.exists() else ""
        raise DataError(
            f"landmark source '{source}' found no usable face in any of the {len(images)} "
            f"images of '{data}' ({', '.join(f'{k}: {v}' for k, v in sorted(outcomes.items()))})"
            f"{kept}. Check the source's options, or that these are face images."
        )
    if suffix in HDF5_SUFFIXES:
        write_h5(out, rows, scheme)
    else:
        _write_csv(out, rows, scheme)
    skipped_file = out.with_name(out.name + ".skipped.txt")
    if skipped:
        atomic_write_text(skipped_file, "\n".join(skipped) + "\n")
    else:
        skipped_file.unlink(missing_ok=True)
    return {
        "out": str(out),
        "images": len(images),
        "written": len(rows),
        "outcomes": dict(outcomes),
        "scheme": scheme,
        "skipped_list": str(skipped_file) if skipped else None,
    }


def _write_csv(out: Path, rows: list[tuple[str, np.ndarray]], scheme: str = "mtcnn5") -> None:
    """`path,x1,y1,…` rows; points in another order than MTCNN's record it in the header's first
    field (`scheme=dlib5`), which the `file` landmark source reads back."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    first = "path" if scheme == "mtcnn5" else f"scheme={scheme}"
    w.writerow([first, *(f"{a}{i}" for i in range(1, 6) for a in ("x", "y"))])
    for path, pts in rows:
        w.writerow([path, *(f"{v:.9g}" for v in pts.reshape(-1))])
    atomic_write_text(out, buf.getvalue())


def landmarks(
    data: Annotated[Path, typer.Argument(help="<identity>/<image> folder")],
    out: Annotated[Path, typer.Option(help="landmark file to write (.csv, or .h5 with h5py)")],
    source: Annotated[str, typer.Option(help="landmark source: dlib, or a plugin's")] = "dlib",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="source option, e.g. detector=cnn, points=68")
    ] = None,
    folder: Annotated[str, typer.Option(help="sample-folder name")] = "image",
    workers: Annotated[
        int, typer.Option(help="DataLoader workers running the detector", min=0)
    ] = 2,
) -> None:
    """Detect face landmarks for every image of DATA once and write a landmark file that
    frontend.source=file (frontend.landmarks_file=FILE) reads back."""
    import json

    from metaemb.core.config import parse_set

    opts = dict(map(parse_set, set_ or []))
    typer.echo(json.dumps(extract_landmarks(data, out, source, opts, folder, workers), indent=2))
