"""Embedding and GME heads: shapes, precision constraints, gradients, PLDA initialisation."""

from __future__ import annotations

import pytest
import torch

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.gme.algebra import (
    GME,
    from_diagonal_plda,
    llr,
    llr_matrix,
    simultaneous_diagonalisation,
)
from metaemb.core.plugin.manager import registry
from metaemb.core.train.heads import EmbeddingHead, GMEHead


def test_embedding_head_shape_and_gradients():
    torch.manual_seed(0)
    head = EmbeddingHead(in_features=12, dim=5, dropout=0.1)
    assert head.output == "point" and head.dim == 5
    kinds = [type(m) for m in head.layers]
    assert kinds == [torch.nn.BatchNorm1d, torch.nn.Dropout, torch.nn.Linear, torch.nn.BatchNorm1d]
    x = torch.randn(8, 12, requires_grad=True)
    y = head(x)
    assert y.shape == (8, 5)
    y.pow(2).sum().backward()
    assert x.grad is not None and head.layers[2].weight.grad.abs().sum() > 0


def test_gme_head_shapes_precision_and_gradients():
    torch.manual_seed(0)
    head = GMEHead(in_features=12, dim=4, dropout=0.2, init_precision=2.0, precision_floor=0.01)
    assert head.output == "gme" and head.dim == 4
    x = torch.randn(6, 12)
    g = head(x)
    assert isinstance(g, GME) and g.a.shape == (6, 4) and g.b.shape == (6, 4)
    # Precision starts at init_precision for every input, and a = b ⊙ μ.
    assert torch.allclose(g.b, torch.full((6, 4), 2.0), atol=1e-5)
    head.precision.weight.data.normal_(0, 10.0)
    g = head(x * 5)
    assert bool((g.b >= 0.01).all())
    loss = llr_matrix(g, g).sum()
    loss.backward()
    for p in (head.mean.weight, head.precision.weight, head.precision.bias, head.norm.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_gme_head_keeps_float32_under_autocast():
    head = GMEHead(in_features=6, dim=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = head(torch.randn(4, 6).bfloat16())
    assert g.a.dtype == torch.float32 and g.b.dtype == torch.float32


def test_gme_head_constant_precision_option():
    head = GMEHead(in_features=3, dim=2, adaptive_precision=False)
    assert not head.precision.weight.requires_grad and head.precision.bias.requires_grad
    head.eval()
    g = head(torch.randn(5, 3))
    assert torch.equal(g.b, g.b[:1].expand_as(g.b))


def test_gme_head_rejects_bad_options():
    with pytest.raises(ConfigError, match="precision_floor"):
        GMEHead(4, 2, init_precision=0.001, precision_floor=0.01)
    with pytest.raises(ConfigError, match="dropout"):
        EmbeddingHead(4, 2, dropout=1.5)
    with pytest.raises(ConfigError, match="transform must be"):
        GMEHead(4, 2, normalization="batch").init_from_plda(
            torch.zeros(4), torch.zeros(3, 4), torch.ones(3)
        )


def random_plda(d, seed):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(d, d, generator=gen, dtype=torch.float64)
    v = torch.randn(d, d, generator=gen, dtype=torch.float64)
    sb = u @ u.T + 0.5 * torch.eye(d, dtype=torch.float64)
    sw = v @ v.T / d + 0.2 * torch.eye(d, dtype=torch.float64)
    return torch.randn(d, generator=gen, dtype=torch.float64), sb, sw


@pytest.mark.parametrize("normalize_input", [True, False])
def test_init_from_plda_reproduces_diagonal_plda(normalize_input):
    m, sb, sw = random_plda(5, seed=1)
    tr, psi = simultaneous_diagonalisation(sb, sw)
    head = GMEHead(5, 3, normalize_input=normalize_input, normalization="batch").double()
    if normalize_input:  # non-trivial BatchNorm statistics and affine parameters to fold
        head.norm.running_mean.normal_()
        head.norm.running_var.uniform_(0.5, 2.0)
        head.norm.weight.data.uniform_(0.5, 1.5)
        head.norm.bias.data.normal_()
    head.init_from_plda(m, tr[:3], psi[:3])
    head.eval()
    x = torch.randn(7, 5, dtype=torch.float64) * 3
    got = head(x)
    want = from_diagonal_plda((x - m) @ tr[:3].T, psi[:3])
    assert torch.allclose(got.a, want.a, atol=1e-9) and torch.allclose(got.b, want.b, atol=1e-9)


def test_init_from_features_separates_identities():
    # Synthetic two-covariance data: 40 identities × 6 samples in 8-d.
    gen = torch.Generator().manual_seed(5)
    centres = torch.randn(40, 8, generator=gen) * 2
    labels = torch.arange(40).repeat_interleave(6)
    x = centres[labels] + 0.5 * torch.randn(240, 8, generator=gen)
    head = GMEHead(8, 4, normalization="batch")
    psi = head.init_from_features(x, labels)
    assert psi.shape == (4,) and bool((psi[:-1] >= psi[1:]).all()) and float(psi[0]) > 4.0
    head.eval()
    with torch.no_grad():
        g = head(x)
        scores = llr_matrix(g, g)
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(240, dtype=torch.bool)
    assert scores[same & off].mean() > 2.0 and scores[~same].mean() < 0.0
    # Pair LLRs computed the direct way agree with the matrix.
    assert torch.allclose(llr(g[0], g[1]), scores[0, 1:2], atol=1e-5)
    with pytest.raises(DataError, match="two identities"):
        head.init_from_features(x[:6], labels[:6])
    with pytest.raises(DataError, match=r"features \[N, 8\]"):
        head.init_from_features(x[:, :5], labels)


def test_heads_are_registered():
    heads = registry("heads")
    assert heads.get("linear") is EmbeddingHead and heads.get("gme") is GMEHead
    head = heads.get("gme")(in_features=6, dim=3)
    assert head.output == "gme"


def test_gme_head_mean_scale_is_tied_to_precision():
    """μ's population variance is 1 + 1/b (prior + noise), so the generative model is consistent."""
    torch.manual_seed(0)
    head = GMEHead(in_features=10, dim=4, adaptive_precision=False, normalization="batch")
    head.precision.bias.data = torch.tensor([0.05, 0.5, 5.0, 50.0]).log()  # floor 1e-3 on top
    g = head(torch.randn(4096, 10) * 3 + 1)  # train mode: batch statistics
    mu = g.a / g.b
    want = 1.0 + 1.0 / (torch.tensor([0.05, 0.5, 5.0, 50.0]) + 1e-3)
    assert torch.allclose(mu.var(0, unbiased=False), want, rtol=1e-3)
    assert torch.allclose(mu.mean(0), torch.zeros(4), atol=1e-3 * want.sqrt().max())


def test_untrained_gme_head_scores_near_zero():
    """A fresh head says "can't tell yet": LLRs near 0, not ±d/4 as with init_precision=1."""
    spread = {}
    for init in (0.05, 1.0):
        torch.manual_seed(0)
        head = GMEHead(in_features=64, dim=128, init_precision=init, normalization="batch")
        head.eval()
        with torch.no_grad():
            head.norm.running_var.fill_(4.0)
            g = head(torch.randn(200, 64) * 2)
            scores = llr_matrix(g, g)
        spread[init] = float(scores[~torch.eye(200, dtype=torch.bool)].abs().max())
    assert spread[0.05] < 2.0 < 10.0 < spread[1.0]


def test_sample_normalization_makes_training_outputs_independent_of_the_batch():
    torch.manual_seed(0)
    x = torch.randn(12, 10)
    sample = GMEHead(10, 4, normalization="sample").train()
    whole, first = sample(x), sample(x[:3])
    torch.testing.assert_close(whole.a[:3], first.a)
    torch.testing.assert_close(whole.b[:3], first.b)
    mu = whole.a / whole.b  # length-normalised: ‖μ / √(1 + 1/b)‖² = dim for every sample
    torch.testing.assert_close((mu**2 / (1 + 1 / whole.b)).sum(1), torch.full((12,), 4.0))
    batch = GMEHead(10, 4, normalization="batch").train()  # BatchNorm: depends on the batch
    assert not torch.allclose(batch(x).a[:3], batch(x[:3]).a)


def test_sample_normalization_options_are_checked():
    with pytest.raises(ConfigError, match="normalization"):
        GMEHead(4, 2, normalization="layer")
    with pytest.raises(ConfigError, match="precision_lr_mult"):
        GMEHead(4, 2, precision_lr_mult=0.0)
    with pytest.raises(ConfigError, match="normalization='batch'"):
        GMEHead(4, 2, normalization="sample").init_from_plda(
            torch.zeros(4), torch.zeros(2, 4), torch.ones(2)
        )


def test_init_from_features_with_fewer_samples_than_features():
    """N − identities < in_features: the PLDA is fitted in the leading principal subspace."""
    gen = torch.Generator().manual_seed(7)
    centres = torch.randn(10, 64, generator=gen) * 2
    labels = torch.arange(10).repeat_interleave(3)
    x = centres[labels] + 0.5 * torch.randn(30, 64, generator=gen)
    head = GMEHead(64, 4, normalization="batch")
    psi = head.init_from_features(x, labels)  # a full 64-d PLDA would be singular here
    assert torch.isfinite(psi).all() and bool((psi[:-1] >= psi[1:]).all())
    head.eval()
    with torch.no_grad():
        scores = llr_matrix(head(x), head(x))
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(30, dtype=torch.bool)
    assert scores[same & off].mean() > scores[~same].mean() + 1.0
    with pytest.raises(DataError, match="support at most 3 PLDA dimensions"):
        head.init_from_features(x[:6], labels[:6])  # 2 identities × 3 samples
