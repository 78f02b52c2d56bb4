"""NpyFolder: `<identity>/…/<sample>.npy` files, each one precomputed embedding (a 1-D array).

`load` reads with `allow_pickle=False` (a `.npy` of Python objects could run code) and turns every
way a file can be unusable into a DataError that names it: unreadable, not numeric, not 1-D,
empty, or holding NaN/inf. The size is checked later, by the features, which know the size the
network was built for.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from metaemb.core import DataError, SampleFolder
from metaemb.core.plugin.contract import Kind


def read_vector(path: str | Path) -> Tensor:
    """One `.npy` file → float32 tensor [D]; DataError naming the file when it is not a vector."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"vector file '{path}' does not exist.") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"vector file '{path}' is not a readable .npy array of numbers ({exc}). Save vectors "
            "with numpy.save(path, vector) where vector is a 1-D float array."
        ) from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"vector file '{path}' holds {array.dtype} values, not numbers.")
    if array.ndim != 1:
        raise DataError(
            f"vector file '{path}' holds an array of shape {array.shape}; the vectors modality "
            "expects one 1-D embedding per file (a [T, C] feature matrix needs pooling first, e.g. "
            "numpy.concatenate([m.mean(0), m.std(0)]))."
        )
    if array.size == 0:
        raise DataError(f"vector file '{path}' is empty.")
    if not np.isfinite(array).all():
        raise DataError(f"vector file '{path}' contains NaN or infinite values.")
    return torch.from_numpy(array.astype(np.float32, copy=False).copy())


class NpyFolder(SampleFolder):
    """Embeddings under `<root>/<identity>/…/<sample>.npy`; each loads as a float32 tensor [D]."""

    extensions: ClassVar[tuple[str, ...]] = (".npy",)
    what: ClassVar[str] = "vector file"
    yields = Kind("vector")  # float32 [D]; D is checked by the features

    def load(self, path: Path) -> Tensor:
        return read_vector(path)
