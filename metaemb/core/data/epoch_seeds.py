"""The random streams of training epochs: one per (run seed, epoch, DDP rank), from which each
DataLoader worker reseeds torch, numpy and random at its first item of an epoch, so a run resumed
at any epoch draws the same crops and augmentations as an uninterrupted one."""

from __future__ import annotations

import random

import numpy as np
import torch


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
