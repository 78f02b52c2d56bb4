"""LDA and two-covariance PLDA (x = μ + y + ε, y ~ N(0, B), ε ~ N(0, W)), trained by EM.

Everything is float64: PLDA log-likelihood ratios are differences of large quadratic forms and
float32 loses digits that calibration and the 1e-8 reference tests care about. After training,
W and B are simultaneously diagonalised (T W Tᵀ = I, T B Tᵀ = diag(ψ)), so scoring is O(d) per pair
and an all-vs-all block with equal enrollment counts is one matmul. `PLDABackend` is the usual
speaker back-end chain: mean subtraction → LDA → length-norm → PLDA.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError

DTYPE = torch.float64
LOG2PI = math.log(2.0 * math.pi)


def _as_f64(x: Tensor | Sequence, name: str = "embeddings") -> Tensor:
    t = torch.as_tensor(x).detach().to("cpu", DTYPE)
    if t.ndim != 2:
        raise DataError(f"{name} must be a 2-D [N, dim] array, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise DataError(f"{name} contain NaN or infinite values; check the embedding extractor")
    return t


def _labels(labels: Tensor | Sequence[int], n: int) -> tuple[Tensor, Tensor]:
    """Labels → (class index 0..K-1 per sample, count per class)."""
    lab = torch.as_tensor(labels).to("cpu").long().reshape(-1)
    if lab.numel() != n:
        raise DataError(f"got {lab.numel()} labels for {n} embeddings; they must match one to one")
    _, inverse, counts = torch.unique(lab, return_inverse=True, return_counts=True)
    return inverse, counts


def class_stats(x: Tensor, labels: Tensor | Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """(class means [K, d], counts [K], within-class scatter Σ_i Σ_j (x_ij − m_i)(x_ij − m_i)ᵀ)."""
    inverse, counts = _labels(labels, x.shape[0])
    sums = torch.zeros(counts.numel(), x.shape[1], dtype=x.dtype).index_add_(0, inverse, x)
    means = sums / counts[:, None].to(x.dtype)
    dev = x - means[inverse]
    return means, counts, dev.T @ dev


def length_norm(x: Tensor) -> Tensor:
    """Scale each row to norm √dim (Kaldi's convention; keeps per-dimension variance near 1)."""
    norm = x.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return x * (math.sqrt(x.shape[1]) / norm)


def _sym(a: Tensor) -> Tensor:
    return 0.5 * (a + a.T)


# ---------------------------------------------------------------------------------------------
def fit_lda(x: Tensor, labels: Tensor | Sequence[int], dim: int) -> tuple[Tensor, Tensor]:
    """Fisher LDA: (mean [D], transform [k, D]) with k = min(dim, n_classes − 1, D).

    The projected within-class covariance is the identity; rows are sorted by decreasing
    between/within variance ratio.
    """
    x = _as_f64(x)
    means, counts, sw = class_stats(x, labels)
    k = min(dim, counts.numel() - 1, x.shape[1])
    if k < 1:
        raise DataError("LDA needs at least two identities in the training embeddings")
    mean = x.mean(0)
    sw = _sym(sw / x.shape[0])
    centred = means - mean
    sb = _sym((centred * counts[:, None].to(DTYPE)).T @ centred / x.shape[0])
    # A small ridge keeps Sw invertible when dim > N − K (few samples per class).
    sw = sw + torch.eye(sw.shape[0], dtype=DTYPE) * (1e-9 * sw.diagonal().mean().clamp_min(1e-30))
    chol = torch.linalg.cholesky(sw)
    inv_l = torch.linalg.solve_triangular(chol, torch.eye(sw.shape[0], dtype=DTYPE), upper=False)
    evals, evecs = torch.linalg.eigh(_sym(inv_l @ sb @ inv_l.T))
    order = torch.argsort(evals, descending=True)[:k]
    transform = evecs[:, order].T @ inv_l
    return mean, transform


def fit_wccn(x: Tensor, labels: Tensor | Sequence[int], shrink: float = 0.1) -> Tensor:
    """Within-class covariance normalisation: the symmetric W^(-1/2) [D, D] of the within-class
    covariance W, shrunk towards its mean variance by `shrink` (0 ≤ shrink ≤ 1).

    Cosine after this transform weighs each direction by how little it varies within an
    identity (Hatch et al. 2006; the i-vector cosine back-end). Shrinkage keeps directions that
    barely vary in training from being blown up on data from elsewhere.
    """
    x = _as_f64(x)
    if not 0.0 <= shrink <= 1.0:
        raise DataError(f"wccn_shrink must be in [0, 1], got {shrink}")
    _, counts, sw = class_stats(x, labels)
    if int((counts > 1).sum()) < 1:
        raise DataError("WCCN needs an identity with at least two training samples")
    w = _sym(sw / x.shape[0])
    w = (1.0 - shrink) * w + shrink * torch.eye(w.shape[0], dtype=DTYPE) * w.diagonal().mean()
    evals, evecs = torch.linalg.eigh(w)
    evals = evals.clamp_min(1e-12 * float(evals.max().clamp_min(1e-30)))
    return _sym((evecs / evals.sqrt()) @ evecs.T)


# ---------------------------------------------------------------------------------------------
def _class_loglik(
    means: Tensor, counts: Tensor, scatter: Tensor, b: Tensor, w: Tensor
) -> tuple[float, list[tuple[Tensor, Tensor, Tensor]]]:
    """Marginal log-likelihood of centred data under the model, plus per-count posteriors.

    For a class with n samples, mean m and scatter S_i:
    log p = −(n−1)d/2·log2π − (n−1)/2·log|W| − d/2·log n − ½ tr(W⁻¹S_i) + log N(m; 0, B + W/n).
    Returns the total and, per distinct n, (class indices, C_n, posterior means w_i).
    """
    d = b.shape[0]
    n_total = int(counts.sum())
    n_classes = counts.numel()
    chol_w = torch.linalg.cholesky(w)
    logdet_w = 2.0 * chol_w.diagonal().log().sum()
    tr_term = torch.cholesky_solve(scatter, chol_w).diagonal().sum()
    ll = -0.5 * (n_total - n_classes) * (d * LOG2PI + logdet_w) - 0.5 * tr_term
    posts = []
    for n in torch.unique(counts).tolist():
        idx = torch.nonzero(counts == n).squeeze(1)
        m = means[idx]
        cov = _sym(b + w / n)
        chol = torch.linalg.cholesky(cov)
        sol = torch.cholesky_solve(m.T, chol)  # (B + W/n)⁻¹ m
        logdet = 2.0 * chol.diagonal().log().sum()
        quad = (m.T * sol).sum(0)
        ll = ll - 0.5 * d * math.log(n) * idx.numel()
        ll = ll - 0.5 * (idx.numel() * (d * LOG2PI + logdet) + quad.sum())
        # Posterior of y given the class mean: w_i = B (B + W/n)⁻¹ m_i, C_n = B − B (B + W/n)⁻¹ B.
        post_mean = (b @ sol).T
        post_cov = _sym(b - b @ torch.cholesky_solve(b, chol))
        posts.append((idx, post_cov, post_mean))
    return float(ll), posts


@dataclass
class PLDA:
    """A fitted two-covariance PLDA model in its input space, with its diagonal form.

    `transform` (T) and `psi` (ψ) satisfy T W Tᵀ = I and T B Tᵀ = diag(ψ); in that space a sample
    becomes z = T (x − mean), and its Gaussian meta-embedding is a = √ψ ⊙ z, precision diag(ψ).
    """

    mean: Tensor
    between: Tensor
    within: Tensor
    transform: Tensor = field(init=False)
    psi: Tensor = field(init=False)
    loglik: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.transform, self.psi = diagonalise(self.within, self.between)

    @classmethod
    def fit(
        cls, x: Tensor, labels: Tensor | Sequence[int], iterations: int = 10, source_dim: int = 0
    ) -> PLDA:
        """EM training as in the speaker spec; `loglik` holds the training log-likelihood of
        the initial model and after every iteration (non-decreasing). `source_dim`: the
        dimension of the embeddings before an LDA made `x` (for the ill-conditioning warning:
        LDA's own within-identity covariance is singular below it)."""
        x = _as_f64(x)
        if iterations < 0:
            raise DataError(f"PLDA iterations must be ≥ 0, got {iterations}")
        mu = x.mean(0)
        xc = x - mu
        means, counts, scatter = class_stats(xc, labels)
        n_total, n_classes, d = x.shape[0], counts.numel(), x.shape[1]
        if n_classes < 2:
            raise DataError("PLDA needs at least two identities in the training embeddings")
        eye = torch.eye(d, dtype=DTYPE)
        # Initialise with the empirical within/between covariances (ridged so both are PD).
        w = _sym(scatter / n_total)
        b = _sym(means.T @ means / n_classes)
        scale = (w.diagonal().mean() + b.diagonal().mean()).clamp_min(1e-30)
        w = w + 1e-6 * scale * eye
        b = b + 1e-6 * scale * eye
        history = []
        for _ in range(iterations):
            ll, posts = _class_loglik(means, counts, scatter, b, w)
            history.append(ll)
            w_acc = scatter.clone()
            b_acc = torch.zeros(d, d, dtype=DTYPE)
            for idx, post_cov, post_mean in posts:
                n = float(counts[idx[0]])
                k = idx.numel()
                resid = means[idx] - post_mean
                w_acc += n * (k * post_cov + resid.T @ resid)
                b_acc += k * post_cov + post_mean.T @ post_mean
            w = _sym(w_acc / n_total)
            b = _sym(b_acc / n_classes)
        history.append(_class_loglik(means, counts, scatter, b, w)[0])
        model = cls(mu, b, w, loglik=history)
        warn_if_ill_conditioned(model.psi, n_total - n_classes, max(d, source_dim))
        return model

    # -- the diagonal space -----------------------------------------------------------------
    def to_diagonal(self, x: Tensor) -> Tensor:
        """z = T (x − mean): within-class covariance I, between-class diag(ψ)."""
        return (torch.as_tensor(x, dtype=DTYPE) - self.mean) @ self.transform.T

    def llr_pairs(self, u: Tensor, v: Tensor, n: Tensor | int = 1) -> Tensor:
        """LLR of aligned pairs: enrollment mean u of n recordings vs test v (diagonal space)."""
        return llr_pairs(self.psi, u, v, n)

    def llr_matrix(self, u: Tensor, v: Tensor, n: int = 1) -> Tensor:
        """All-vs-all LLR block [len(u), len(v)] for enrollments that all have n recordings."""
        return llr_matrix(self.psi, u, v, n)


ILL_CONDITIONED = 1e5  # between/within variance ratio past which LLRs are not evidence


def warn_if_ill_conditioned(psi: Tensor, within_dof: int | None = None, dims: int = 0) -> None:
    """A direction in which the training embeddings of an identity barely vary (a collapsed
    or barely trained model, near-duplicate samples, or fewer samples than dimensions) makes
    PLDA's LLRs astronomically large: Cllr and any threshold on them are then meaningless.
    `within_dof` (samples − identities) names the last cause when it is below `dims` (the
    embeddings' dimension, before any LDA)."""
    ratio = float(psi.max()) if psi.numel() else 0.0
    if ratio <= ILL_CONDITIONED:
        return
    d = max(psi.numel(), dims)
    if within_dof is not None and within_dof < d:
        why = (
            f"The training embeddings give {within_dof} within-identity degrees of freedom "
            f"(samples − identities) for {d} dimensions, so their within-identity covariance "
            f"is singular (an LDA fitted on it is too): fit on more samples per identity, or "
            f"train a smaller embedding (model.dim below {within_dof}); or score with cosine."
        )
    else:
        why = (
            "The model may embed samples almost alike (too little training) or the training "
            "data hold near-duplicates; score with cosine, or train longer."
        )
    warnings.warn(
        f"PLDA is ill-conditioned: in some direction the training embeddings vary "
        f"{ratio:.2g} times more between identities than within one, so its LLRs will be "
        f"huge and overconfident. {why}",
        stacklevel=3,
    )


def diagonalise(within: Tensor, between: Tensor) -> tuple[Tensor, Tensor]:
    """T with T W Tᵀ = I and T B Tᵀ = diag(ψ), ψ sorted decreasing."""
    d = within.shape[0]
    chol = torch.linalg.cholesky(_sym(within.to(DTYPE)))
    inv_l = torch.linalg.solve_triangular(chol, torch.eye(d, dtype=DTYPE), upper=False)
    psi, u = torch.linalg.eigh(_sym(inv_l @ between.to(DTYPE) @ inv_l.T))
    order = torch.argsort(psi, descending=True)
    return u[:, order].T @ inv_l, psi[order].clamp_min(0.0)


def _llr_terms(psi: Tensor, n: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-dimension pieces of log N(v; a u, s1) − log N(v; 0, s0) with a = nψ/(nψ+1),
    s1 = 1 + ψ/(nψ+1), s0 = 1 + ψ: (constant, v² coefficient, u·v coefficient, u² coefficient)."""
    n = n.to(DTYPE)
    denom = n * psi + 1.0
    a = n * psi / denom
    s1 = 1.0 + psi / denom
    s0 = 1.0 + psi
    const = 0.5 * (torch.log(s0) - torch.log(s1)).sum(-1)
    return const, 0.5 * (1.0 / s0 - 1.0 / s1), a / s1, -0.5 * a * a / s1


def llr_pairs(psi: Tensor, u: Tensor, v: Tensor, n: Tensor | int = 1) -> Tensor:
    """PLDA LLR of aligned pairs in the diagonal space; n (recordings per enrollment) is a
    scalar or one count per pair. Memory: a few [N, d] temporaries."""
    n_t = torch.as_tensor(n).reshape(-1)
    if n_t.numel() == 1:
        n_t = n_t.expand(u.shape[0])
    out = torch.empty(u.shape[0], dtype=DTYPE)
    for count in torch.unique(n_t).tolist():
        rows = torch.nonzero(n_t == count).squeeze(1) if n_t.numel() else n_t.long()
        uu, vv = u[rows], v[rows]
        const, cv, cuv, cu = _llr_terms(psi, torch.tensor(float(count), dtype=DTYPE))
        out[rows] = const + (vv * vv) @ cv + (uu * vv) @ cuv + (uu * uu) @ cu
    return out


def llr_matrix(psi: Tensor, u: Tensor, v: Tensor, n: int = 1) -> Tensor:
    """All-vs-all LLR for equal enrollment counts n: the quadratic form becomes one matmul."""
    const, cv, cuv, cu = _llr_terms(psi, torch.tensor(float(n), dtype=DTYPE))
    left = (u * u) @ cu + const
    right = (v * v) @ cv
    return torch.addmm(left[:, None] + right[None, :], u * cuv, v.T)


# ---------------------------------------------------------------------------------------------
class PLDABackend:
    """mean subtraction → LDA (dim capped at n_classes − 1 and the input dim) → length-norm →
    PLDA. `lda_dim = 0` skips LDA. Exposes every fitted tensor for saving and for PLDA → GME."""

    KEYS = ("center", "lda", "plda_mean", "between", "within")

    def __init__(self, lda_dim: int = 200, iterations: int = 10, length_norm: bool = True) -> None:
        if lda_dim < 0 or iterations < 1:
            raise ConfigError(
                f"PLDA needs lda_dim ≥ 0 (0 skips LDA) and iterations ≥ 1; got lda_dim={lda_dim}, "
                f"iterations={iterations}."
            )
        self.lda_dim = lda_dim
        self.iterations = iterations
        self.use_length_norm = length_norm
        self.center: Tensor | None = None
        self.lda: Tensor | None = None
        self.plda: PLDA | None = None

    def _note_lower_lda(self, kept: int, dim: int, why: str = "training identities − 1") -> None:
        """LDA keeps at most (training identities − 1) dimensions, or as many as the PCA before
        it kept (`why`): say so once when that is fewer than `lda_dim` asked for (LDA-200 on 150
        speakers keeps 149). Fewer than the embedding has is no surprise and is not reported."""
        if kept < min(self.lda_dim, dim) and not getattr(self, "_lda_noted", False):
            self._lda_noted = True
            warnings.warn(
                f"PLDA: lda_dim = {self.lda_dim}, but LDA can keep at most {kept} dimensions "
                f"here ({why}); it keeps {kept}.",
                stacklevel=2,
            )

    def fit(self, x: Tensor, labels: Tensor | Sequence[int]) -> PLDABackend:
        x = _as_f64(x)
        self.center = x.mean(0)
        pca = self._small_sample_pca(x - self.center, labels)
        if self.lda_dim > 0:
            reduced = pca.shape[0] < pca.shape[1]  # else the identity: no copy of N × D
            centred = (x - self.center) @ pca.T if reduced else x - self.center
            _, lda = fit_lda(centred, labels, self.lda_dim)
            self.lda = lda @ pca
            ids = int(torch.as_tensor(labels).unique().numel())
            why = "training identities − 1" if lda.shape[0] == ids - 1 else (
                f"the {pca.shape[0]} principal directions the PCA before it keeps")  # fmt: skip
            self._note_lower_lda(int(self.lda.shape[0]), x.shape[1], why)
        else:
            self.lda = pca
        self.plda = PLDA.fit(self.preprocess(x), labels, self.iterations, x.shape[1])
        return self

    def _small_sample_pca(self, centred: Tensor, labels: Tensor | Sequence[int]) -> Tensor:
        """[k, D]: the identity, or, with fewer within-identity degrees of freedom (samples −
        identities) than dimensions, the k = half that many principal directions. The
        within-identity covariance is singular there: LDA picks its null space, where every
        sample of an identity projects to one point, and PLDA's Cholesky fails. PCA before LDA
        is Belhumeur et al.'s remedy (Fisherfaces, 1997); they keep all samples − identities
        directions, whose last ones vary too little within an identity to be estimated (LLRs
        in the thousands), so half are kept."""
        n, dim = centred.shape
        dof = n - int(torch.as_tensor(labels).unique().numel())
        if dof >= dim or dof < 1:
            return torch.eye(dim, dtype=DTYPE)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        keep = max(1, dof // 2)
        if not getattr(self, "_pca_noted", False):
            self._pca_noted = True
            warnings.warn(
                f"PLDA: the training embeddings give {dof} within-identity degrees of freedom "
                f"(samples − identities) for {dim} dimensions, so their within-identity "
                f"covariance is singular; they are first projected on their {keep} principal "
                "directions. More samples per identity, or a smaller model.dim, fit PLDA better.",
                stacklevel=3,
            )
        return vh[:keep]

    @property
    def fitted(self) -> bool:
        return self.plda is not None

    def preprocess(self, x: Tensor) -> Tensor:
        """The PLDA input space: centred, LDA-projected, length-normalised (float64)."""
        assert self.center is not None and self.lda is not None
        y = (_as_f64(x) - self.center) @ self.lda.T
        return length_norm(y) if self.use_length_norm else y

    def diagonal(self, x: Tensor) -> Tensor:
        """Raw embeddings → PLDA diagonal space."""
        assert self.plda is not None
        return self.plda.to_diagonal(self.preprocess(x))

    def gme(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Gaussian meta-embeddings of raw embeddings: (a = √ψ ⊙ z [N, k], precision ψ [k])."""
        assert self.plda is not None
        return self.diagonal(x) * self.plda.psi.sqrt(), self.plda.psi.clone()

    def state_dict(self) -> dict[str, Tensor]:
        assert self.plda is not None and self.center is not None and self.lda is not None
        return {
            "center": self.center,
            "lda": self.lda,
            "plda_mean": self.plda.mean,
            "between": self.plda.between,
            "within": self.plda.within,
            "loglik": torch.tensor(self.plda.loglik, dtype=DTYPE),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = [k for k in self.KEYS if k not in state]
        if missing:
            raise DataError(f"PLDA state is missing {', '.join(missing)}; was it saved by metaemb?")
        self.center = state["center"].to(DTYPE)
        self.lda = state["lda"].to(DTYPE)
        loglik = state.get("loglik", torch.zeros(0)).tolist()
        self.plda = PLDA(
            state["plda_mean"].to(DTYPE),
            state["between"].to(DTYPE),
            state["within"].to(DTYPE),
            loglik=loglik,
        )
