"""The sample pipeline shared by training, evaluation and enrollment: load → frontend → prepare.

Bad samples either stop the run with the file named (`data.on_bad_sample = "error"`) or are
skipped, counted and listed (`"skip"`). Training with workers keeps them across epochs
(`EpochLoader`) and reseeds their random streams at each epoch, so a resumed run draws the same
crops and augmentations as an uninterrupted one.

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
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from metaemb.core.errors import (
    ConfigError,
    DataError,
    DatasetError,
    MetaembError,
    first_few,
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


def load_raw(folder: SampleFolder, sample: Any) -> Any:
    """`folder.load` of one sample; anything but a metaemb error (a plugin folder's ValueError
    on a corrupt row, say) becomes a DataError naming the folder, so the file is named and
    `on_bad_sample = "skip"` can skip it like any unreadable file."""
    try:
        return folder.load(folder.abspath(sample))
    except (MetaembError, MemoryError):
        raise
    except Exception as exc:
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
    precision), and NaN or inf refused here, where the file is known, not as a diverged loss."""
    if not isinstance(x, Tensor):  # a list or numpy array would also skip the NaN check below
        raise ConfigError(
            f"{described(features, 'features')}: prepare returned a {type(x).__name__}; it "
            "must return one torch.Tensor without batch dimension (e.g. torch.as_tensor(...))."
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


@dataclass
class Batch:
    inputs: Tensor
    lengths: Tensor | None
    labels: Tensor
    indices: Tensor
    bad: list[Bad] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


class Collate:
    """Picklable collate function: batches prepared tensors with the Features' own collate."""

    def __init__(self, features: Features) -> None:
        self.features = features

    def __call__(self, items: list[Any]) -> Batch:
        bad = [it for it in items if isinstance(it, Bad)]
        good = [it for it in items if not isinstance(it, Bad)]
        if not good:
            return Batch(
                torch.zeros(0), None, torch.zeros(0, dtype=torch.long), torch.zeros(0), bad
            )
        items = [g[0] for g in good]
        try:
            out = self.features.collate(items)
        except (MetaembError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # a plugin's collate: named, with what it was given
            shapes = first_few((tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                                for x in items), 3, quote=False)  # fmt: skip
            raise ConfigError(
                f"{described(self.features, 'features')}: collate failed on {len(items)} "
                f"prepared items ({shapes}): {type(exc).__name__}: {exc}{_layout_hint(items)}"
            ) from exc
        inputs, lengths = checked_batch(out, items, self.features)
        labels = torch.tensor([g[1] for g in good], dtype=torch.long)
        indices = torch.tensor([g[2] for g in good], dtype=torch.long)
        return Batch(inputs, lengths, labels, indices, bad)


def _layout_hint(items: Sequence[Any]) -> str:
    """Items that differ only in their first axis were prepared time-first ([T, C]): the time
    axis, the one padded and measured by lengths, is the last ([C, T])."""
    shapes = {tuple(x.shape) for x in items if isinstance(x, Tensor) and x.dim() >= 2}
    if len(shapes) > 1 and len({s[1:] for s in shapes}) == 1:
        return (
            " The items differ in their first axis only: prepare gives the varying axis last "
            "([channels, steps]); padding and lengths are along the last axis."
        )
    if len(shapes) > 1 and len({s[:-1] for s in shapes}) == 1:
        return (
            " The items differ in their last axis: the base collate only stacks equal shapes; "
            "features of varying length pad in their own collate to [N, …, steps_max] and "
            "return the lengths."
        )
    return ""


def checked_batch(out: Any, items: Sequence[Tensor], features: Any) -> tuple[Tensor, Any]:
    """What `Features.collate` returned, refused by name when it breaks the contract: a
    [N, …] tensor, and lengths None (nothing padded) or an integer tensor [N]."""
    name, n = described(features, "features"), len(items)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Tensor)):
        raise ConfigError(f"{name}: collate must return (batch tensor, lengths or None); it "
                          f"returned a {type(out).__name__}.")  # fmt: skip
    batch, lengths = out
    if batch.dim() == 0 or batch.shape[0] != n:
        raise ConfigError(f"{name}: collate returned a batch of shape {list(batch.shape)} for "
                          f"{n} items; its first axis must be the {n} items.")  # fmt: skip
    steps = [x.shape[-1] for x in items if x.dim() > 0]
    if lengths is None and steps and min(steps) < max(steps) == batch.shape[-1]:
        raise ConfigError(  # padded (not cropped to a common length) without saying where
            f"{name}: prepare gave items of {min(steps)} to {max(steps)} steps, collate padded "
            "them and returned lengths None: return their valid lengths along the last axis as "
            "an int64 tensor [N], so the network can mask the padding."
        )
    if lengths is not None and not (isinstance(lengths, Tensor) and lengths.shape == (n,)
              and not lengths.is_floating_point() and lengths.dtype != torch.bool):  # fmt: skip
        got = f"shape {list(lengths.shape)}, {lengths.dtype}" if isinstance(lengths, Tensor) else (
            type(lengths).__name__)  # fmt: skip
        raise ConfigError(f"{name}: collate returned lengths as {got}; they must be an int64 "
                          f"tensor [{n}] (torch.tensor(lengths, dtype=torch.long)).")  # fmt: skip
    if lengths is not None:
        check_lengths_fit(lengths, batch, f"{name}: collate")
    return batch, lengths


def check_lengths_fit(lengths: Tensor, x: Tensor, who: str) -> None:
    """Each length counts one item's valid steps along x's last axis: 1 to x.shape[-1]. A
    length past the padding (or 0) made pooling read padding (or divide by zero) silently."""
    steps = x.shape[-1] if x.dim() > 1 else 0
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or high > steps:
        axis = next((i for i in range(1, x.dim() - 1) if low >= 1 and high <= x.shape[i]), None)
        hint = (f" They fit axis {axis}: the steps must be the last axis ([batch, channels, "
                "steps]); transpose the tensor." if axis is not None else "")  # fmt: skip
        raise ConfigError(
            f"{who} returned lengths from {low} to {high} for a batch of {steps} steps along "
            f"its last axis ({list(x.shape)}); each length counts one item's valid steps, 1 to "
            f"{steps}.{hint}"
        )


WORKERS_PER_CORE = 4  # DataLoader processes that still make sense per CPU core (I/O waits)


def check_workers(workers: int) -> int:
    """`workers`, refused when it is far above what the machine can run: `--workers 1000` (a
    typo) started a thousand processes, each with a copy of the dataset's index."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = WORKERS_PER_CORE * max(1, cores or 1)
    if workers > limit:
        raise ConfigError(
            f"--workers {workers} (data.workers) asks for {workers} data-loading processes on a "
            f"machine with {cores} CPU cores; use at most {limit} ({WORKERS_PER_CORE} per core), "
            "or 0 to load in the main process."
        )
    return workers


def make_loader(
    dataset: PreparedDataset,
    workers: int,
    batch_size: int | None = None,
    batch_sampler: Any = None,
    pin_memory: bool = False,
    persistent: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A DataLoader over `dataset` (ordered batches for evaluation, or a batch sampler);
    `persistent` keeps its workers between iterations (only with workers)."""
    kwargs: dict[str, Any] = dict(
        num_workers=check_workers(workers),
        collate_fn=Collate(dataset.features),
        pin_memory=pin_memory,
        persistent_workers=persistent and workers > 0,
        generator=generator,
    )
    if workers > 0:
        kwargs["prefetch_factor"] = 4
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)


# -- training across epochs ----------------------------------------------------------------------
def epoch_stream(seed: int, epoch: int, rank: int = 0) -> int:
    """The random stream of one epoch of one DDP rank, as a 63-bit integer."""
    entropy = [seed % 2**64, epoch, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def seed_worker(stream: int) -> None:
    """Seed torch, numpy and random of this DataLoader worker from (`stream`, worker id)."""
    info = torch.utils.data.get_worker_info()
    if info is None:  # the main process: its streams are the checkpoint's, never reseeded here
        return
    state = np.random.SeedSequence([stream, info.id])
    words = state.generate_state(2, np.uint32)
    torch.manual_seed(int(words[0]) << 32 | int(words[1]))
    np.random.seed(int(words[0]))
    random.seed(int(words[0]) << 32 | int(words[1]))


class EpochBatches:
    """A batch sampler's batches with every index tagged by the current epoch's stream, so each
    worker reseeds (`seed_worker`) at its first item of an epoch. Set `stream` before iterating."""

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.stream = 0

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        stream = self.stream
        for batch in self.batch_sampler:
            yield [(stream, int(i)) for i in batch]


class EpochLoader:
    """The training DataLoader of every epoch (`loader(epoch)`).

    Without workers: a new loader per epoch; items draw from the main process's RNG, which a
    checkpoint holds. With workers: one loader whose workers persist across epochs (no start-up
    per epoch), each worker's torch/numpy/random reseeded at the start of every epoch from (run
    seed, epoch, rank, worker id), and the loader's own seed drawn from a private generator, not
    the main RNG: an uninterrupted run and one resumed at any epoch draw the same random numbers.
    Batches go to workers round-robin from worker 0 each epoch, so each worker's items, in order,
    are fixed by the sampler. The workers hold the copy of the dataset made when they started:
    changes made to it in the main process later (between epochs) do not reach them.
    """

    def __init__(
        self,
        dataset: PreparedDataset,
        workers: int,
        batch_sampler: Any,
        seed: int,
        rank: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.dataset, self.workers, self.batch_sampler = dataset, workers, batch_sampler
        self.seed, self.rank, self.pin_memory = seed, rank, pin_memory
        self.batches = EpochBatches(batch_sampler)
        self.loader: DataLoader | None = None

    def __call__(self, epoch: int) -> DataLoader:
        if self.workers == 0:
            return make_loader(
                self.dataset, 0, batch_sampler=self.batch_sampler, pin_memory=self.pin_memory
            )
        self.batches.stream = epoch_stream(self.seed, epoch, self.rank)
        if self.loader is None:
            self.loader = make_loader(
                self.dataset,
                self.workers,
                batch_sampler=self.batches,
                pin_memory=self.pin_memory,
                persistent=True,
                generator=torch.Generator().manual_seed(self.seed),
            )
        return self.loader

    def close(self) -> None:
        """Stop the persistent workers (they also stop when the loader is garbage-collected)."""
        loader, self.loader = self.loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
