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
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.plugin.interfaces import BatchSampler


class _EpochSampler(BatchSampler):
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
class RandomSampler(_EpochSampler):
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
class PKSampler(_EpochSampler):
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
class PairSampler(_EpochSampler):
    """Random pairs: indices (2i, 2i+1) of a batch form a pair; round(target_ratio × pairs) of
    each batch's pairs are genuine (same identity, two different samples), the rest impostors.
    An epoch has about as many samples as the training set."""

    name = "pairs"

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        target_ratio: float = 0.5,
    ) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size, min_batch=2)
        if not 0.0 <= target_ratio <= 1.0:
            raise ConfigError(f"sampler '{self.name}': target_ratio must be in [0, 1].")
        self._need_identities(2)
        self.target_ratio = target_ratio
        self.pairs_per_batch = batch_size // 2
        self.genuine_per_batch = round(target_ratio * self.pairs_per_batch)
        if self.genuine_per_batch and all(len(m) < 2 for m in self._by_label.values()):
            raise DataError(
                f"sampler '{self.name}': no identity has two samples, so no genuine pair exists."
            )
        # Labels sorted into contiguous runs for vectorised partner draws.
        keys = sorted(self._by_label)
        self._order = torch.tensor([i for key in keys for i in self._by_label[key]])
        counts = torch.tensor([len(self._by_label[key]) for key in keys])
        self._count = counts
        self._start = torch.cumsum(counts, 0) - counts
        lab = torch.empty(len(self.labels), dtype=torch.long)
        pos = torch.empty(len(self.labels), dtype=torch.long)
        for c, key in enumerate(keys):
            members = torch.tensor(self._by_label[key])
            lab[members] = c
            pos[members] = torch.arange(len(members))
        self._lab, self._pos = lab, pos
        self._eligible = torch.nonzero(counts[lab] >= 2).flatten()

    def num_batches(self) -> int:
        return max(1, len(self.labels) // (2 * self.pairs_per_batch))

    def _random_pairs(self, g: torch.Generator, n_gen: int, n_imp: int) -> tuple[Tensor, Tensor]:
        """(genuine [n_gen, 2], impostor [n_imp, 2]) index pairs."""
        n_gen = n_gen if len(self._eligible) else 0  # only when target_ratio made it 0 anyway
        a = self._eligible[torch.randint(max(1, len(self._eligible)), (n_gen,), generator=g)]
        la = self._lab[a]
        off = (torch.rand(n_gen, generator=g) * (self._count[la] - 1)).long()
        b = self._order[self._start[la] + (self._pos[a] + 1 + off) % self._count[la]]
        genuine = torch.stack([a, b], 1)
        n_labels = len(self._count)
        a = torch.randint(len(self.labels), (n_imp,), generator=g)
        other = self._lab[a] + 1 + (torch.rand(n_imp, generator=g) * (n_labels - 1)).long()
        other = other % n_labels
        pick = (torch.rand(n_imp, generator=g) * self._count[other]).long()
        b = self._order[self._start[other] + pick]
        return genuine, torch.stack([a, b], 1)

    def _batches_from(
        self, g: torch.Generator, genuine: Tensor, impostor: Tensor
    ) -> list[list[int]]:
        """Deal pairs into batches of `pairs_per_batch` with `genuine_per_batch` genuine each,
        in a random order within each batch."""
        ng, ni = self.genuine_per_batch, self.pairs_per_batch - self.genuine_per_batch
        batches = []
        for b in range(self.num_batches()):
            pairs = torch.cat([genuine[b * ng : (b + 1) * ng], impostor[b * ni : (b + 1) * ni]])
            pairs = pairs[torch.randperm(len(pairs), generator=g)]
            batches.append(pairs.flatten().tolist())
        return batches

    def _make_batches(self, g: torch.Generator) -> list[list[int]]:
        nb = self.num_batches()
        ng, ni = self.genuine_per_batch, self.pairs_per_batch - self.genuine_per_batch
        genuine, impostor = self._random_pairs(g, nb * ng, nb * ni)
        return self._batches_from(g, genuine, impostor)


class HardPairSampler(PairSampler):
    """Hard-pair selection: `update(embeddings)` (all training samples, dataset order; the same
    tensor on every DDP rank) mines, by cosine similarity, each sample's least similar genuine
    partner and most similar impostor; the next epochs' pairs are the hardest of those (a share
    `1 - hard_fraction` stays random). Before the first update it behaves like "pairs"."""

    name = "hard-pairs"
    updates_from_embeddings = True

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        target_ratio: float = 0.5,
        hard_fraction: float = 1.0,
        chunk: int = 1024,
    ) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size, target_ratio)
        if not 0.0 <= hard_fraction <= 1.0:
            raise ConfigError("sampler 'hard-pairs': hard_fraction must be in [0, 1].")
        self.hard_fraction = hard_fraction
        self.chunk = max(1, chunk)
        self.hard_genuine: Tensor | None = None  # [G, 2], hardest first
        self.hard_impostor: Tensor | None = None

    @torch.no_grad()
    def update(self, embeddings: Tensor, indices: Tensor | None = None) -> None:
        """Mine from the embeddings of the training samples: all of them in dataset order, or
        those whose dataset indices are `indices` (samples that failed to load are left out)."""
        n = len(self.labels)
        rows = len(indices) if indices is not None else n
        if embeddings.ndim != 2 or embeddings.shape[0] != rows:
            raise DataError(
                f"sampler 'hard-pairs': update() needs embeddings [{rows}, d] of the training "
                f"samples in dataset order, got shape {tuple(embeddings.shape)}."
            )
        e = torch.nn.functional.normalize(embeddings.detach().float().cpu(), dim=1)
        valid = torch.ones(n, dtype=torch.bool)
        if indices is not None:
            idx = torch.as_tensor(indices, dtype=torch.long).cpu()
            full = torch.zeros(n, e.shape[1])
            full[idx] = e
            e = full
            valid = torch.zeros(n, dtype=torch.bool)
            valid[idx] = True
        # Hardest genuine partner: within each identity's block of similarities.
        gen_sim, gen_idx = torch.full((n,), float("inf")), torch.full((n,), -1)
        for members in self._by_label.values():
            m = torch.tensor(members)[valid[members]]
            if len(m) < 2:
                continue
            block = (e[m] @ e[m].T).fill_diagonal_(float("inf"))  # not its own partner
            v, j = block.min(1)
            gen_sim[m], gen_idx[m] = v, m[j]
        # Hardest impostor: the most similar sample of another identity, a chunk of rows at once
        # (on the embeddings' device: this is the O(N²) part).
        dev = embeddings.device
        ed, lab, valid_d = e.to(dev), self._lab.to(dev), valid.to(dev)
        imp_sim, imp_idx = torch.full((n,), -float("inf")), torch.full((n,), -1)
        for start in range(0, n, self.chunk):
            rows = torch.arange(start, min(n, start + self.chunk), device=dev)
            sim = ed[rows] @ ed.T
            sim.masked_fill_((lab[rows, None] == lab[None, :]) | ~valid_d[None, :], -float("inf"))
            v, j = sim.max(1)
            ok = valid_d[rows] & torch.isfinite(v)
            imp_sim[rows[ok].cpu()], imp_idx[rows[ok].cpu()] = v[ok].cpu(), j[ok].cpu()
        self.hard_genuine = self._ranked(gen_idx, gen_sim, descending=False)
        self.hard_impostor = self._ranked(imp_idx, imp_sim, descending=True)
        self._version += 1

    @staticmethod
    def _ranked(partner: Tensor, sim: Tensor, descending: bool) -> Tensor:
        """Unique (i, j) pairs with i < j ordered hardest first (ties by index)."""
        ok = partner >= 0
        i = torch.arange(len(partner))[ok]
        j, s = partner[ok], sim[ok]
        pairs = torch.stack([torch.minimum(i, j), torch.maximum(i, j)], 1)
        pairs, inverse = torch.unique(pairs, dim=0, return_inverse=True)
        best = torch.zeros(len(pairs)).scatter_reduce(
            0, inverse, s, "amax" if descending else "amin", include_self=False
        )
        order = torch.sort(best, descending=descending, stable=True).indices
        return pairs[order]

    def _hard(self, g: torch.Generator, ranked: Tensor | None, n_hard: int) -> Tensor:
        """The `n_hard` hardest pairs (repeating the list when it is short), in random order."""
        if ranked is None or len(ranked) == 0 or n_hard == 0:
            return torch.zeros(0, 2, dtype=torch.long)
        reps = -(-n_hard // len(ranked))
        chosen = ranked.repeat(reps, 1)[:n_hard]
        return chosen[torch.randperm(n_hard, generator=g)]

    def _make_batches(self, g: torch.Generator) -> list[list[int]]:
        if self.hard_genuine is None:
            return super()._make_batches(g)
        nb = self.num_batches()
        ng, ni = self.genuine_per_batch, self.pairs_per_batch - self.genuine_per_batch
        hg, hi = round(self.hard_fraction * nb * ng), round(self.hard_fraction * nb * ni)
        hg = hg if len(self.hard_genuine) else 0  # nothing mined (e.g. every sample failed)
        hi = hi if self.hard_impostor is not None and len(self.hard_impostor) else 0
        rg, ri = self._random_pairs(g, nb * ng - hg, nb * ni - hi)
        genuine = torch.cat([self._hard(g, self.hard_genuine, hg), rg])
        impostor = torch.cat([self._hard(g, self.hard_impostor, hi), ri])
        genuine = genuine[torch.randperm(len(genuine), generator=g)]
        impostor = impostor[torch.randperm(len(impostor), generator=g)]
        return self._batches_from(g, genuine, impostor)


# ---------------------------------------------------------------------------------------------
class SubjectSampler(_EpochSampler):
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


class MixedSampler(_EpochSampler):
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
