"""Gaussian meta-embedding math against the known-answer vectors of docs/reference/gme.md, brute force and
an independent joint-Gaussian PLDA likelihood ratio."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from metaemb.core.errors import DataError
from metaemb.core.gme.algebra import (
    GME,
    GMEError,
    block_shape,
    cat,
    enroll_llr_matrix,
    from_diagonal_plda,
    from_plda,
    from_two_covariance,
    identification_posteriors,
    identity,
    llr,
    llr_matrix,
    log_expectation,
    pool,
    pool_by_index,
    simultaneous_diagonalisation,
)
from metaemb.core.gme.scorer import GMEScorer

F64 = torch.float64


def t(x, dtype=F64):
    return torch.tensor(x, dtype=dtype)


def rel(x, expected):
    return torch.allclose(torch.as_tensor(x, dtype=F64), t(expected), rtol=1e-9, atol=1e-12)


def random_gme(n, d, seed=0, full=False, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=dtype) * 2
    if full:
        m = torch.randn(n, d, d, generator=g, dtype=dtype)
        return GME(a, m @ m.transpose(1, 2) / d)
    return GME(a, torch.rand(n, d, generator=g, dtype=dtype) * 3)


TV1 = (GME(t([[1.0, -0.5]]), t([[2.0, 0.5]])), GME(t([[0.8, 0.3]]), t([[1.0, 3.0]])))
TV2 = (
    GME(t([[0.5, -1.0]]), t([[[2, 0.5], [0.5, 1]]])),
    GME(t([[-0.2, 0.7]]), t([[[1, -0.3], [-0.3, 0.5]]])),
)
TV3_LEFT = GME(t([[1.0, -0.5], [0.8, 0.3], [-1.2, 0.4]]), t([[2.0, 0.5], [1.0, 3.0], [0.7, 0.7]]))
TV3_RIGHT = GME(t([[0.9, 0.1], [-1.0, 0.5]]), t([[1.5, 1.5], [0.3, 2.0]]))


# -- known-answer vectors -----------------------------------------------------------------
def test_tv1_diagonal_pair():
    f1, f2 = TV1
    assert rel(log_expectation(f1), [-0.5020386983881371])
    assert rel(log_expectation(f2), [-0.868470770839918])
    assert rel(log_expectation(f1 + f2), [-1.0357414345036378])
    assert rel(llr(f1, f2), [0.3347680347244173])
    # The full form of the same GMEs gives the same answer.
    assert rel(llr(f1.to_full(), f2.to_full()), [0.3347680347244173])


def test_tv1_numerical_integration():
    # Brute force: LLR = log ∫f1 f2 N(z) − log ∫f1 N(z) − log ∫f2 N(z) on a 2-d grid.
    f1, f2 = TV1
    z1 = torch.linspace(-9, 9, 1201, dtype=F64)
    z = torch.stack(torch.meshgrid(z1, z1, indexing="ij"), -1).reshape(-1, 2)
    logn = -0.5 * (z * z).sum(-1)

    def logint(g):
        return torch.logsumexp(z @ g.a[0] - 0.5 * (z * z * g.b[0]).sum(-1) + logn, 0)

    brute = logint(f1 + f2) - logint(f1) - logint(f2) + logint(identity(2, dtype=F64))
    assert abs(float(brute) - 0.3347680347244173) < 1e-9


def test_tv2_full_pair():
    f1, f2 = TV2
    assert rel(log_expectation(f1), [-0.5267738404481079])
    assert rel(log_expectation(f2), [-0.3698153722068209])
    assert rel(llr(f1, f2), [-0.2215246243481439])
    assert rel(llr_matrix(f1, f2), [[-0.2215246243481439]])


def test_tv3_matrix_pooling_and_identification():
    expected = [
        [0.380762365318, -0.46709779481],
        [0.56940856975, -0.127628314449],
        [-0.297695062163, 0.632965700408],
    ]
    m = llr_matrix(TV3_LEFT, TV3_RIGHT)
    assert torch.allclose(m, t(expected), atol=1e-11)
    assert rel(llr(pool(TV3_LEFT[0:2]), TV3_RIGHT[0]), [0.703338991705159])
    scores = enroll_llr_matrix(TV3_LEFT, torch.tensor([0, 0, 1]), TV3_RIGHT)
    assert rel(scores[0, 0], 0.703338991705159)
    post = identification_posteriors(TV3_RIGHT[0], TV3_LEFT, prior=[0.3, 0.3, 0.3, 0.1])
    assert torch.allclose(
        post, t([[0.33981325464, 0.410363117464, 0.172420935794, 0.077402692102]]), atol=1e-11
    )
    closed = identification_posteriors(TV3_RIGHT[0], TV3_LEFT, open_set=False)
    assert torch.allclose(closed, t([[0.368322399958, 0.444791149888, 0.186886450153]]), atol=1e-11)
    logp = identification_posteriors(TV3_RIGHT, TV3_LEFT, log=True)
    assert logp.shape == (2, 4) and torch.allclose(logp.exp().sum(-1), t([1.0, 1.0]))


def test_identification_rejects_bad_prior():
    with pytest.raises(GMEError, match="4 positive entries"):
        identification_posteriors(TV3_RIGHT[0], TV3_LEFT, prior=[0.5, 0.5, 0.5])
    with pytest.raises(GMEError):
        identification_posteriors(TV3_RIGHT[0], TV3_LEFT, prior=[0.5, 0.5, 0.0], open_set=False)


SB = [[2, 0.3], [0.3, 0.5]]
SW = [[0.5, 0.1], [0.1, 1.0]]
M = [0.1, -0.2]
X = [[1.0, 0.4], [0.6, -0.1]]


def plda_llr_joint_gaussian(x1, x2, mean, sb, sw):
    """Independent reference: same-identity pair ~ N([m;m], [[Σb+Σw, Σb], [Σb, Σb+Σw]])."""
    mvn = torch.distributions.MultivariateNormal
    tot = sb + sw
    joint = torch.cat([torch.cat([tot, sb], 1), torch.cat([sb, tot], 1)], 0)
    same = mvn(torch.cat([mean, mean]), joint).log_prob(torch.cat([x1, x2]))
    single = mvn(mean, tot)
    return same - single.log_prob(x1) - single.log_prob(x2)


def test_tv4_two_covariance_plda():
    sb, sw, m, x = t(SB), t(SW), t(M), t(X)
    g = from_plda(x, m, torch.linalg.cholesky(sb), torch.linalg.inv(sw))
    b_expected = [[4.005102040816, -0.048670367419], [-0.048670367419, 0.464285714286]]
    assert torch.allclose(g.b[0], t(b_expected), atol=1e-11)
    assert torch.allclose(g.b[1], g.b[0])
    assert torch.allclose(
        g.a, t([[2.515279835935, 0.289087233498], [1.414213562373, 0.0]]), atol=1e-11
    )
    reference = plda_llr_joint_gaussian(x[0], x[1], m, sb, sw)
    assert abs(float(reference) - 0.58411671787988) < 1e-11
    assert abs(float(llr(g[0], g[1])) - 0.58411671787988) < 1e-11
    assert abs(float(llr_matrix(g, g)[0, 1]) - 0.58411671787988) < 1e-11
    assert torch.allclose(from_two_covariance(x, m, sb, sw).a, g.a)


def test_diagonalised_plda_matches_joint_gaussian():
    # Random 4-d model: the diagonal form after simultaneous diagonalisation gives the PLDA LLR.
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(4, 4, generator=gen, dtype=F64)
    v = torch.randn(4, 4, generator=gen, dtype=F64)
    sb, sw = u @ u.T + 0.1 * torch.eye(4, dtype=F64), v @ v.T + 0.5 * torch.eye(4, dtype=F64)
    m = torch.randn(4, generator=gen, dtype=F64)
    x = torch.randn(5, 4, generator=gen, dtype=F64) * 2
    tr, psi = simultaneous_diagonalisation(sb, sw)
    assert torch.allclose(tr @ sw @ tr.T, torch.eye(4, dtype=F64), atol=1e-10)
    assert torch.allclose(tr @ sb @ tr.T, torch.diag(psi), atol=1e-10)
    assert bool((psi[:-1] >= psi[1:]).all())
    g = from_diagonal_plda(x @ tr.T, psi, mean=tr @ m)
    mat = llr_matrix(g, g)
    for i in range(5):
        for j in range(5):
            if i != j:
                ref = plda_llr_joint_gaussian(x[i], x[j], m, sb, sw)
                assert abs(float(mat[i, j] - ref)) < 1e-9
    full = from_two_covariance(x, m, sb, sw)
    assert torch.allclose(mat, llr_matrix(full, full), atol=1e-9)


def test_tv6_float32_stable_form():
    f1 = GME(t([[300.0, -200.0]], torch.float32), t([[100.0, 80.0]], torch.float32))
    f2 = GME(t([[310.0, -190.0]], torch.float32), t([[110.0, 75.0]], torch.float32))
    assert abs(float(llr(f1.to(F64), f2.to(F64))) - 10.236596453321) < 1e-10
    value = llr(f1, f2)
    assert value.dtype == torch.float32
    assert abs(float(value) - 10.236596453321) < 1e-6
    assert abs(float(llr_matrix(f1, f2)[0, 0]) - 10.236596453321) < 1e-6


# -- properties ----------------------------------------------------------------------------
@pytest.mark.parametrize("full", [False, True])
def test_gradients_match_finite_differences(full):
    f1, f2 = random_gme(3, 3, seed=1, full=full), random_gme(3, 3, seed=2, full=full)
    params = [p.clone().requires_grad_(True) for p in (f1.a, f1.b, f2.a, f2.b)]

    def fn(a1, b1, a2, b2):
        if full:  # keep the precisions symmetric under perturbation
            b1, b2 = 0.5 * (b1 + b1.transpose(1, 2)), 0.5 * (b2 + b2.transpose(1, 2))
        return llr(GME(a1, b1), GME(a2, b2)), llr_matrix(GME(a1, b1), GME(a2, b2))

    assert torch.autograd.gradcheck(fn, params)


def test_log_expectation_gradient_formula():
    g = random_gme(4, 3, seed=5)
    a, b = g.a.clone().requires_grad_(True), g.b.clone().requires_grad_(True)
    log_expectation(GME(a, b)).sum().backward()
    assert torch.allclose(a.grad, g.a / (1 + g.b))
    assert torch.allclose(b.grad, -0.5 * (g.a**2 / (1 + g.b) ** 2 + 1 / (1 + g.b)))


@pytest.mark.parametrize("full", [False, True])
def test_identity_symmetry_and_scale_invariance(full):
    f1, f2 = random_gme(6, 4, seed=7, full=full), random_gme(6, 4, seed=8, full=full)
    zero = identity(4, n=6, full=full, dtype=F64)
    assert torch.equal(llr(f1, zero), torch.zeros(6, dtype=F64))
    assert torch.allclose(llr_matrix(zero, f2), torch.zeros(6, 6, dtype=F64), atol=1e-14)
    assert torch.allclose(llr(f1, f2), llr(f2, f1), rtol=1e-12)
    assert torch.allclose(llr_matrix(f1, f2), llr_matrix(f2, f1).T, rtol=1e-12)
    # An additive log-scale c multiplies each likelihood by e^c; it cancels in the LLR because
    # it enters log E(f1+f2) and log E(f1) + log E(f2) identically.
    c1, c2 = 3.7, -11.0
    scaled = (log_expectation(f1 + f2) + c1 + c2) - (log_expectation(f1) + c1)
    scaled = scaled - (log_expectation(f2) + c2)
    assert torch.allclose(scaled, llr(f1, f2), rtol=1e-10)


def test_llr_is_not_trivially_symmetric_in_wrong_way():
    # Guards the symmetry test: a swapped-b formula would break TV1.
    f1, f2 = TV1
    assert not rel(llr(GME(f1.a, f2.b), GME(f2.a, f1.b)), [0.3347680347244173])


@pytest.mark.parametrize("full", [False, True])
def test_chunked_matrix_equals_pairwise(full):
    f1, f2 = random_gme(7, 5, seed=11, full=full), random_gme(9, 5, seed=12, full=full)
    brute = torch.stack([llr(f1[i], f2) for i in range(7)])
    for budget in (1, 500, 10**9):  # one pair per block, a few pairs, one block
        assert torch.allclose(llr_matrix(f1, f2, max_chunk_bytes=budget), brute, rtol=1e-12)


@pytest.mark.parametrize("full", [False, True])
def test_shared_precision_fast_path_equals_pairwise(full):
    f1, f2 = random_gme(5, 3, seed=13, full=full), random_gme(4, 3, seed=14, full=full)
    f1 = GME(f1.a, f1.b[:1].expand_as(f1.b))
    f2 = GME(f2.a, f2.b[:1].expand_as(f2.b))
    brute = torch.stack([llr(f1[i], f2) for i in range(5)])
    assert torch.allclose(llr_matrix(f1, f2), brute, rtol=1e-11, atol=1e-12)


def test_float32_matrix_close_to_float64():
    f1, f2 = random_gme(20, 16, seed=21), random_gme(30, 16, seed=22)
    m64 = llr_matrix(f1, f2)
    m32 = llr_matrix(f1.to(torch.float32), f2.to(torch.float32))
    assert m32.dtype == torch.float32
    assert torch.allclose(m32.double(), m64, atol=1e-4)


def test_container_operations():
    g = random_gme(6, 3, seed=4)
    assert len(g) == 6 and g.dim == 3 and not g.full
    assert len(g[2]) == 1 and torch.equal(g[-1].a, g.a[5:6])
    assert torch.equal(g[torch.tensor(3)].a, g.a[3:4]) and torch.equal(g[-2].b, g.b[4:5])
    assert torch.equal(g[torch.tensor([0, 5])].b, g.b[[0, 5]])
    both = GME.cat([g[:2], g[4:]])
    assert len(both) == 4 and torch.equal(both.a, g.a[[0, 1, 4, 5]])
    assert cat([g[:1], g[1:2].to_full()]).full
    h = g.to(torch.float32)
    assert h.dtype == torch.float32 and h.device.type == "cpu"
    assert torch.equal(GME.from_state(g.state()).a, g.a)
    with pytest.raises(GMEError, match=r"\[N, d\]"):
        GME(torch.zeros(3), torch.zeros(3))
    with pytest.raises(GMEError):
        GME(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(GMEError, match="different dimension"):
        llr(g, random_gme(6, 4))


def test_pool_by_index_matches_loop_and_is_differentiable():
    g = random_gme(10, 4, seed=9)
    index = torch.tensor([2, 0, 1, 2, 2, 0, 1, 3, 3, 0])
    a = g.a.clone().requires_grad_(True)
    pooled = pool_by_index(GME(a, g.b), index)
    assert len(pooled) == 4
    for k in range(4):
        ref = pool(g[index == k])
        assert torch.allclose(pooled.a[k], ref.a[0]) and torch.allclose(pooled.b[k], ref.b[0])
    pooled.a.sum().backward()
    assert torch.equal(a.grad, torch.ones_like(a))
    with pytest.raises(GMEError, match="index values"):
        pool_by_index(g, index, num_groups=3)
    full = pool_by_index(g.to_full(), index)
    assert torch.allclose(torch.diagonal(full.b, dim1=1, dim2=2), pooled.b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    f1, f2 = random_gme(50, 32, seed=1, dtype=torch.float32), random_gme(40, 32, seed=2)
    f2 = f2.to(torch.float32)
    gpu = llr_matrix(f1.to("cuda"), f2.to("cuda"))
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), llr_matrix(f1, f2), atol=1e-4)


# -- memory ---------------------------------------------------------------------------------
def test_block_shape_bounds_temporaries():
    for n1, n2, d, full, budget in [
        (4096, 4096, 256, False, 8 * 2**20),
        (4096, 4096, 256, False, 512 * 2**20),
        (100, 10177, 200, False, 2**20),
        (50, 60, 16, True, 2**20),
        (3, 2, 2, False, 10**12),
    ]:
        rows, cols = block_shape(n1, n2, d, 4, full, budget)
        per_pair = (5 * d * d if full else 6 * d) * 4
        assert 1 <= rows <= n1 and 1 <= cols <= n2
        assert rows * cols * per_pair <= max(budget, per_pair)
    assert block_shape(3, 2, 2, 4, False, 10**12) == (3, 2)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from metaemb.core.gme.algebra import GME, llr, llr_matrix

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    n, d = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    f = GME(torch.randn(n, d, generator=gen), torch.rand(n, d, generator=gen) * 3)
    g = GME(torch.randn(n, d, generator=gen), torch.rand(n, d, generator=gen) * 3)
    try:  # reset the peak-RSS watermark (VmHWM) to the current RSS
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pass
    before = status("VmRSS")
    with torch.no_grad():
        m = llr_matrix(f, g)
    peak = status("VmHWM")
    idx = torch.randint(0, n, (200,), generator=gen)
    jdx = torch.randint(0, n, (200,), generator=gen)
    err = (m[idx, jdx] - llr(f[idx], g[jdx])).abs().max().item()
    print(peak - before, err)
    """
)


def measure_extra_peak(n: int, d: int) -> tuple[int, float]:
    """Peak extra resident memory of llr_matrix, measured in a fresh process (torch allocations are
    invisible to tracemalloc): the kernel's peak-RSS watermark VmHWM, reset just before the call
    through /proc/self/clear_refs, minus VmRSS before it. Without the reset VmHWM is the lifetime
    peak, which only over-estimates. (ru_maxrss is unusable: Linux carries it over from the parent
    across fork + exec.)"""
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(n), str(d)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    ).stdout.split()
    return int(out[0]), float(out[1])


def test_matrix_memory_bounded_small():
    # 1024 × 1024 × 64: one naive [N1, N2, d] float32 temporary would be 256 MB.
    extra, err = measure_extra_peak(1024, 64)
    assert extra < 48 * 2**20, f"extra peak {extra / 2**20:.1f} MB"
    assert err < 1e-5


@pytest.mark.slow
def test_matrix_memory_acceptance_4096():
    # Acceptance (issue 4): 4096 × 4096, d = 256 in < 512 MB extra (the output is 64 MB).
    extra, err = measure_extra_peak(4096, 256)
    assert extra < 512 * 2**20, f"extra peak {extra / 2**20:.1f} MB"
    assert err < 1e-4


# -- the scorer -----------------------------------------------------------------------------
def test_gme_scorer_scores_pairs_matrices_and_pooled_enrollment():
    from metaemb.core.plugin.manager import registry
    from metaemb.core.scoring.scorers import score_trials

    scorer = registry("scorers").get("gme")(chunk_mb=1)
    assert scorer.needs == "gme"
    g = random_gme(12, 6, seed=31)
    assert torch.allclose(scorer.score_matrix(g[:5], g), llr_matrix(g[:5], g), rtol=1e-12)
    assert torch.allclose(scorer.score(g[:4], g[4:8]), llr(g[:4], g[4:8]), rtol=1e-12)
    assert torch.allclose(scorer.score_matrix((g.a, g.b), g.state()), llr_matrix(g, g))
    groups, tests = [[0, 1, 2], [3], [4, 5]], [6, 7, 8]
    want = torch.stack([llr(pool(g[grp]), g[j])[0] for grp, j in zip(groups, tests, strict=True)])
    assert torch.allclose(score_trials(scorer, g, groups, tests), want, rtol=1e-12)
    matrix = scorer.score_groups_matrix(g, groups, g[6:])
    assert matrix.shape == (3, 6) and torch.allclose(matrix[:, :3].diagonal(), want, rtol=1e-12)
    with pytest.raises(DataError, match="meta-embeddings"):
        scorer.score_matrix(torch.zeros(3, 6), g)
    with pytest.raises(DataError, match="empty"):
        scorer.score_groups(g, [[0], []], [1, 2])


def test_gme_from_fitted_plda_matches_plda_scorer():
    # Acceptance: GMEs built from a fitted PLDA give the PLDA scorer's trial LLRs (≤ 1e-6),
    # single-sample and pooled multi-sample enrollment alike.
    from metaemb.core.scoring.scorers import PLDAScorer

    gen = torch.Generator().manual_seed(41)
    centres = torch.randn(30, 6, generator=gen, dtype=F64) * 2
    labels = torch.arange(30).repeat_interleave(5)
    x = (
        centres[labels]
        + torch.randn(150, 6, generator=gen, dtype=F64)
        @ torch.randn(6, 6, generator=gen, dtype=F64)
        * 0.3
    )
    plda = PLDAScorer(lda_dim=0, length_norm=False)
    plda.fit(x, labels)
    a, psi = plda.backend.gme(x)
    g = GME(a, psi.expand_as(a))
    assert torch.allclose(llr_matrix(g[:40], g), plda.score_matrix(x[:40], x), atol=1e-6)
    groups, tests = [[0, 1, 2], [5, 6], [7]], [3, 4, 100]
    assert torch.allclose(
        GMEScorer().score_groups(g, groups, tests), plda.score_groups(x, groups, tests), atol=1e-6
    )


def test_the_shared_precision_matrix_stays_accurate_at_large_precisions():
    """With one precision per side llr_matrix takes a matmul form; in float32 it lost 3 % at
    d = 2048, b ≈ 1e6, and a pair's score moved when an unrelated row was added (L1 G2)."""
    from metaemb.core.gme.algebra import GME, llr, llr_matrix

    rng = np.random.default_rng(1)
    d = 2048
    b1, b2 = 1e6 * rng.uniform(0.5, 2, d), 1e6 * rng.uniform(0.5, 2, d)
    z = rng.normal(size=d)
    a1, a2 = (
        b1 * (z + rng.normal(size=d) / np.sqrt(b1)),
        b2 * (z + rng.normal(size=d) / np.sqrt(b2)),
    )
    f1 = GME(torch.tensor(a1[None], dtype=torch.float32), torch.tensor(b1[None], dtype=torch.float32))  # fmt: skip
    f2 = GME(torch.tensor(a2[None], dtype=torch.float32), torch.tensor(b2[None], dtype=torch.float32))  # fmt: skip
    exact = float(llr(f1.to(torch.float64), f2.to(torch.float64)))
    assert abs(float(llr_matrix(f1, f2)) - exact) <= 1e-6 * abs(exact)
    other = GME.cat([f1, GME(torch.ones(1, d), torch.ones(1, d))])  # per-pair kernel instead
    assert abs(float(llr_matrix(other, f2)[0, 0]) - float(llr(f1, f2))) <= 1e-6 * abs(exact)


def test_numpy_meta_embeddings_are_named():
    """GME(numpy a, numpy b) failed with "'numpy.ndarray' object has no attribute 'dim'"."""
    from metaemb.core.gme.algebra import GME, GMEError

    with pytest.raises(GMEError, match="must be torch tensors, got ndarray and ndarray"):
        GME(np.zeros((2, 3)), np.ones((2, 3)))


def test_the_shared_precision_check_gives_no_autograd_warning():
    """Reading the precision's size from a tensor that requires grad warned "Converting a
    tensor with requires_grad=True to a scalar" at the first step of every GME run (R2-3)."""
    import warnings

    from metaemb.core.gme.algebra import GME, llr_matrix

    a = torch.randn(4, 3, requires_grad=True)
    b = torch.full((4, 3), 2.0, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        llr_matrix(GME(a, b), GME(a, b)).sum().backward()
    assert a.grad is not None


@pytest.mark.parametrize("full", [False, True])
def test_negative_or_nan_precisions_are_refused_outside_training(full):
    torch.manual_seed(0)
    a, b = torch.randn(3, 4), torch.rand(3, 4) + 0.1
    good = GME(a, torch.diag_embed(b) if full else b)
    llr(good, good)  # valid precisions pass
    for bad_value, word in ((-0.5, "negative"), (float("nan"), "NaN")):
        b_bad = b.clone()
        b_bad[1, 2] = bad_value
        bad = GME(a, torch.diag_embed(b_bad) if full else b_bad)
        with pytest.raises(GMEError, match=f"1 {word} value"):
            llr(good, bad)
        with pytest.raises(GMEError, match=f"1 {word} value"):
            llr_matrix(bad, good)
    # a rounding error of a valid precision is not an error
    b_round = b.clone()
    b_round[0, 0] = -1e-9
    llr_matrix(GME(a, torch.diag_embed(b_round) if full else b_round), good)


def test_precisions_in_a_training_graph_are_not_checked():
    a = torch.randn(3, 4)
    b = torch.full((3, 4), -0.5, requires_grad=True)  # no device sync during training
    llr(GME(a, b), GME(a, b.detach().abs()))


def test_a_full_precision_that_is_not_positive_semi_definite_is_named():
    """A symmetric b with a positive diagonal and a negative eigenvalue passed the diagonal
    check and failed in torch's Cholesky without naming 'b' (R3 F10)."""
    g = GME(torch.randn(1, 2), torch.tensor([[[1.0, 3.0], [3.0, 1.0]]]))
    with pytest.raises(GMEError, match=r"precision 'b' is not positive semi-definite"):
        llr(g, g)
    # an eigenvalue above −1 left I + b factorable: finite, meaningless LLRs (L2 F10)
    ok = GME(torch.randn(1, 2), torch.eye(2)[None])
    mild = GME(torch.randn(1, 2), torch.tensor([[[1.0, 1.2], [1.2, 1.0]]]))
    with pytest.raises(GMEError, match=r"precision 'b' is not positive semi-definite"):
        llr_matrix(mild, ok)
    skew = GME(torch.randn(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]))
    with pytest.raises(GMEError, match=r"is not symmetric"):
        llr(skew, ok)
    singular = GME(torch.randn(1, 2), torch.tensor([[[1.0, 1.0], [1.0, 1.0]]]))  # PSD: fine
    assert torch.isfinite(llr(singular, ok)).all()


@pytest.mark.parametrize("precision", [1e5, 1e6, 1e8, 1e10])
def test_very_confident_float32_meta_embeddings_score_as_in_float64(precision):
    """The per-pair form multiplies four precisions: float32 lost 0.08 nat at b = 1e5, 28 at
    1e8 and gave NaN from 1e10, while llr_matrix of the same pair stayed right (L2 F3)."""
    gen = torch.Generator().manual_seed(3)
    b1 = precision * (0.5 + 1.5 * torch.rand(20, 16, generator=gen))
    b2 = precision * (0.5 + 1.5 * torch.rand(20, 16, generator=gen))
    z = torch.randn(20, 16, generator=gen)
    a1 = b1 * (z + torch.randn(20, 16, generator=gen) / b1.sqrt())
    a2 = b2 * (z + torch.randn(20, 16, generator=gen) / b2.sqrt())
    f1, f2 = GME(a1, b1), GME(a2, b2)
    exact = llr(f1.to(F64), f2.to(F64))
    for got in (llr(f1, f2), llr_matrix(f1, f2).diagonal()):
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), exact, atol=1e-3, rtol=1e-6)


def test_infinite_precisions_and_non_finite_a_are_refused():
    """b = inf and a NaN/inf gave NaN LLRs without a word (L2 F3)."""
    ok = GME(torch.ones(1, 2), torch.ones(1, 2))
    with pytest.raises(GMEError, match="1 infinite value"):
        llr(GME(torch.ones(1, 2), torch.tensor([[1.0, math.inf]])), ok)
    with pytest.raises(GMEError, match="'a' of shape \\(1, 2\\) holds 1 NaN or infinite"):
        llr_matrix(GME(torch.tensor([[1.0, math.nan]]), torch.ones(1, 2)), ok)
