"""Where training runs: device choice and the torchrun/DDP process group (rank 0 does I/O)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch

from metaemb.core.errors import MetaembError


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA, then MPS, then CPU — or exactly what was asked for (with a clear error if absent)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(requested)
    except (RuntimeError, ValueError, TypeError):
        raise MetaembError(
            f"device '{requested}' (--device) is not a device; use auto, cpu, cuda, cuda:N or mps."
        ) from None
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # torchrun: one GPU per rank
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MetaembError(f"--device {requested}: CUDA is not available on this machine.")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            chosen = f" (under torchrun: cuda:LOCAL_RANK = cuda:{dev.index})" if (
                requested == "cuda") else ""  # fmt: skip
            raise MetaembError(
                f"--device {requested}{chosen}: this process sees {count} CUDA device(s); give "
                "--device cuda:N of those, or let every rank see every GPU."
            )
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise MetaembError(f"--device {requested}: MPS is not available on this machine.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise MetaembError(f"--device {requested}: metaemb runs on cpu, cuda or mps.")
    return dev


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", 1))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)))

    def init(self, device: torch.device) -> None:
        if self.world_size > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda" and device.index is not None:
                # NCCL's object collectives (refuse_differences) run on the *current* device:
                # left unset, every rank of a node would gather on GPU 0
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def refuse_differences(self, seen: dict[str, str], where: str = "") -> None:
        """Every rank must train on the same data and configuration: `seen` (what this rank
        read, e.g. {"data": "24 samples of 4 identities in /data/faces (digest …)"}) is
        compared with rank 0's, and a rank that differs stops every rank with both named
        (DDP would average gradients of other labels, or fail on a shape, naming neither);
        `where` is said beside each rank's value, not compared."""
        if self.world_size <= 1:
            return
        from metaemb.core.errors import DataError

        everyone: list[Any] = [None] * self.world_size
        mine = {"host": socket.gethostname(), "where": where, **seen}
        try:
            torch.distributed.all_gather_object(everyone, mine)
        except RuntimeError as exc:  # gloo's "Connection closed by peer", NCCL's timeout
            raise DataError(
                f"rank {self.rank}: another rank stopped before training started (its own log "
                "says why: a missing data folder, a configuration error…); the process group "
                f"said: {str(exc).splitlines()[0][:200]}"
            ) from None
        first = everyone[0]
        for rank, other in enumerate(everyone[1:], 1):
            for key in seen:
                if other[key] != first[key]:
                    raise DataError(
                        f"rank {rank} (host {other['host']}) sees {key} {other[key]}"
                        f"{other['where']}, rank 0 (host {first['host']}) {first[key]}"
                        f"{first['where']}: every rank must train on the "
                        "same data, configuration and run folder (the same folders on shared "
                        "storage, the same --set on every node)."
                    )
