"""PLDA and LDA against independent references: joint-Gaussian LLRs (scipy), the docs/reference/gme.md TV4
vector, brute-force class log-likelihoods, generalized eigenproblems, and EER on data sampled from
a known model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import multivariate_normal
from sklearn.metrics import roc_curve

from metaemb.core.errors import DataError
from metaemb.core.eval import metrics
from metaemb.core.scoring.plda import PLDA, PLDABackend, diagonalise, fit_lda, llr_matrix, llr_pairs
from metaemb.core.scoring.scorers import PLDAScorer, score_trials

F64 = torch.float64


def random_spd(rng: np.random.Generator, d: int, scale: float = 1.0) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.3 * np.eye(d))


def sample_plda(rng, mu, b, w, n_classes, per_class):
    """x = μ + y + ε with y ~ N(0, B), ε ~ N(0, W)."""
    d = len(mu)
    y = rng.multivariate_normal(np.zeros(d), b, size=n_classes)
    labels = np.repeat(np.arange(n_classes), per_class)
    eps = rng.multivariate_normal(np.zeros(d), w, size=n_classes * per_class)
    return mu + y[labels] + eps, labels


def joint_llr(enroll: np.ndarray, test: np.ndarray, mu, b, w) -> float:
    """Two-covariance LLR from the joint Gaussian of [enroll…, test]: same vs different identity."""
    rows = np.vstack([enroll, test[None]]) - mu
    n, d = rows.shape
    same = np.kron(np.ones((n, n)), b) + np.kron(np.eye(n), w)
    diff = same.copy()
    diff[: (n - 1) * d, (n - 1) * d :] = 0.0
    diff[(n - 1) * d :, : (n - 1) * d] = 0.0
    flat = rows.reshape(-1)
    return multivariate_normal(np.zeros(n * d), same).logpdf(flat) - multivariate_normal(
        np.zeros(n * d), diff
    ).logpdf(flat)


def eer(tar: np.ndarray, non: np.ndarray) -> float:
    """EER from sklearn's ROC: the point where miss and false-alarm rates cross (interpolated)."""
    y = np.r_[np.ones(len(tar)), np.zeros(len(non))]
    fpr, tpr, _ = roc_curve(y, np.r_[tar, non])
    fnr = 1.0 - tpr
    i = np.nonzero(fnr <= fpr)[0][0]
    if i == 0:
        return float(fpr[0])
    # Linear interpolation between the two ROC points around the crossing.
    d0, d1 = fpr[i - 1] - fnr[i - 1], fpr[i] - fnr[i]
    t = d0 / (d0 - d1)
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def test_tv4_known_answer():
    b = torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=F64)
    w = torch.tensor([[0.5, 0.1], [0.1, 1.0]], dtype=F64)
    model = PLDA(torch.tensor([0.1, -0.2], dtype=F64), b, w)
    z = model.to_diagonal(torch.tensor([[1.0, 0.4], [0.6, -0.1]], dtype=F64))
    assert abs(float(model.llr_pairs(z[:1], z[1:])[0]) - 0.58411671787988) < 1e-12
    assert abs(float(model.llr_matrix(z[:1], z[1:])[0, 0]) - 0.58411671787988) < 1e-12


def test_simultaneous_diagonalisation():
    rng = np.random.default_rng(0)
    w, b = random_spd(rng, 6), random_spd(rng, 6, 3.0)
    t, psi = diagonalise(torch.tensor(w), torch.tensor(b))
    t = t.numpy()
    np.testing.assert_allclose(t @ w @ t.T, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(t @ b @ t.T, np.diag(psi.numpy()), atol=1e-10)
    assert (np.diff(psi.numpy()) <= 0).all()
    # ψ are the generalized eigenvalues of (B, W).
    np.testing.assert_allclose(np.sort(psi.numpy()), scipy.linalg.eigh(b, w, eigvals_only=True))


def test_llr_equals_joint_gaussian_single_and_multi_enrollment():
    """Fitted model (with LDA + length-norm chain): every LLR equals the joint-Gaussian LLR of the
    model's own B, W, μ in the PLDA input space, for enrollments of 1, 2 and 4 recordings."""
    rng = np.random.default_rng(1)
    d = 8
    raw, labels = sample_plda(
        rng, rng.standard_normal(d), random_spd(rng, d, 4.0), random_spd(rng, d), 30, 6
    )
    scorer = PLDAScorer(lda_dim=5, iterations=5)
    scorer.fit(torch.tensor(raw), torch.tensor(labels))
    model = scorer.backend.plda
    x = scorer.backend.preprocess(torch.tensor(raw)).numpy()
    mu, b, w = model.mean.numpy(), model.between.numpy(), model.within.numpy()
    groups = [[0], [3], [7, 8], [20, 21, 22, 23], [40]]
    tests = [1, 50, 9, 100, 41]
    got = score_trials(scorer, torch.tensor(raw), groups, tests).numpy()
    want = [joint_llr(x[g], x[t], mu, b, w) for g, t in zip(groups, tests, strict=True)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)
    # Aligned pairs and the all-vs-all matrix agree with the same reference.
    pairs = scorer.score(torch.tensor(raw[[0, 3]]), torch.tensor(raw[[1, 50]])).numpy()
    np.testing.assert_allclose(pairs, want[:2], atol=1e-8)
    mat = scorer.score_matrix(torch.tensor(raw[[0, 3]]), torch.tensor(raw[[1, 50]])).numpy()
    np.testing.assert_allclose(np.diag(mat), want[:2], atol=1e-8)
    np.testing.assert_allclose(mat[0, 1], joint_llr(x[[0]], x[50], mu, b, w), atol=1e-8)
    # Groups of equal size as an all-vs-all matrix: one matmul per count.
    gm = scorer.score_groups_matrix(
        torch.tensor(raw), [[7, 8], [0], [30, 31]], torch.tensor(raw[:3])
    )
    np.testing.assert_allclose(gm[2, 1].item(), joint_llr(x[[30, 31]], x[1], mu, b, w), atol=1e-8)
    np.testing.assert_allclose(gm[1, 2].item(), joint_llr(x[[0]], x[2], mu, b, w), atol=1e-8)


def test_llr_pairs_matches_matrix_formula():
    rng = np.random.default_rng(2)
    psi = torch.tensor(rng.uniform(0.1, 5.0, 7))
    u, v = torch.tensor(rng.standard_normal((5, 7))), torch.tensor(rng.standard_normal((6, 7)))
    for n in (1, 3):
        m = llr_matrix(psi, u, v, n)
        p = llr_pairs(psi, u.repeat_interleave(6, 0), v.repeat(5, 1), n).reshape(5, 6)
        torch.testing.assert_close(m, p, rtol=0, atol=1e-12)


def class_loglik_bruteforce(x, labels, b, w):
    """Σ over classes of log N([x_i1 … x_in]; 0, 1 1ᵀ ⊗ B + I ⊗ W) on centred data."""
    total = 0.0
    for c in np.unique(labels):
        rows = x[labels == c]
        n, d = rows.shape
        cov = np.kron(np.ones((n, n)), b) + np.kron(np.eye(n), w)
        total += multivariate_normal(np.zeros(n * d), cov).logpdf(rows.reshape(-1))
    return total


def test_em_loglik_is_the_likelihood_and_increases():
    rng = np.random.default_rng(3)
    d = 4
    x, labels = sample_plda(rng, np.zeros(d), random_spd(rng, d, 2.0), random_spd(rng, d), 40, 1)
    # Unequal class sizes, so several posterior covariances are involved.
    x2, l2 = sample_plda(rng, np.zeros(d), random_spd(rng, d, 2.0), random_spd(rng, d), 25, 5)
    x, labels = np.vstack([x, x2]), np.r_[labels, l2 + 100]
    for iters in (0, 1, 7):
        m = PLDA.fit(torch.tensor(x), torch.tensor(labels), iterations=iters)
        assert len(m.loglik) == iters + 1
        ref = class_loglik_bruteforce(
            x - m.mean.numpy(), labels, m.between.numpy(), m.within.numpy()
        )
        assert abs(m.loglik[-1] - ref) < 1e-6 * abs(ref)
    m = PLDA.fit(torch.tensor(x), torch.tensor(labels), iterations=20)
    steps = np.diff(m.loglik)
    assert (steps >= -1e-9 * abs(m.loglik[0])).all(), m.loglik
    assert m.loglik[-1] > m.loglik[0] + 1.0


def test_fitted_model_eer_close_to_true_model():
    """Data from a known PLDA model: the EM fit scores held-out speakers within 1 % EER of the
    true model (the acceptance criterion), both alone and through the scorer's full chain."""
    rng = np.random.default_rng(4)
    d = 10
    mu = rng.standard_normal(d)
    b, w = random_spd(rng, d, 0.8), random_spd(rng, d, 1.5)
    train, tl = sample_plda(rng, mu, b, w, 300, 8)
    test, el = sample_plda(rng, mu, b, w, 150, 8)
    iu = np.triu_indices(len(el), 1)
    same = (el[:, None] == el[None, :])[iu]

    def eer_of(mat):
        s = mat[iu]
        return eer(s[same], s[~same])

    truth = PLDA(torch.tensor(mu), torch.tensor(b), torch.tensor(w))
    zt = truth.to_diagonal(torch.tensor(test))
    true_eer = eer_of(truth.llr_matrix(zt, zt).numpy())
    fit = PLDA.fit(torch.tensor(train), torch.tensor(tl))
    zf = fit.to_diagonal(torch.tensor(test))
    fit_eer = eer_of(fit.llr_matrix(zf, zf).numpy())
    # Mean subtraction and full-rank LDA are invertible: the chain is the same model family
    # (length-norm is off: it suits heavy-tailed embeddings, not Gaussian data).
    scorer = PLDAScorer(lda_dim=200, length_norm=False)
    scorer.fit(torch.tensor(train), torch.tensor(tl))
    chain_eer = eer_of(scorer.score_matrix(torch.tensor(test), torch.tensor(test)).numpy())
    assert 0.02 < true_eer < 0.3  # a non-trivial task
    assert abs(fit_eer - true_eer) < 0.01, (fit_eer, true_eer)
    assert abs(chain_eer - true_eer) < 0.01, (chain_eer, true_eer)
    # The fitted model beats a mismatched one (identity covariances), so the check has teeth.
    naive = PLDA(torch.tensor(mu), torch.eye(d, dtype=F64), torch.eye(d, dtype=F64))
    zn = naive.to_diagonal(torch.tensor(test))
    assert eer_of(naive.llr_matrix(zn, zn).numpy()) > true_eer + 0.01


def test_lda_solves_generalized_eigenproblem():
    rng = np.random.default_rng(5)
    d = 6
    x, labels = sample_plda(rng, np.zeros(d), random_spd(rng, d, 3.0), random_spd(rng, d), 20, 5)
    mean, t = fit_lda(torch.tensor(x), torch.tensor(labels), dim=3)
    assert t.shape == (3, d)
    means = np.stack([x[labels == c].mean(0) for c in range(20)])
    sw = sum((x[labels == c] - means[c]).T @ (x[labels == c] - means[c]) for c in range(20)) / len(
        x
    )
    sb = (means - x.mean(0)).T @ (means - x.mean(0)) * 5 / len(x)
    t = t.numpy()
    np.testing.assert_allclose(t @ sw @ t.T, np.eye(3), atol=1e-6)
    top = scipy.linalg.eigh(sb, sw, eigvals_only=True)[::-1][:3]
    np.testing.assert_allclose(np.diag(t @ sb @ t.T), top, rtol=1e-6)
    np.testing.assert_allclose(mean.numpy(), x.mean(0), atol=1e-12)
    # Capped at n_classes − 1.
    _, t2 = fit_lda(torch.tensor(x[:15]), torch.tensor(labels[:15]), dim=200)
    assert t2.shape[0] == 2


def test_backend_state_round_trip_and_gme():
    rng = np.random.default_rng(6)
    x, labels = sample_plda(rng, np.zeros(6), random_spd(rng, 6, 2.0), random_spd(rng, 6), 12, 4)
    be = PLDABackend(lda_dim=4, iterations=3).fit(torch.tensor(x), torch.tensor(labels))
    again = PLDABackend()
    again.load_state_dict(be.state_dict())
    torch.testing.assert_close(again.diagonal(torch.tensor(x)), be.diagonal(torch.tensor(x)))
    a, prec = be.gme(torch.tensor(x))
    torch.testing.assert_close(a, be.diagonal(torch.tensor(x)) * be.plda.psi.sqrt())
    torch.testing.assert_close(prec, be.plda.psi)
    with pytest.raises(DataError, match="missing"):
        PLDABackend().load_state_dict({"center": torch.zeros(3)})


def test_bad_input_errors():
    with pytest.raises(DataError, match="two identities"):
        PLDA.fit(torch.randn(10, 3, dtype=F64), torch.zeros(10))
    with pytest.raises(DataError, match="labels"):
        PLDA.fit(torch.randn(10, 3, dtype=F64), torch.zeros(9))
    with pytest.raises(DataError, match="NaN"):
        PLDA.fit(torch.full((4, 2), float("nan")), torch.tensor([0, 0, 1, 1]))


def test_impossible_plda_options_are_refused_when_built():
    from metaemb.core.errors import ConfigError

    for opts in ({"lda_dim": -1}, {"iterations": 0}):
        with pytest.raises(ConfigError, match="lda_dim ≥ 0"):
            PLDABackend(**opts)
    PLDABackend(lda_dim=0)  # 0 skips LDA


def test_a_fit_on_embeddings_that_barely_vary_within_an_identity_is_warned_about():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 4, generator=g, dtype=torch.float64)
    labels = torch.arange(6).repeat_interleave(5)
    x = centres[labels] + 1e-7 * torch.randn(30, 4, generator=g, dtype=torch.float64)
    with pytest.warns(UserWarning, match="PLDA is ill-conditioned.*almost alike"):
        PLDA.fit(x, labels, iterations=2)
    # Fewer samples than dimensions within identities (12 − 6 = 6 < 16): that cause is named.
    wide = torch.randn(6, 16, generator=g, dtype=torch.float64)
    two = torch.arange(6).repeat_interleave(2)
    few = wide[two] + 0.3 * torch.randn(12, 16, generator=g, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"6 within-identity degrees of freedom .* for 16 dim"):
        PLDA.fit(few, two, iterations=2)
    # The same through the backend, after an LDA to fewer dimensions than the freedom: the
    # embeddings' own dimension is what the LDA's within-identity covariance has to fill.
    with pytest.warns(UserWarning, match=r"6 within-identity degrees of freedom .* for 16 dim"):
        PLDABackend(lda_dim=4, iterations=2).fit(few, two)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PLDA.fit(centres[labels] + 0.3 * torch.randn(30, 4, generator=g, dtype=torch.float64),
                 labels, iterations=2)  # fmt: skip


def test_fewer_within_identity_samples_than_dimensions_fit_after_a_pca():
    """10 speakers × 12 utterances of 512-dimensional x-vectors (110 within-speaker degrees of
    freedom) crashed the x-vector + PLDA recipe's first validation in Cholesky, losing the
    epoch (S5 F1): LDA chose the within-speaker null space. A PCA to half the freedom comes
    first, said once, and same-speaker pairs score above different-speaker ones."""
    g = torch.Generator().manual_seed(0)
    speakers = torch.randn(30, 512, generator=g, dtype=torch.float64)
    labels = torch.arange(10).repeat_interleave(12)
    x = speakers[labels] + 0.5 * torch.randn(120, 512, generator=g, dtype=torch.float64)
    for lda_dim in (200, 0):
        backend = PLDABackend(lda_dim=lda_dim, iterations=5)
        with pytest.warns(UserWarning, match=r"110 within-identity degrees of freedom .* 512 "
                          r"dimensions.* projected on their 55 principal directions"):  # fmt: skip
            backend.fit(x, labels)
        assert backend.lda.shape[1] == 512 and backend.lda.shape[0] <= 55
        test = torch.arange(10, 30).repeat_interleave(3)
        e = speakers[test] + 0.5 * torch.randn(60, 512, generator=g, dtype=torch.float64)
        z = backend.diagonal(e)
        scores = backend.plda.llr_matrix(z, z)
        same = test[:, None] == test[None]
        off = ~torch.eye(60, dtype=torch.bool)
        assert torch.isfinite(scores).all()
        assert scores[same & off].mean() > scores[~same].mean()
        assert metrics.eer(scores[same & off].numpy(), scores[~same].numpy()) < 0.15
    # the LDA note names what limits it: the PCA, not the identities (R8 F7)
    c = torch.randn(60, 32, generator=g, dtype=torch.float64)
    ids = torch.cat([torch.arange(60), torch.arange(11)])
    with pytest.warns(UserWarning) as said:
        PLDABackend(lda_dim=20, iterations=2).fit(c[ids] + 0.3 * torch.randn(71, 32, generator=g, dtype=torch.float64), ids)  # fmt: skip
    [lda] = [str(w.message) for w in said if "lda_dim = 20" in str(w.message)]
    assert "the 5 principal directions the PCA before it keeps" in lda
