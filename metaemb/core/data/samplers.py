"""Batch samplers: the batch structures objectives ask for.

Every sampler builds all batches of an epoch from a generator seeded by (seed, epoch), so every
DDP rank computes the same list and the base class hands rank r of w every w-th batch (the last
`len % w` batches are dropped so all ranks run the same number of steps). Batches are lists of
dataset indices.

- "random":     shuffled samples.
- "pk":         P identities × K samples per batch (triplet mining).
- "pairs":      consecutive indices (2i, 2i+1) of a batch form a pair; a fixed share are genuine.
- "subject":    subject-by-subject: all samples of one identity together, identities shuffled.
- "mixed":      half subject-by-subject, half random samples of other identities (open set).
- "hard-pairs": like "pairs", but after `update(embeddings)` the pairs are the most confusable
                genuine and impostor pairs under the latest embeddings.

The pair samplers ("pairs", "hard-pairs") are in core/data/pair_samplers.py.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.plugin.interfaces import BatchSampler


class EpochSampler(BatchSampler):
    """Caches one epoch's batches (`__iter__` and `__len__` both ask for them)."""

    name = "sampler"

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        min_batch: int = 1,
    ) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size)
        if not self.labels:
            raise DataError(f"sampler '{self.name}': the training set has no samples.")
        if batch_size < min_batch:
            raise ConfigError(
                f"sampler '{self.name}': batch_size must be at least {min_batch}, got {batch_size}."
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"sampler '{self.name}': rank {rank} of world_size {world_size}.")
        self._version = 0  # bumped when the sampler's state changes (hard-pairs update)
        self._cache: tuple[tuple[int, int], list[list[int]]] | None = None
        self._by_label: dict[int, list[int]] = {}
        for i, label in enumerate(self.labels):
            self._by_label.setdefault(int(label), []).append(i)

    def all_batches(self) -> list[list[int]]:
        key = (self.epoch, self._version)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._make_batches(self.generator()))
        return self._cache[1]

    @abc.abstractmethod
    def _make_batches(self, g: torch.Generator) -> list[list[int]]:
        """Every batch of the epoch whose generator is `g`."""

    def _need_identities(self, n: int) -> None:
        if len(self._by_label) < n:
            raise DataError(
                f"sampler '{self.name}' needs at least {n} identities in the training set, "
                f"found {len(self._by_label)}."
            )

    def _shuffled_identities(self, g: torch.Generator, shuffle_within: bool) -> list[list[int]]:
        """Each identity's sample indices (optionally shuffled), identities in random order."""
        keys = sorted(self._by_label)
        out = []
        for k in torch.randperm(len(keys), generator=g).tolist():
            members = self._by_label[keys[k]]
            if shuffle_within:
                members = [members[j] for j in torch.randperm(len(members), generator=g).tolist()]
            out.append(list(members))
        return out


def _pack(groups: list[list[int]], size: int) -> list[list[int]]:
    """Pack whole groups into batches of at most `size`; a group larger than `size` is split."""
    batches: list[list[int]] = []
    current: list[int] = []
    for group in groups:
        pieces = [group[i : i + size] for i in range(0, len(group), size)]
        for piece in pieces:
            if len(current) + len(piece) > size:
                batches.append(current)
                current = []
            current = current + piece
    if current:
        batches.append(current)
    return batches


# ---------------------------------------------------------------------------------------------
class RandomSampler(EpochSampler):
    """Shuffled samples; `drop_last` drops the final short batch (kept when it is the only one)."""

    name = "random"

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size)
        self.drop_last = drop_last

    def _make_batches(self, g: torch.Generator) -> list[list[int]]:
        order = torch.randperm(len(self.labels), generator=g).tolist()
        bs = self.batch_size
        batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        if self.drop_last and len(batches) > 1 and len(batches[-1]) < bs:
            batches.pop()
        return batches


# ---------------------------------------------------------------------------------------------
class PKSampler(EpochSampler):
    """P identities × K samples per batch, P = batch_size // K.

    Each epoch every identity's shuffled samples are cut into chunks of K (an identity with fewer
    than K samples gives one chunk drawn with replacement); batches take one chunk from each of P
    random identities that still have chunks, until fewer than P remain. With fewer than P
    identities in the set, P is the number of identities.
    """

    name = "pk"

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        k: int = 4,
    ) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size)
        if k < 1 or batch_size < 2 * k:
            raise ConfigError(
                f"sampler 'pk': need k >= 1 and batch_size >= 2*k (two identities per batch); "
                f"got k={k}, batch_size={batch_size}."
            )
        self._need_identities(2)
        self.k = k
        self.p = min(batch_size // k, len(self._by_label))

    def _make_batches(self, g: torch.Generator) -> list[list[int]]:
        k = self.k
        chunks: list[list[list[int]]] = []
        for members in self._shuffled_identities(g, shuffle_within=True):
            if len(members) < k:
                extra = torch.randint(len(members), (k - len(members),), generator=g).tolist()
                chunks.append([members + [members[j] for j in extra]])
            else:
                chunks.append([members[i : i + k] for i in range(0, len(members) - k + 1, k)])
        batches = []
        available = [i for i, c in enumerate(chunks) if c]
        while len(available) >= self.p:
            pick = torch.randperm(len(available), generator=g)[: self.p].tolist()
            batch: list[int] = []
            for j in sorted(pick):
                batch.extend(chunks[available[j]].pop())
            batches.append(batch)
            available = [i for i in available if chunks[i]]
        return batches


# ---------------------------------------------------------------------------------------------
class SubjectSampler(EpochSampler):
    """Subject-by-subject batches (as GME softmax training used): identities in random order, each
    identity's samples kept together; whole identities are packed into batches of at most
    batch_size (an identity larger than a batch fills several consecutive batches)."""

    name = "subject"

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_within: bool = True,
    ) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size)
        self.shuffle_within = shuffle_within

    def _make_batches(self, g: torch.Generator) -> list[list[int]]:
        return _pack(self._shuffled_identities(g, self.shuffle_within), self.batch_size)


class MixedSampler(EpochSampler):
    """Half subject-by-subject, half random open-set samples (the "lazy approximate Gibbs" order).

    Each epoch the identities are split at random into two groups of about equal sample count: the
    first group's identities are packed whole into the first half of each batch, the second
    group's samples, shuffled, fill the second half (so the two halves never share an identity;
    the open-set stream is reshuffled when it runs out).
    """

    name = "mixed"

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size, min_batch=2)
        self._need_identities(2)

    def _make_batches(self, g: torch.Generator) -> list[list[int]]:
        groups = self._shuffled_identities(g, shuffle_within=True)
        # The subject group: at least one identity, at most all but one, about half the samples.
        taken, split = len(groups[0]), 1
        while split < len(groups) - 1 and taken + len(groups[split]) <= len(self.labels) / 2:
            taken += len(groups[split])
            split += 1
        subject = _pack(groups[:split], self.batch_size // 2)
        pool = torch.tensor([i for grp in groups[split:] for i in grp])
        stream: list[int] = []
        batches = []
        for part in subject:
            need = self.batch_size - len(part)
            while len(stream) < need:
                stream.extend(pool[torch.randperm(len(pool), generator=g)].tolist())
            batches.append(part + stream[:need])
            stream = stream[need:]
        return batches
