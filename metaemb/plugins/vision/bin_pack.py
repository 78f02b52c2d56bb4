"""InsightFace's verification packs (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, …) unpacked
into an image folder and its pair list, so the published pairs of CFP-FP or AgeDB-30 are scored
by `metaemb evaluate --trials … --folds 10` like any list.

A pack is a Python pickle of (encoded images, is-same flags): image 2k and 2k + 1 form pair k.
Loading a pickle can run code, so it is read by an unpickler that refuses every global but the
few numpy uses to rebuild arrays: a pack holding anything else is refused, never executed.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from metaemb.core.errors import DataError

# (module, name) globals a pack may name: numpy arrays of bytes or flags, nothing that runs code
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles store bytes: it only encodes a string
}
PAIRS = "pairs_list.txt"  # not pairs.txt, the name of LFW's own format


class _NoCode(pickle.Unpickler):
    """Unpickles lists, tuples, bytes, numbers and numpy arrays; refuses every other global."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # packs written by Python 2 hold str as bytes
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ARRAY_GLOBALS:
            raise DataError(
                f"'{self.path}' holds a Python object of '{module}.{name}', not only images and "
                "flags: refused (loading it could run code). A verification pack holds a list of "
                "encoded images and a list of is-same flags."
            )
        if module.startswith("numpy.core.") and importlib.util.find_spec("numpy._core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # numpy 2's name
        return getattr(importlib.import_module(module), name)


def read_pack(path: Path) -> tuple[list[bytes], list[bool]]:
    """(encoded images, one is-same flag per consecutive pair of them) of a pack."""
    try:
        with open(path, "rb") as f:
            loaded = _NoCode(f, path).load()
    except DataError:
        raise
    except MemoryError:  # numpy's rebuild may be asked for any size by a few bytes
        raise DataError(
            f"'{path}' is not a verification pack: it asks for more memory than this machine has."
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            OverflowError) as exc:  # fmt: skip
        raise DataError(
            f"'{path}' is not a readable pickle ({type(exc).__name__}: {exc})."
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read '{path}': {exc.strerror or exc}.") from None
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
        raise DataError(
            f"'{path}' holds a {type(loaded).__name__}, not a verification pack's (images, "
            "is-same flags) pair."
        )
    images = [_as_bytes(x, path, i) for i, x in enumerate(loaded[0])]
    flags = [bool(x) for x in loaded[1]]
    if len(images) != 2 * len(flags):
        raise DataError(
            f"'{path}' holds {len(images)} images for {len(flags)} pairs; a pack holds two "
            "images per pair."
        )
    return images, flags


def _as_bytes(x: Any, path: Path, i: int) -> bytes:
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    if hasattr(x, "tobytes") and getattr(x, "ndim", 0) == 1:  # an array of the file's bytes
        return x.tobytes()
    raise DataError(f"'{path}': image {i} is a {type(x).__name__}, not encoded image bytes.")


def _suffix(data: bytes, path: Path, i: int) -> str:
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data.startswith(b"\x89PNG"):
        return ".png"
    raise DataError(f"'{path}': image {i} is neither JPEG nor PNG (starts {data[:4]!r}).")


def unpack(path: Path, out: Path) -> tuple[Path, int, int]:
    """Write the pack's images under `out` (pair k: `p<k>/0`, `p<k>/1` for a same pair, else
    `p<k>a/0` and `p<k>b/0`, so folders are identities) and `out/pairs_list.txt` in the pack's order,
    one `label enroll test` line per pair. Returns (the list, pairs, same pairs)."""
    from metaemb.core.files import atomic_write_text

    images, flags = read_pack(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out '{out}' exists and is not an empty folder; choose a new one.")
    suffixes = [_suffix(data, path, i) for i, data in enumerate(images)]  # all, before writing
    lines = []
    for k, same in enumerate(flags):
        stems = (f"p{k:05d}/0", f"p{k:05d}/1") if same else (f"p{k:05d}a/0", f"p{k:05d}b/0")
        files = [stem + suffixes[2 * k + j] for j, stem in enumerate(stems)]
        for name, data in zip(files, images[2 * k : 2 * k + 2], strict=True):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
        lines.append(f"{int(same)} {files[0]} {files[1]}")
    atomic_write_text(out / PAIRS, "\n".join(lines) + "\n")  # last: the unpack is complete
    return out / PAIRS, len(flags), sum(flags)


def unpack_bin(
    pack: Annotated[Path, typer.Argument(help="an InsightFace verification pack (.bin)")],
    out: Annotated[Path, typer.Option(help="new folder for its images and pairs_list.txt")],
) -> None:
    """Unpack an InsightFace verification pack (lfw.bin, cfp_fp.bin, agedb_30.bin) into an
    image folder and its pair list, without running code from the pickle."""
    listed, pairs, same = unpack(pack, out)
    typer.echo(
        f"wrote {2 * pairs} images and {pairs} pairs ({same} same, in the pack's order) to "
        f"{out}; score them as the pack's protocol does: metaemb evaluate RUN --data {out} "
        f"--trials {listed} --folds 10"
    )


def write_pack(path: Path, images: Sequence[bytes], flags: Sequence[bool]) -> None:
    """A pack as InsightFace writes one (for tests and for packing lists of your own)."""
    with open(path, "wb") as f:
        pickle.dump((list(images), list(flags)), f, protocol=pickle.HIGHEST_PROTOCOL)
