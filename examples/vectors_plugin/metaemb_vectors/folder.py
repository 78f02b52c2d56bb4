"""`.npy` sample folders: one precomputed embedding per file (`npy`, a 1-D array) or one feature
matrix per file (`npy-matrix`, a 2-D [channels, frames] array, e.g. filterbanks someone extracted).

`load` reads with `allow_pickle=False` (a `.npy` of Python objects could run code) and turns every
way a file can be unusable into a DataError that names it: unreadable, not numeric, the wrong
number of dimensions, empty, or holding NaN/inf. Sizes are checked later, by the features, which
know the size the network was built for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from metaemb.core import DataError, Sample, SampleFolder
from metaemb.core.plugin.contract import Kind


def read_array(path: str | Path) -> np.ndarray:
    """One `.npy` file → a finite numeric array; DataError naming the file otherwise."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f".npy file '{path}' does not exist.") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            f".npy file '{path}' is not a readable .npy array of numbers ({exc}). Save arrays "
            "with numpy.save(path, array) where array holds floats."
        ) from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise DataError(f".npy file '{path}' holds {array.dtype} values, not numbers.")
    if array.size == 0:
        raise DataError(f".npy file '{path}' is empty.")
    if not np.isfinite(array).all():
        raise DataError(f".npy file '{path}' contains NaN or infinite values.")
    return array


def read_vector(path: str | Path) -> Tensor:
    """One `.npy` file → float32 tensor [D]; DataError naming the file when it is not a vector."""
    array = read_array(path)
    if array.ndim != 1:
        raise DataError(
            f"vector file '{path}' holds an array of shape {array.shape}; the vectors modality "
            "expects one 1-D embedding per file (a [T, C] feature matrix needs pooling first, e.g. "
            "numpy.concatenate([m.mean(0), m.std(0)]), or use data.folder=npy-matrix)."
        )
    return torch.from_numpy(array.astype(np.float32, copy=False).copy())


class NpyFolder(SampleFolder):
    """Embeddings under `<root>/<identity>/…/<sample>.npy`; each loads as a float32 tensor [D]."""

    extensions: ClassVar[tuple[str, ...]] = (".npy",)
    what: ClassVar[str] = "vector file"
    yields = Kind("vector")  # float32 [D]; D is checked by the features

    def load(self, path: Path) -> Tensor:
        return read_vector(path)


class NpyMatrixFolder(SampleFolder):
    """Feature matrices under `<root>/<identity>/…/<sample>.npy`; each loads as float32
    [channels, frames] — the layout of metaemb's filterbank features, so the built-in features
    `none` and the audio plugin's x-vector/ECAPA backbones take them as they are. Files written in
    Kaldi's [frames, channels] order need `folder.transpose = true`."""

    extensions: ClassVar[tuple[str, ...]] = (".npy",)
    what: ClassVar[str] = "feature-matrix file"
    yields = Kind("feature-matrix")

    def __init__(
        self, root: str | Path, samples: Sequence[Sample] | None = None, transpose: bool = False
    ) -> None:
        self.transpose = transpose
        super().__init__(root, samples)

    def load(self, path: Path) -> Tensor:
        array = read_array(path)
        if array.ndim != 2:
            raise DataError(
                f"feature-matrix file '{path}' holds an array of shape {array.shape}; expected a "
                "2-D [channels, frames] matrix (for one embedding per file use data.folder=npy)."
            )
        if self.transpose:
            array = array.T
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
