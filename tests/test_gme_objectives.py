"""GME objectives: the BXE vector of docs/reference/gme.md, brute-force pseudolikelihood, gradients and a tiny
optimisation on synthetic Gaussian identities."""

from __future__ import annotations

import math

import pytest
import torch

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.gme.algebra import GME, llr, pool
from metaemb.core.gme.objectives import (
    ClassGMEs,
    GMEBinaryCrossEntropy,
    GMEPseudoLikelihood,
    GMESoftmax,
    bxe_bits,
)
from metaemb.core.plugin.manager import registry
from metaemb.core.train.heads import GMEHead

PAIRS = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]
PAIR_LLRS = [
    0.6331996219,
    0.475504055,
    0.4189302069,
    0.4986164648,
    0.4649666659,
    0.4479627959,
    0.4910823514,
    0.2830952108,
    0.6368883749,
    0.3375086015,
]
BXE_LABELS = [1, 1, 2, 3, 2]


def bxe_vector():
    llrs = torch.tensor(PAIR_LLRS, dtype=torch.float64)
    target = torch.tensor([BXE_LABELS[i] == BXE_LABELS[j] for i, j in PAIRS])
    return llrs, target


def test_bxe_vector():
    llrs, target = bxe_vector()
    assert int(target.sum()) == 2 and bool(target[0]) and bool(target[8])
    assert abs(float(bxe_bits(llrs, target)) - 0.703324587182363) < 1e-9
    # With π = 0.5 the same formula is Cllr.
    assert abs(float(bxe_bits(llrs, target, target_prior=0.5)) - 0.9775973578651438) < 1e-9


def test_bxe_of_zero_llrs_is_prior_entropy():
    target = torch.tensor([True, False, False, True, False, False, False])
    pi = 2 / 7
    entropy = -(pi * math.log2(pi) + (1 - pi) * math.log2(1 - pi))
    assert abs(float(bxe_bits(torch.zeros(7, dtype=torch.float64), target)) - entropy) < 1e-12
    with pytest.raises(DataError, match="both target and non-target"):
        bxe_bits(torch.zeros(3), torch.zeros(3, dtype=torch.bool))


def random_gmes(n, d, seed, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    a = (torch.randn(n, d, generator=gen, dtype=torch.float64) * 1.5).requires_grad_(requires_grad)
    b = (torch.rand(n, d, generator=gen, dtype=torch.float64) * 2).requires_grad_(requires_grad)
    return GME(a, b)


def test_bxe_objective_matches_explicit_pairs():
    g = random_gmes(5, 3, seed=1)
    labels = torch.tensor(BXE_LABELS)
    obj = GMEBinaryCrossEntropy()
    assert obj.batch == "pk" and obj.needs == "gme"
    loss = obj(g, labels, None)
    llrs = torch.stack([llr(g[i], g[j])[0] for i, j in PAIRS])
    _, target = bxe_vector()
    assert torch.allclose(loss, bxe_bits(llrs, target), rtol=1e-12)
    assert set(obj.stats) == {"loss", "llr_target", "llr_nontarget"}
    assert abs(obj.stats["llr_target"] - float(llrs[target].mean())) < 1e-9
    # target_prior=0.5 makes the loss the batch's Cllr; 0 keeps the empirical prior.
    half = GMEBinaryCrossEntropy(target_prior=0.5)(g, labels, None)
    assert torch.allclose(half, bxe_bits(llrs, target, 0.5), rtol=1e-12)
    assert not torch.allclose(half, loss, rtol=1e-3)
    with pytest.raises(ConfigError, match="target_prior"):
        GMEBinaryCrossEntropy(target_prior=1.0)


def brute_force_pseudolikelihood(g, labels, alpha):
    """Loop over recordings, pooling the other recordings of each identity explicitly."""
    total = 0.0
    n = len(g)
    for j in range(n):
        rest = [k for k in range(n) if k != j]
        tables = sorted({int(labels[k]) for k in rest})
        logw = []
        for lab in tables:
            members = [k for k in rest if int(labels[k]) == lab]
            logw.append(math.log(len(members)) + float(llr(g[j], pool(g[members]))[0]))
        logw.append(math.log(alpha))  # new identity: LLR 0
        own = int(labels[j])
        answer = tables.index(own) if own in tables else len(tables)
        total += -(
            logw[answer] - torch.logsumexp(torch.tensor(logw, dtype=torch.float64), 0).item()
        )
    return total / n


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_pseudolikelihood_matches_brute_force(alpha):
    g = random_gmes(9, 3, seed=2)
    labels = torch.tensor([5, 5, 2, 7, 2, 5, 9, 7, 2])  # identity 9 is a singleton → "new"
    obj = GMEPseudoLikelihood(concentration=alpha)
    loss = obj(g, labels, None)
    assert abs(float(loss) - brute_force_pseudolikelihood(g, labels, alpha)) < 1e-10
    _, target = obj.logits(g, labels)
    assert int(target[6]) == 4  # the singleton's answer is the "new" column (m = 4)


def test_gme_softmax_keeps_every_logit_and_trains_class_gmes():
    torch.manual_seed(0)
    obj = GMESoftmax(init_precision=5.0)
    classes = obj.build_classifier(dim=3, num_classes=4)
    assert isinstance(classes, ClassGMEs)
    assert len(list(classes.parameters())) == 2 and all(
        p.requires_grad for p in classes.parameters()
    )
    assert torch.allclose(classes().b, torch.full((4, 3), 5.0))
    g = random_gmes(6, 3, seed=3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    loss = obj(g, labels, classes)
    # Reference: plain cross-entropy over the full LLR matrix (pairwise llr per entry).
    c = classes()
    logits = torch.stack([torch.stack([llr(g[i], c[k])[0] for k in range(4)]) for i in range(6)])
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, labels), rtol=1e-6)
    loss.backward()
    assert g.a.grad is not None and torch.isfinite(g.a.grad).all()
    assert torch.isfinite(g.b.grad).all() and g.b.grad.abs().sum() > 0
    # Non-target classes get gradients too (their logits stay in the softmax).
    for p in (classes.mean, classes.raw_precision):
        assert torch.isfinite(p.grad).all() and bool((p.grad.abs().sum(1) > 0).all())
    with pytest.raises(ConfigError, match="ClassGMEs"):
        obj(g, labels, None)


@pytest.mark.parametrize("name", ["gme-bxe", "gme-pseudolikelihood"])
def test_pair_objectives_give_finite_gradients(name):
    obj = registry("objectives").get(name)()
    g = random_gmes(8, 4, seed=4, requires_grad=True)
    loss = obj(g, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), obj.build_classifier(4, 4))
    loss.backward()
    assert torch.isfinite(loss)
    for t in (g.a.grad, g.b.grad):
        assert t is not None and torch.isfinite(t).all() and t.abs().sum() > 0


def test_objectives_reject_point_embeddings():
    with pytest.raises(ConfigError, match=r"model\.head=gme"):
        GMEBinaryCrossEntropy()(torch.zeros(4, 3), torch.tensor([0, 0, 1, 1]), None)


def test_checkpointed_matrix_gradients_equal_plain(monkeypatch):
    # A tiny chunk budget forces the checkpointed path; gradients must not change.
    import metaemb.core.gme.algebra as gme_mod

    g = random_gmes(10, 3, seed=6, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    plain = torch.autograd.grad(GMEBinaryCrossEntropy()(g, labels, None), [g.a, g.b])
    original = gme_mod.differentiable_llr_matrix

    def tiny(f1, f2, max_chunk_bytes=0):
        return original(f1, f2, max_chunk_bytes=1)

    monkeypatch.setattr("metaemb.core.gme.objectives.differentiable_llr_matrix", tiny)
    chunked = torch.autograd.grad(GMEBinaryCrossEntropy()(g, labels, None), [g.a, g.b])
    for x, y in zip(plain, chunked, strict=True):
        assert torch.allclose(x, y, rtol=1e-10)


def synthetic_identities(n_ids, per_id, in_features, seed):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, in_features, generator=gen) * 1.5
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    return centres[labels] + torch.randn(len(labels), in_features, generator=gen), labels


@pytest.mark.parametrize("name", ["gme-bxe", "gme-pseudolikelihood", "gme-softmax"])
def test_short_training_decreases_loss(name):
    torch.manual_seed(0)
    x, labels = synthetic_identities(8, 6, in_features=10, seed=1)
    head = registry("heads").get("gme")(in_features=10, dim=4)
    obj = registry("objectives").get(name)()
    classifier = obj.build_classifier(4, 8)
    params = list(head.parameters()) + (list(classifier.parameters()) if classifier else [])
    opt = torch.optim.Adam(params, lr=0.05)
    losses = []
    for _ in range(40):
        loss = obj(head(x), labels, classifier)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_objectives_are_registered():
    objs = registry("objectives")
    assert objs.get("gme-bxe") is GMEBinaryCrossEntropy
    assert objs.get("gme-pseudolikelihood") is GMEPseudoLikelihood
    assert objs.get("gme-softmax") is GMESoftmax
    assert GMESoftmax.batch == "random" and GMEPseudoLikelihood.batch == "pk"
    assert isinstance(GMEHead(3, 2)(torch.randn(4, 3)), GME)
