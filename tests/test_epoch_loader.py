"""The training loader across epochs (core/data/loaders.py `EpochLoader`): with workers, one set
of worker processes serves every epoch, each reseeded per epoch from (seed, epoch, rank, worker
id), so a loader started at epoch e (a resumed run) draws exactly what a loader that lived
through epochs 0 … e−1 draws at epoch e; the main process's RNG is not consumed."""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from metaemb.core.data.dataset import PreparedDataset
from metaemb.core.data.epoch_seeds import epoch_stream
from metaemb.core.data.loaders import EpochLoader

BATCHES = [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9, 10], [11]]


class Folder:
    """Twelve samples whose raw value is their index."""

    def __init__(self) -> None:
        self.root = "."
        self.samples = [SimpleNamespace(path=str(i), label=i % 3) for i in range(12)]

    def __len__(self) -> int:
        return len(self.samples)

    def abspath(self, sample):
        return sample.path

    def load(self, path):
        return int(path)


def keep(raw, path, root):
    return raw


class Draws(torch.nn.Module):
    """Each item: its index, the worker's pid, and one draw from torch, numpy and random."""

    def prepare(self, raw, train):
        draws = [float(torch.rand(())), float(np.random.rand()), random.random()]
        return torch.tensor([raw, os.getpid(), *draws], dtype=torch.float64)

    def collate(self, items):
        return torch.stack(items), None


class Sampler:
    """A batch sampler whose batches are shuffled per epoch (as the engine's samplers are)."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(BATCHES)

    def __iter__(self):
        order = random.Random(self.epoch).sample(BATCHES, len(BATCHES))
        return iter(order)


def epoch_rows(loader: EpochLoader, sampler: Sampler, epoch: int) -> torch.Tensor:
    sampler.set_epoch(epoch)
    rows = torch.cat([b.inputs for b in loader(epoch)])
    return rows[rows[:, 0].argsort()]


def make(workers: int, seed: int = 3) -> tuple[EpochLoader, Sampler]:
    sampler = Sampler()
    ds = PreparedDataset(Folder(), keep, Draws(), train=True)
    return EpochLoader(ds, workers, sampler, seed=seed), sampler


def test_persistent_workers_resume_draws_the_same_numbers():
    loader, sampler = make(workers=2)
    before = torch.get_rng_state()
    try:
        epochs = [epoch_rows(loader, sampler, e) for e in range(3)]
        first = loader.loader
        assert loader(2) is first  # one DataLoader, its workers kept
        pids = [set(rows[:, 1].tolist()) for rows in epochs]
        assert len(pids[0]) == 2 and pids[0] == pids[1] == pids[2]  # the same two processes
    finally:
        loader.close()
    assert torch.equal(torch.get_rng_state(), before)  # the main RNG was not drawn from
    for e in (1, 2):  # "resumed" at epoch e: fresh workers, the same numbers
        resumed, s = make(workers=2)
        try:
            got = epoch_rows(resumed, s, e)
        finally:
            resumed.close()
        assert torch.equal(got[:, 2:], epochs[e][:, 2:]), e
        assert set(got[:, 1].tolist()).isdisjoint(pids[0])  # really other processes
    for a, b in ((0, 1), (1, 2)):  # each epoch (and each library) draws anew
        assert not torch.equal(epochs[a][:, 2:], epochs[b][:, 2:])
    other, s = make(workers=2, seed=4)
    try:
        assert not torch.equal(epoch_rows(other, s, 1)[:, 2:], epochs[1][:, 2:])
    finally:
        other.close()


def test_without_workers_items_draw_from_the_main_rng():
    """Unchanged single-process behaviour: the checkpointed main RNG decides the draws."""
    loader, sampler = make(workers=0)
    torch.manual_seed(0)
    a = epoch_rows(loader, sampler, 1)
    torch.manual_seed(0)
    b = epoch_rows(loader, sampler, 1)
    assert loader.loader is None
    assert torch.equal(a[:, 2], b[:, 2])
    torch.manual_seed(1)
    assert not torch.equal(epoch_rows(loader, sampler, 1)[:, 2], a[:, 2])


@pytest.mark.parametrize("args", [(0, 0, 1), (0, 1, 0), (1, 0, 0)])
def test_epoch_streams_differ_by_seed_epoch_and_rank(args):
    assert epoch_stream(0, 0, 0) != epoch_stream(*args)
    assert 0 <= epoch_stream(*args) < 2**63 and epoch_stream(*args) == epoch_stream(*args)
