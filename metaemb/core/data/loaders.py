"""DataLoaders over a prepared dataset: the worker count checked against the machine, ordered
batches for evaluation, and the training loader of every epoch, whose workers persist across
epochs and are reseeded at each (epoch_seeds.py), so a resumed run equals an uninterrupted one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from metaemb.core.data.collate import Collate
from metaemb.core.data.epoch_seeds import epoch_stream
from metaemb.core.errors import ConfigError

if TYPE_CHECKING:
    from metaemb.core.data.dataset import PreparedDataset


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
        collate_fn=Collate(dataset.features, dataset.path_of),
        pin_memory=pin_memory,
        persistent_workers=persistent and workers > 0,
        generator=generator,
    )
    if workers > 0:
        kwargs["prefetch_factor"] = 4
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)


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
