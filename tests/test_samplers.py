"""Batch samplers: batch structure, determinism given (seed, epoch), DDP sharding."""

from __future__ import annotations

import pytest
import torch

from metaemb.core.data import pair_samplers as ps
from metaemb.core.data import samplers as s
from metaemb.core.errors import ConfigError, DataError

# 10 identities of 2..7 samples, interleaved so indices do not follow labels.
SIZES = [2, 3, 4, 5, 6, 7, 2, 3, 4, 5]
LABELS = [lab for rnd in range(7) for lab, n in enumerate(SIZES) if rnd < n]
ALL = {
    "random": s.RandomSampler,
    "pk": s.PKSampler,
    "pairs": ps.PairSampler,
    "subject": s.SubjectSampler,
    "mixed": s.MixedSampler,
    "hard-pairs": ps.HardPairSampler,
}

OPTIONS = {"pk": {"k": 2}}  # batches of 4 hold 2 identities × 2


def _make(name, batch_size, **kw):
    return ALL[name](LABELS, batch_size, **{**OPTIONS.get(name, {}), **kw})


def _batches(sampler, epoch=0):
    sampler.set_epoch(epoch)
    return [list(b) for b in sampler]


@pytest.mark.parametrize("name", sorted(ALL))
def test_deterministic_given_seed_and_epoch(name):
    a = _batches(_make(name, 8, seed=3), epoch=2)
    b = _batches(_make(name, 8, seed=3), epoch=2)
    assert a == b and len(a) > 0
    assert _batches(_make(name, 8, seed=3), epoch=3) != a
    assert _batches(_make(name, 8, seed=4), epoch=2) != a
    assert all(0 <= i < len(LABELS) for batch in a for i in batch)


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("world", [2, 3])
def test_ddp_ranks_get_disjoint_equal_shares(name, world):
    full = _make(name, 4, seed=1).all_batches()
    shares = [_batches(_make(name, 4, seed=1, rank=r, world_size=world), 0) for r in range(world)]
    counts = {len(sh) for sh in shares}
    assert counts == {len(full) // world}  # every rank runs the same number of steps
    assert len(_make(name, 4, seed=1, rank=0, world_size=world)) == len(full) // world
    usable = len(full) - len(full) % world
    # Rank r gets batches r, r+w, …: together the ranks cover every usable batch exactly once.
    interleaved = [shares[i % world][i // world] for i in range(usable)]
    assert interleaved == full[:usable]


def test_random_is_a_permutation_and_ranks_share_no_sample():
    sampler = s.RandomSampler(LABELS, 8, drop_last=False)
    batches = _batches(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(LABELS)))
    assert [len(b) for b in batches] == [8] * 5 + [len(LABELS) - 40]
    dropped = _batches(s.RandomSampler(LABELS, 8, drop_last=True))
    assert [len(b) for b in dropped] == [8] * 5 and dropped == batches[:5]
    ranks = [
        set(i for b in _batches(s.RandomSampler(LABELS, 8, rank=r, world_size=2)) for i in b)
        for r in range(2)
    ]
    assert not ranks[0] & ranks[1] and len(ranks[0] | ranks[1]) == 32
    assert len(_batches(s.RandomSampler(LABELS[:3], 8))) == 1  # a short set still yields a batch


def test_pk_batches_hold_p_identities_of_k_samples():
    batches = _batches(s.PKSampler(LABELS, 12, seed=0, k=3), epoch=1)
    assert batches
    for batch in batches:
        assert len(batch) == 12
        labels = [LABELS[i] for i in batch]
        assert len(set(labels)) == 4 and all(labels.count(lab) == 3 for lab in set(labels))
        for lab in set(labels):
            members = [i for i in batch if LABELS[i] == lab]
            if SIZES[lab] >= 3:  # enough samples: drawn without replacement
                assert len(set(members)) == 3
    # Identities with 2 samples (< k) still appear, with a repeated sample.
    seen = {LABELS[i] for b in batches for i in b}
    assert {0, 6} & seen


def test_pk_epoch_uses_each_chunk_once():
    labels = [i // 8 for i in range(8 * 6)]  # 6 identities × 8 samples, k=4 → 12 chunks, P=3
    batches = _batches(s.PKSampler(labels, 12, k=4))
    assert len(batches) == 4
    assert sorted(i for b in batches for i in b) == list(range(48))


def test_pk_rejects_batch_smaller_than_two_identities():
    with pytest.raises(ConfigError, match="batch_size >= 2\\*k"):
        s.PKSampler(LABELS, 6, k=4)
    with pytest.raises(DataError, match="at least 2 identities"):
        s.PKSampler([0, 0, 0], 8, k=2)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_pairs_structure_and_ratio(ratio):
    sampler = ps.PairSampler(LABELS, 8, seed=2, target_ratio=ratio)
    batches = _batches(sampler)
    assert len(batches) == len(LABELS) // 8
    for batch in batches:
        assert len(batch) == 8
        pairs = [(batch[2 * i], batch[2 * i + 1]) for i in range(4)]
        genuine = [(a, b) for a, b in pairs if LABELS[a] == LABELS[b]]
        assert len(genuine) == round(ratio * 4)
        assert all(a != b for a, b in genuine)  # two different samples of one identity


def test_pairs_draw_every_partner():
    """Partners are spread over the identity (not always the neighbour in index order)."""
    sampler = ps.PairSampler(LABELS, 64, target_ratio=1.0)
    partners = set()
    for epoch in range(30):
        for batch in _batches(sampler, epoch):
            partners |= {(batch[2 * i], batch[2 * i + 1]) for i in range(32)}
    lab5 = [i for i, lab in enumerate(LABELS) if lab == 5]  # 7 samples → 42 ordered pairs
    assert {(a, b) for a, b in partners if LABELS[a] == 5} == {
        (a, b) for a in lab5 for b in lab5 if a != b
    }


def test_pairs_need_a_genuine_pair():
    with pytest.raises(DataError, match="two samples"):
        ps.PairSampler([0, 1, 2, 3], 4)
    assert _batches(ps.PairSampler([0, 1, 2, 3], 4, target_ratio=0.0))


def test_subject_keeps_identities_together():
    batches = _batches(s.SubjectSampler(LABELS, 9, seed=5), epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(len(LABELS)))
    assert all(len(b) <= 9 for b in batches)
    where = {}
    for k, batch in enumerate(batches):
        labels = [LABELS[i] for i in batch]
        for lab in set(labels):
            where.setdefault(lab, set()).add(k)
            positions = [j for j, x in enumerate(labels) if x == lab]
            assert positions == list(range(positions[0], positions[0] + len(positions)))
    assert all(len(v) == 1 for v in where.values())  # each identity in exactly one batch
    order = [LABELS[b[0]] for b in batches]
    other = [LABELS[b[0]] for b in _batches(s.SubjectSampler(LABELS, 9, seed=5), epoch=2)]
    assert order != other  # identities reshuffled each epoch


def test_subject_splits_an_identity_larger_than_the_batch():
    labels = [0] * 10 + [1] * 2
    batches = _batches(s.SubjectSampler(labels, 4))
    assert sorted(i for b in batches for i in b) == list(range(12))
    zero = [k for k, b in enumerate(batches) if any(labels[i] == 0 for i in b)]
    assert zero == list(range(zero[0], zero[0] + 3))  # consecutive batches


def test_mixed_halves():
    labels = [i // 4 for i in range(80)]  # 20 identities × 4
    batches = _batches(s.MixedSampler(labels, 8, seed=1))
    subject_ids, open_ids = set(), set()
    for batch in batches:
        assert len(batch) == 8
        first = [labels[i] for i in batch[:4]]
        second = [labels[i] for i in batch[4:]]
        assert len(set(first)) == 1  # one whole identity of 4 samples fills the first half
        subject_ids |= set(first)
        open_ids |= set(second)
    assert not subject_ids & open_ids and len(subject_ids) == 10
    assert len(batches) == 10


def _confusable_embeddings():
    """3 identities on 3 axes; sample 1 (id 0) drifts towards id 1; sample 5 (id 2) sits on id 1."""
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    e = torch.tensor(
        [
            [1.0, 0.0, 0.0],
            [0.2, 1.0, 0.0],
            [1.0, 0.1, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.1],
            [0.05, 1.0, 0.02],
            [0.0, 0.0, 1.0],
            [0.1, 0.0, 1.0],
        ]
    )
    return labels, e


def test_hard_pairs_mine_the_most_confusable_pairs():
    labels, e = _confusable_embeddings()
    sampler = ps.HardPairSampler(labels, 4, seed=0)
    before = _batches(sampler)
    assert before == _batches(ps.PairSampler(labels, 4, seed=0))  # "pairs" until the first update
    sampler.update(e)
    # Hardest genuine: brute force over same-identity pairs, lowest cosine similarity.
    en = torch.nn.functional.normalize(e, dim=1)
    sims = {(i, j): float(en[i] @ en[j]) for i in range(8) for j in range(i + 1, 8)}
    hardest_gen = min((p for p in sims if labels[p[0]] == labels[p[1]]), key=sims.get)
    hardest_imp = max((p for p in sims if labels[p[0]] != labels[p[1]]), key=sims.get)
    assert hardest_gen == (5, 6) and hardest_imp == (3, 5)
    assert tuple(sampler.hard_genuine[0].tolist()) == hardest_gen
    assert tuple(sampler.hard_impostor[0].tolist()) == hardest_imp
    after = _batches(sampler)
    pairs = {tuple(sorted((b[2 * i], b[2 * i + 1]))) for b in after for i in range(len(b) // 2)}
    assert hardest_gen in pairs and hardest_imp in pairs
    # 4 samples per batch, 1 genuine + 1 impostor pair; the epoch's pairs are all mined ones.
    mined = {tuple(p) for p in sampler.hard_genuine.tolist() + sampler.hard_impostor.tolist()}
    assert pairs <= mined
    with pytest.raises(DataError, match="update"):
        sampler.update(e[:5])


def test_hard_pairs_chunking_does_not_change_the_mining():
    torch.manual_seed(0)
    labels = [i % 7 for i in range(50)]
    e = torch.randn(50, 5)
    a = ps.HardPairSampler(labels, 8, chunk=1024)
    b = ps.HardPairSampler(labels, 8, chunk=7)
    a.update(e)
    b.update(e)
    assert torch.equal(a.hard_genuine, b.hard_genuine)
    assert torch.equal(a.hard_impostor, b.hard_impostor)
    assert _batches(a, 3) == _batches(b, 3)


def test_hard_pairs_skip_missing_samples_and_singletons():
    labels, e = _confusable_embeddings()
    labels = [*labels, 3]  # a singleton identity: it has no genuine partner
    e = torch.cat([e, torch.tensor([[0.0, 1.0, 0.0]])])  # … but is sample 3's twin
    sampler = ps.HardPairSampler(labels, 4, hard_fraction=1.0)
    sampler.update(e)
    assert all(8 not in p for p in sampler.hard_genuine.tolist())
    assert tuple(sampler.hard_impostor[0].tolist()) == (3, 8)
    # Sample 3 failed to load: the embeddings of the others come with their indices.
    kept = torch.tensor([i for i in range(9) if i != 3])
    sampler.update(e[kept], indices=kept)
    assert all(3 not in p for p in sampler.hard_genuine.tolist() + sampler.hard_impostor.tolist())
    assert tuple(sampler.hard_impostor[0].tolist()) == (5, 8)
    batches = _batches(sampler)
    assert batches and all(3 not in b for b in batches)
