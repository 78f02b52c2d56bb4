"""The random streams a training process draws from (torch's, its CUDA device's, numpy's and
Python's), as checkpoints keep them: every rank's under torchrun, in the types a weights-only
checkpoint holds, so a resumed run continues them as an uninterrupted one would.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rank_rng_states(world_size: int) -> list[Any] | None:
    """Every rank's random streams (CPU, and its CUDA device's) in a distributed run, gathered
    on every rank: ranks draw different augmentations, so each needs its own back on resume.
    None in one process (the checkpoint's own `rng` is that process's)."""
    if world_size <= 1:
        return None
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    mine = (torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None, host_rng_state())
    states: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(states, mine)
    return states


def restore_rng(state: dict[str, Any], rank: int, world_size: int) -> None:
    """The random streams of `state` for this rank: its own when the run saved every rank's on
    the same number of ranks, else the saving rank's (a resume on other ranks draws anew)."""
    per_rank = state.get("rng_by_rank")
    if isinstance(per_rank, list) and len(per_rank) == world_size:
        cpu, cuda, host = (*per_rank[rank], None)[:3]  # host: absent before it was kept
        torch.set_rng_state(cpu)
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda)
        set_host_rng_state(host)
        return
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    set_host_rng_state(state.get("host_rng"))


def host_rng_state() -> dict[str, Any]:
    """numpy's and Python's global random states, in the types a weights-only checkpoint
    holds (tensors, numbers, lists): an augmentation running in the training process may
    draw from them, and a resumed run must continue them."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, words, gauss = random.getstate()
    return {
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": [version, list(words), gauss],
    }


def set_host_rng_state(state: dict[str, Any] | None) -> None:
    """Restore what `host_rng_state` kept (nothing for a checkpoint from before it was)."""
    if not state:
        return
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
