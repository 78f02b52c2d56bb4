"""Pair samplers: batches whose consecutive indices (2i, 2i+1) form genuine or impostor pairs.

- "pairs":      a fixed share of each batch's pairs are genuine, the rest impostors, drawn at random.
- "hard-pairs": like "pairs", but after `update(embeddings)` the pairs are the most confusable
                genuine and impostor pairs under the latest embeddings (re-mined on resume).

Like every sampler (core/data/samplers.py), all batches of an epoch come from a generator seeded
by (seed, epoch), so every DDP rank computes the same list.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from metaemb.core.data.samplers import EpochSampler
from metaemb.core.errors import ConfigError, DataError


class PairSampler(EpochSampler):
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
