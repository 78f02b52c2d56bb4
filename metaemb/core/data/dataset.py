"""The sample pipeline shared by training, evaluation and enrollment: load → frontend → prepare.

Bad samples either stop the run with the file named (`data.on_bad_sample = "error"`) or are
skipped, counted and listed (`"skip"`). Items are batched in collate.py and loaded (with workers
kept and reseeded across epochs, so a resumed run draws the same crops and augmentations as an
uninterrupted one) in loaders.py.

Windowed training reads: when the Features' training `prepare` is a uniform random crop
(`features.train_crop()` → its length), the frontend knows which samples it keeps without the
samples (`frontend.kept_ranges(path, root, n)` → ranges, e.g. a cached VAD decision) and the folder
can read a window (`folder.load_window(path, choose)`), a training item reads only the window its
crop needs — the same random draw, the same samples as load → frontend → prepare. Any of the three
may decline (None): the item is then made the usual way. These methods are optional.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from metaemb.core.data.epoch_seeds import seed_worker
from metaemb.core.errors import (
    ConfigError,
    DataError,
    DatasetError,
    MetaembError,
    PluginError,
    first_line,
)
from metaemb.core.plugin.components import described
from metaemb.core.plugin.contract import name_file
from metaemb.core.plugin.interfaces import Features, Frontend, SampleFolder


@dataclass
class Bad:
    """Marker for a sample that failed to load (only with on_bad_sample='skip')."""

    index: int
    path: str
    error: str


class PreparedDataset(Dataset):
    """Items are (tensor, label, index) for the samples of `folder` (optionally a subset)."""

    def __init__(
        self,
        folder: SampleFolder,
        frontend: Frontend,
        features: Features,
        train: bool,
        on_bad_sample: str = "error",
        indices: Sequence[int] | None = None,
    ) -> None:
        self.folder = folder
        self.frontend = frontend
        # A private CPU copy: the model's own Features may move to the GPU.
        self.features = copy.deepcopy(features).cpu()
        self.train = train
        self.on_bad_sample = on_bad_sample
        self.indices = list(range(len(folder))) if indices is None else list(indices)
        self._stream: int | None = None  # the epoch stream this (worker's) copy was seeded for
        crop = getattr(self.features, "train_crop", None)
        windowed = hasattr(folder, "load_window") and hasattr(frontend, "kept_ranges")
        self.crop: int | None = crop() if train and windowed and callable(crop) else None
        self._short: set[int] = set()  # shorter than the crop: not worth asking for a window

    def path_of(self, index: int) -> str:
        """The path of the folder's sample `index` (what `__getitem__` returns as its index)."""
        return self.folder.samples[index].path

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int, int] | Bad:
        if isinstance(key, tuple):  # (epoch stream, i) from EpochBatches: reseed once per epoch
            stream, i = key
            if stream != self._stream:
                self._stream = stream
                seed_worker(stream)
        else:
            i = key
        index = self.indices[i]
        sample = self.folder.samples[index]
        try:
            x = self._window(index, sample) if self.crop and index not in self._short else None
            if x is None:
                raw = load_raw(self.folder, sample)
                with failing_on_this_file(self.frontend, "frontend", "its __call__"):
                    raw = self.frontend(raw, sample.path, self.folder.root)
                with torch.no_grad(), failing_on_this_file(self.features, "features", "prepare"):
                    x = self.features.prepare(raw, self.train)
                try:
                    x = checked_values(x, self.features)
                except DataError:
                    _refuse_a_nonfinite_frontend(raw, self.frontend)
                    raise
            else:
                x = checked_values(x, self.features)
        except DatasetError:
            raise  # a file of the whole dataset: not this sample's fault, never skipped
        except DataError as exc:
            exc = name_file(exc, sample.path)  # components need not know which file they got
            if self.on_bad_sample == "skip":
                return Bad(index, sample.path, str(exc))
            if "on_bad_sample" not in str(exc):  # the way on; commands after training reword it
                text = str(exc).rstrip().removesuffix(".")
                exc = type(exc)(
                    f"{text} (with on_bad_sample='skip' it is skipped: train --on-bad-sample skip)."
                )
            raise exc from None
        return x, sample.label, index

    def _window(self, index: int, sample: Any) -> Tensor | None:
        """The training crop read through a window (see the module's docstring), or None."""
        crop, chosen = self.crop, []

        def choose(n: int) -> tuple[int, int] | None:
            ranges = self.frontend.kept_ranges(sample.path, self.folder.root, n)
            if not ranges:  # not known (yet): the usual way
                return None
            total = sum(e - s for s, e in ranges)
            if total < crop:  # prepare tiles it, from all of it: the usual way, from now on
                self._short.add(index)  # (a hint only: the usual way is always right)
                return None
            start = int(torch.randint(0, total - crop + 1, ()).item())  # prepare's draw
            chosen.extend(crop_pieces(ranges, start, crop))
            return chosen[0][0], chosen[-1][1]

        span = self.folder.load_window(self.folder.abspath(sample), choose)
        if span is None:
            return None
        base = chosen[0][0]
        if len(chosen) == 1:
            return span.to(torch.float32)
        return torch.cat([span[s - base : e - base] for s, e in chosen]).to(torch.float32)


#: exceptions that say the code is wrong, not the file (a misspelt attribute, a wrong call),
#: when the component's own code raised them: never taken for a bad sample, which
#: `on_bad_sample = "skip"` would silently leave out (a library reading a damaged file, pickle's
#: AttributeError, still marks a bad file)
CODE_ERRORS = (AttributeError, NameError, ImportError, NotImplementedError)


def _raised_by_its_own_code(exc: BaseException, component: Any) -> bool:
    """Whether the innermost frame of `exc` lies in the package that defines `component`: an
    error of its own code, not one a library (pickle, torch.load, PIL) raises on a damaged
    file."""
    import sys
    from pathlib import Path

    module = type(component).__module__
    top = sys.modules.get(module.split(".")[0])
    where = getattr(top, "__file__", None)
    if not where:
        return True
    root = Path(where).resolve()
    root = root.parent if root.name == "__init__.py" else root
    tb = exc.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    raised = Path(tb.tb_frame.f_code.co_filename).resolve()
    return raised == root or root in raised.parents


def _is_code_error(exc: BaseException, component: Any) -> bool:
    """A CODE_ERRORS exception raised in the component's own code; an AttributeError only
    when an attribute lookup failed (pickle's "Can't get attribute" on a damaged file is
    raised by hand, with no attribute name)."""
    if not isinstance(exc, CODE_ERRORS):
        return False
    if isinstance(exc, AttributeError) and getattr(exc, "name", None) is None:
        return False
    return _raised_by_its_own_code(exc, component)


def _refuse_a_code_error(exc: Exception, component: Any, kind: str, method: str) -> None:
    if _is_code_error(exc, component):
        raise PluginError(
            f"{described(component, kind)} failed in {method}: {type(exc).__name__}: "
            f"{first_line(exc)}. That is an error in its code, not in the file, so it is not "
            "skipped as a bad sample: fix the component (a sample it cannot handle should "
            "raise DataError saying what is wrong)."
        ) from exc


def load_raw(folder: SampleFolder, sample: Any) -> Any:
    """`folder.load` of one sample; anything but a metaemb error (a plugin folder's ValueError
    on a corrupt row, say) becomes a DataError naming the folder, so the file is named and
    `on_bad_sample = "skip"` can skip it like any unreadable file; a code error (CODE_ERRORS)
    stops, naming the folder."""
    try:
        return folder.load(folder.abspath(sample))
    except (MetaembError, MemoryError):
        raise
    except Exception as exc:
        _refuse_a_code_error(exc, folder, "sample folder", "load")
        why = first_line(exc)
        raise DataError(
            f"{described(folder, 'sample folder')} failed to load it: {type(exc).__name__}: "
            f"{why} (a folder's load should raise DataError saying what is wrong)."
        ) from exc


@contextlib.contextmanager
def failing_on_this_file(component: Any, kind: str, method: str) -> Iterator[None]:
    """A frontend or features failing on one sample (no heartbeat found in a short record, an
    index past the end) becomes a DataError naming the component, so the file is named and
    `on_bad_sample = "skip"` can skip it, as a folder's failing `load` is."""
    try:
        yield
    except (MetaembError, MemoryError):
        raise
    except Exception as exc:
        _refuse_a_code_error(exc, component, kind, method)
        why = first_line(exc)
        raise DataError(
            f"{described(component, kind)} failed on it in {method}: {type(exc).__name__}: "
            f"{why} (a component meeting data it cannot handle should raise DataError "
            "saying what is wrong)."
        ) from exc


def _refuse_a_nonfinite_frontend(raw: Any, frontend: Any) -> None:
    """Prepared values hold NaN: when the frontend's own output already did, name it, not the
    features that only carried the NaN on."""
    values = raw.detach().cpu().numpy() if isinstance(raw, Tensor) else raw
    if (
        isinstance(values, np.ndarray)
        and values.dtype.kind in "fc"
        and not np.isfinite(values).all()
    ):
        raise DataError(
            f"{described(frontend, 'frontend')} gave NaN or inf values (the features only "
            "carried them on): a division by zero, or a sample it cannot handle."
        )


def checked_values(x: Any, features: Any = None) -> Any:
    """A prepared sample as the network takes it: float64 narrowed to float32 (the network's
    precision); NaN or inf, and an empty sample (a frontend that shortens time left no step),
    refused here, where the file is known, not as a diverged loss or a failed batch."""
    if not isinstance(x, Tensor):  # a list or numpy array would also skip the NaN check below
        raise ConfigError(
            f"{described(features, 'features')}: prepare returned a {type(x).__name__}; it "
            "must return one torch.Tensor without batch dimension (e.g. torch.as_tensor(...))."
        )
    if x.numel() == 0:  # collate or the network would fail on the batch, naming no file
        made_by = f" by {described(features, 'features')}" if features is not None else ""
        raise DataError(
            f"it was prepared{made_by} as an empty tensor (shape {list(x.shape)}): a sample "
            "too short for the frontend or features, which left nothing of it."
        )
    if x.is_floating_point():
        if x.dtype == torch.float64:
            x = x.float()
        if not torch.isfinite(x).all():
            made_by = f" by {described(features, 'features')}" if features is not None else ""
            raise DataError(
                f"its values prepared{made_by} hold NaN or inf (a silent, constant or corrupt "
                "sample, or a frontend or features that divide by zero)."
            )
    return x


def crop_pieces(
    ranges: Sequence[tuple[int, int]], start: int, length: int
) -> list[tuple[int, int]]:
    """The parts of `ranges` (sorted, disjoint [s, e)) holding positions [start, start + length)
    of their concatenation, as ranges of the original positions."""
    pieces, pos, end = [], 0, start + length
    for s, e in ranges:
        lo, hi = max(start - pos, 0), min(end - pos, e - s)
        if lo < hi:
            pieces.append((s + lo, s + hi))
        pos += e - s
        if pos >= end:
            break
    return pieces
