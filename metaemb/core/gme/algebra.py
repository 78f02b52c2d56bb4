"""Gaussian meta-embeddings (docs/reference/gme.md): a likelihood exp(aᵀz − ½ zᵀBz) over a hidden identity
z ~ N(0, I) instead of a point. Comparing two of them gives a log-likelihood ratio in closed form.

Natural parameters: `a` [N, d]; `b` is [N, d] (diagonal precision, "DGME") or [N, d, d] (full).
Every function works for float32/float64, CPU/CUDA and under autograd, and never exponentiates
a log-expectation (it overflows for d ≈ 200).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from metaemb.core.errors import MetaembError

#: Default budget for the temporaries of one block of an all-vs-all matrix (cache-friendly).
DEFAULT_CHUNK_BYTES = 8 * 2**20
#: How many [rows, N2, d] temporaries the diagonal kernel keeps alive at once (measured upper bound).
_DIAG_LIVE_TEMPS = 6


class GMEError(MetaembError, ValueError):
    """Meta-embeddings with mismatched shapes, dimensions or priors."""


@dataclass(frozen=True)
class GME:
    """A batch of N Gaussian meta-embeddings: `a` [N, d], `b` [N, d] (diagonal) or [N, d, d].

    Indexing always keeps the batch dimension (`g[3]` is a batch of one), so every result is
    again a valid input to the functions below.
    """

    a: Tensor
    b: Tensor

    def __post_init__(self) -> None:
        a, b = self.a, self.b
        if not isinstance(a, Tensor) or not isinstance(b, Tensor):
            raise GMEError(
                f"GME 'a' and 'b' must be torch tensors, got {type(a).__name__} and "
                f"{type(b).__name__} (torch.as_tensor converts numpy arrays)"
            )
        if a.dim() != 2:
            raise GMEError(f"GME 'a' must be [N, d], got shape {tuple(a.shape)}")
        if b.shape != a.shape and b.shape != (*a.shape, a.shape[1]):
            raise GMEError(
                f"GME 'b' must be [N, d] (diagonal) or [N, d, d] (full) matching 'a' "
                f"{tuple(a.shape)}, got {tuple(b.shape)}"
            )

    # -- structure ---------------------------------------------------------------------
    @property
    def full(self) -> bool:
        return self.b.dim() == 3

    @property
    def dim(self) -> int:
        return self.a.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.a.dtype

    @property
    def device(self) -> torch.device:
        return self.a.device

    def __len__(self) -> int:
        return self.a.shape[0]

    def __getitem__(self, index: Any) -> GME:
        if not isinstance(index, (slice, list, tuple)) and not (
            isinstance(index, Tensor) and index.dim() > 0
        ):
            index = operator.index(index)  # ints, numpy ints, 0-d integer tensors
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return GME(self.a[index], self.b[index])

    def to(self, *args: Any, **kwargs: Any) -> GME:
        return GME(self.a.to(*args, **kwargs), self.b.to(*args, **kwargs))

    def detach(self) -> GME:
        return GME(self.a.detach(), self.b.detach())

    def to_full(self) -> GME:
        return self if self.full else GME(self.a, torch.diag_embed(self.b))

    def __add__(self, other: GME) -> GME:
        """Pooling of aligned pairs: natural parameters add."""
        x, y = _same_form(self, other)
        return GME(x.a + y.a, x.b + y.b)

    def __sub__(self, other: GME) -> GME:
        """Removes evidence (leave-one-out pools)."""
        x, y = _same_form(self, other)
        return GME(x.a - y.a, x.b - y.b)

    @classmethod
    def cat(cls, gmes: Sequence[GME]) -> GME:
        """Concatenate batches (the embedding extractor calls `type(out).cat(outputs)`)."""
        return cat(gmes)

    def state(self) -> dict[str, Tensor]:
        """Plain tensors to save (no pickle)."""
        return {"a": self.a, "b": self.b}

    @staticmethod
    def from_state(state: dict[str, Tensor]) -> GME:
        return GME(state["a"], state["b"])


GaussianMetaEmbedding = GME


def identity(
    dim: int,
    n: int = 1,
    full: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> GME:
    """The GME that carries no evidence (a = 0, B = 0): the 'new identity' hypothesis, LLR 0."""
    a = torch.zeros(n, dim, dtype=dtype, device=device)
    b = torch.zeros(n, dim, dim, dtype=dtype, device=device) if full else torch.zeros_like(a)
    return GME(a, b)


def cat(gmes: Sequence[GME]) -> GME:
    """Concatenate batches (diagonal ones stay diagonal unless mixed with full ones)."""
    if not gmes:
        raise GMEError("cannot concatenate an empty list of GMEs")
    if any(g.full for g in gmes):
        gmes = [g.to_full() for g in gmes]
    return GME(torch.cat([g.a for g in gmes]), torch.cat([g.b for g in gmes]))


def _same_form(x: GME, y: GME) -> tuple[GME, GME]:
    if x.dim != y.dim:
        raise GMEError(f"GMEs of different dimension: {x.dim} vs {y.dim}")
    if x.full != y.full:
        return x.to_full(), y.to_full()
    return x, y


# -- pooling ------------------------------------------------------------------------------
def pool(g: GME) -> GME:
    """All N recordings of one identity → one GME (sum of natural parameters)."""
    return GME(g.a.sum(0, keepdim=True), g.b.sum(0, keepdim=True))


def pool_by_index(g: GME, index: Tensor, num_groups: int | None = None) -> GME:
    """Pool many identities at once: result[k] pools every g[i] with index[i] == k."""
    index = torch.as_tensor(index, device=g.device).long()
    if index.shape != (len(g),):
        raise GMEError(f"pool index must be [N={len(g)}], got {tuple(index.shape)}")
    if num_groups is None:
        num_groups = int(index.max()) + 1 if len(index) else 0
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= num_groups):
        raise GMEError(
            f"pool index values must lie in [0, {num_groups}), got values from "
            f"{int(index.min())} to {int(index.max())}"
        )
    a = g.a.new_zeros(num_groups, *g.a.shape[1:]).index_add(0, index, g.a)
    b = g.b.new_zeros(num_groups, *g.b.shape[1:]).index_add(0, index, g.b)
    return GME(a, b)


# -- log-expectation and LLR --------------------------------------------------------------
def _cholesky(m: Tensor) -> Tensor:
    """Cholesky of I + B; B not positive semi-definite fails in torch without naming 'b'."""
    try:
        return torch.linalg.cholesky(m)
    except torch.linalg.LinAlgError as exc:
        raise GMEError(
            "a full GME precision 'b' is not positive semi-definite (I + b has no Cholesky "
            f"factor: {str(exc).splitlines()[0]}); make b = L Lᵀ, or check how it was made"
        ) from None


def _full_log_expectation(a: Tensor, b: Tensor) -> Tensor:
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    chol = _cholesky(eye + b)
    z = torch.linalg.solve_triangular(chol, a.unsqueeze(-1), upper=False).squeeze(-1)
    return 0.5 * (z * z).sum(-1) - torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)


def log_expectation(g: GME) -> Tensor:
    """log E_{z~N(0,I)}[f(z)] = ½ aᵀ(I+B)⁻¹a − ½ log|I+B|, per GME → [N]."""
    if g.full:
        return _full_log_expectation(g.a, g.b)
    return 0.5 * (g.a * g.a / (1 + g.b) - torch.log1p(g.b)).sum(-1)


def _diag_llr_terms(a1: Tensor, b1: Tensor, a2: Tensor, b2: Tensor) -> Tensor:
    """Per-dimension 2·LLR in the cancellation-free form of docs/reference/gme.md (broadcasting; summed by caller).

    Row factors (a1, b1) and column factors (a2, b2) are combined first so that an all-vs-all
    chunk only does ~13 passes over its [rows, N2, d] block.
    """
    c1, c2 = 1 + b1, 1 + b2
    c12 = c1 + b2
    num = (2 * a1 * c1) * (a2 * c2) - (a1 * a1) * (b2 * c2) - (b1 * c1) * (a2 * a2)
    return num / ((c1 * c2) * c12) + torch.log1p(b1 * b2 / c12)


def refuse_negative_precision(*gmes: GME) -> float:
    """A precision below zero is a likelihood that grows without bound: its LLRs are NaN or
    meaningless, with no error of their own; an infinite one, or a non-finite `a`, gives NaN.
    Refused outside training only (a `b` in an autograd graph is left alone: checking it would
    wait on the device at every step). Returns the largest precision checked (0: none)."""
    largest = 0.0
    for g in gmes:
        if g.b.requires_grad or g.b.numel() == 0:
            continue
        b = torch.diagonal(g.b, dim1=-2, dim2=-1) if g.full else g.b
        low, high = float(b.min()), float(b.abs().max())
        if not low >= -1e-6 * max(1.0, high) or high == math.inf:  # rounding errors pass
            what = "negative" if low == low else "NaN"
            what = "infinite" if high == math.inf and low == low and low >= 0 else what
            bad = {"negative": b < 0, "NaN": b.isnan(), "infinite": b.isinf()}[what]
            raise GMEError(
                f"GME precisions 'b' must be finite and ≥ 0 (each says how much evidence a "
                f"sample carries), got {int(bad.sum())} {what} value(s), smallest {low:.3g}, "
                f"in 'b' of shape {tuple(g.b.shape)}: make b with softplus or exp of a network "
                "output, as the gme head does"
            )
        if g.full:
            _refuse_indefinite(g.b, high)
        if not bool(torch.isfinite(g.a).all()):
            raise GMEError(
                f"GME 'a' of shape {tuple(g.a.shape)} holds "
                f"{int((~torch.isfinite(g.a)).sum())} NaN or infinite value(s)"
            )
        largest = max(largest, high)
    return largest


def _refuse_indefinite(b: Tensor, high: float) -> None:
    """A full precision must be symmetric positive semi-definite: an indefinite one made I + B
    singular (LLRs of ±7e14) or gave finite, meaningless LLRs, with no error of its own."""
    tol = 1e-6 * max(1.0, high)
    mats = b[:1] if _is_constant(b) else b  # one check for a shared precision (PLDA)
    asym = float((mats - mats.transpose(-1, -2)).abs().max())
    if asym > tol:
        raise GMEError(
            f"a full GME precision 'b' of shape {tuple(b.shape)} is not symmetric "
            f"(|B − Bᵀ| up to {asym:.3g}); make it as L·Lᵀ or (M + Mᵀ)/2"
        )
    eye = torch.eye(b.shape[-1], dtype=b.dtype, device=b.device)
    _, info = torch.linalg.cholesky_ex(mats.to(torch.float64) + tol * eye.to(torch.float64))
    if bool((info > 0).any()):
        bad = int((info > 0).sum())
        raise GMEError(
            f"a full GME precision 'b' is not positive semi-definite ({bad} of {len(mats)} in "
            f"'b' of shape {tuple(b.shape)} have a negative eigenvalue): make b as L·Lᵀ, as "
            "the gme head does"
        )


#: The per-pair form's float32 error grows with the precision (its terms grow as b⁴): at 128
#: dimensions about 2e-4 nat at b = 1e2, 2e-3 at 1e3, 0.02 at 1e4, 2 at 1e6; overflow near 1e9.
#: `llr` of pairs, which is cheap, runs in float64 above CONFIDENT; `llr_matrix`, whose blocks
#: are large (a gallery's pooled models reach 1e3), keeps float32 up to MATRIX_CONFIDENT.
CONFIDENT = 1e2
MATRIX_CONFIDENT = 1e4
_LOW = (torch.float16, torch.bfloat16, torch.float32)


def llr(f1: GME, f2: GME) -> Tensor:
    """Verification LLR of aligned pairs (f1[i], f2[i]) → [N]; a batch of one broadcasts."""
    f1, f2 = _same_form(f1, f2)
    largest = refuse_negative_precision(f1, f2)
    if len(f1) != len(f2) and 1 not in (len(f1), len(f2)):
        raise GMEError(f"cannot pair {len(f1)} GMEs with {len(f2)} (lengths must match or be 1)")
    if f1.dtype in _LOW and largest > CONFIDENT:
        return llr(f1.to(torch.float64), f2.to(torch.float64)).to(f1.dtype)
    if not f1.full:
        return 0.5 * _diag_llr_terms(f1.a, f1.b, f2.a, f2.b).sum(-1)
    joint = _full_log_expectation(f1.a + f2.a, f1.b + f2.b)
    return joint - log_expectation(f1) - log_expectation(f2)


def _is_constant(b: Tensor) -> bool:
    return len(b) > 0 and bool((b == b[:1]).all())


def llr_matrix(f1: GME, f2: GME, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
    """All-vs-all LLR matrix M[i, j] = llr(f1[i], f2[j]) → [N1, N2], in bounded memory.

    Pairs are processed in [rows, cols] blocks whose temporaries fit in `max_chunk_bytes` (small
    blocks also stay in cache, which makes them faster than one big broadcast). Each block uses the
    same per-pair kernel as `llr`, so the matrix equals the pairwise LLR elementwise. When each side's
    precision is the same for all its GMEs (GMEs from a Gaussian PLDA) the quadratic term is a
    matmul and no [N1, N2, d] tensor is formed at all.
    """
    f1, f2 = _same_form(f1, f2)
    largest = refuse_negative_precision(f1, f2)
    n1, n2 = len(f1), len(f2)
    if n1 == 0 or n2 == 0:
        return f1.a.new_zeros(n1, n2)
    if f1.dtype in _LOW and largest > MATRIX_CONFIDENT:
        wide = llr_matrix(f1.to(torch.float64), f2.to(torch.float64), max_chunk_bytes)
        return wide.to(f1.dtype)
    if _is_constant(f1.b) and _is_constant(f2.b):
        shared = _full_matrix_shared if f1.full else _diag_matrix_shared
        big = float(torch.maximum(f1.b[0].detach().abs().max(), f2.b[0].detach().abs().max()))
        if f1.dtype in (torch.float16, torch.bfloat16, torch.float32) and big > 1e3:
            # The matmul form subtracts terms that grow with the precision: past ~1e3 float32
            # loses whole nats there (the per-pair kernel does not), so it runs in float64.
            return shared(f1.to(torch.float64), f2.to(torch.float64)).to(f1.dtype)
        return shared(f1, f2)
    rows, cols = block_shape(n1, n2, f1.dim, f1.a.element_size(), f1.full, max_chunk_bytes)
    if f1.full:
        le1, le2 = log_expectation(f1), log_expectation(f2)
    # Blocks are written into one preallocated output (under autograd too: slice assignment is
    # differentiable); keeping many small per-block results alive between the large freed
    # temporaries fragments the malloc heap and can grow memory by hundreds of MB.
    out = f1.a.new_empty(n1, n2)
    for r in range(0, n1, rows):
        g = f1[r : r + rows]
        for c in range(0, n2, cols):
            h = f2[c : c + cols]
            if f1.full:
                joint = _full_log_expectation(g.a[:, None] + h.a[None], g.b[:, None] + h.b[None])
                block = joint - le1[r : r + rows, None] - le2[None, c : c + cols]
            else:
                terms = _diag_llr_terms(g.a[:, None], g.b[:, None], h.a[None], h.b[None])
                block = 0.5 * terms.sum(-1)
            out[r : r + rows, c : c + cols] = block
    return out


def differentiable_llr_matrix(
    f1: GME, f2: GME, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES * 8
) -> Tensor:
    """`llr_matrix` for training losses: when gradients are needed, each chunk of rows is
    checkpointed (recomputed in backward), so autograd keeps the inputs instead of every
    [rows, N2, d] intermediate. Without gradients it is `llr_matrix`."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (f1.a, f1.b, f2.a, f2.b))
    if not needs_grad:
        return llr_matrix(f1, f2)
    f1, f2 = _same_form(f1, f2)
    per_row = len(f2) * (5 * f1.dim * f1.dim if f1.full else 12 * f1.dim) * f1.a.element_size()
    rows = max(1, max_chunk_bytes // max(per_row, 1))
    if rows >= len(f1):
        return llr_matrix(f1, f2, max_chunk_bytes)

    def chunk(a1: Tensor, b1: Tensor, a2: Tensor, b2: Tensor) -> Tensor:
        return llr_matrix(GME(a1, b1), GME(a2, b2), max_chunk_bytes)

    parts = [
        checkpoint(chunk, f1.a[r : r + rows], f1.b[r : r + rows], f2.a, f2.b, use_reentrant=False)
        for r in range(0, len(f1), rows)
    ]
    return torch.cat(parts)


def block_shape(
    n1: int, n2: int, dim: int, itemsize: int, full: bool, max_chunk_bytes: int
) -> tuple[int, int]:
    """(rows, cols) of one llr_matrix block: its live temporaries, at most
    rows·cols·(6·d or 5·d²)·itemsize bytes, fit in `max_chunk_bytes` (never below one pair)."""
    pair_bytes = (5 * dim * dim if full else _DIAG_LIVE_TEMPS * dim) * itemsize
    pairs = max(1, max_chunk_bytes // pair_bytes)
    cols = min(n2, pairs)
    return min(n1, max(1, pairs // cols)), cols


def _diag_matrix_shared(f1: GME, f2: GME) -> Tensor:
    # Same algebra as _diag_llr_terms with b1, b2 constant per side: the cross term is a matmul.
    b1, b2 = f1.b[0], f2.b[0]
    c1, c2 = 1 + b1, 1 + b2
    c12 = c1 + b2
    den = (c1 * c2) * c12
    cross = ((2 * c1 * c2 / den) * f1.a) @ f2.a.T
    row = ((f1.a * f1.a) * (b2 * c2 / den)).sum(-1)
    col = ((f2.a * f2.a) * (b1 * c1 / den)).sum(-1)
    const = torch.log1p(b1 * b2 / c12).sum()
    return 0.5 * (cross - row[:, None] - col[None, :] + const)


def _full_matrix_shared(f1: GME, f2: GME) -> Tensor:
    eye = torch.eye(f1.dim, dtype=f1.dtype, device=f1.device)
    chol = _cholesky(eye + f1.b[0] + f2.b[0])
    u = torch.linalg.solve_triangular(chol, f1.a.T, upper=False).T
    v = torch.linalg.solve_triangular(chol, f2.a.T, upper=False).T
    logdet = torch.diagonal(chol).log().sum()
    joint = 0.5 * ((u * u).sum(-1)[:, None] + (v * v).sum(-1)[None, :] + 2 * u @ v.T) - logdet
    return joint - log_expectation(f1)[:, None] - log_expectation(f2)[None, :]


# -- enrollment and identification --------------------------------------------------------
def enroll_llr_matrix(
    enroll: GME,
    model_index: Tensor,
    test: GME,
    num_models: int | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Tensor:
    """Multi-sample enrollment: pool enroll[i] into model model_index[i], score all tests →
    [num_models, N_test]."""
    return llr_matrix(pool_by_index(enroll, model_index, num_models), test, max_chunk_bytes)


def identification_posteriors(
    probes: GME,
    enrolled: GME,
    prior: Tensor | Sequence[float] | None = None,
    open_set: bool = True,
    log: bool = False,
) -> Tensor:
    """Posterior over enrolled identities for each probe → [P, m] (closed set) or [P, m+1]
    (open set: last column is "a new identity", whose LLR is 0).

    `prior` has m (+1) positive entries (normalised here); uniform when omitted.
    """
    logits = llr_matrix(probes, enrolled)
    if open_set:
        logits = torch.cat([logits, logits.new_zeros(len(probes), 1)], dim=1)
    k = logits.shape[1]
    if prior is not None:
        p = torch.as_tensor(prior, dtype=logits.dtype, device=logits.device)
        if p.shape != (k,) or bool((p <= 0).any()):
            what = f"{k - 1} enrolled identities + 'new'" if open_set else f"{k} identities"
            raise GMEError(f"identification prior must have {k} positive entries ({what}), got {p}")
        logits = logits + torch.log(p / p.sum())
    return torch.log_softmax(logits, -1) if log else torch.softmax(logits, -1)


# -- GMEs from PLDA models ----------------------------------------------------------------
def from_plda(x: Tensor, mean: Tensor, loading: Tensor, within_precision: Tensor) -> GME:
    """Two-covariance PLDA (loading F with FFᵀ = Σ_b, W = Σ_w⁻¹) or SPLDA (x = m + Fz + ε,
    ε ~ N(0, W⁻¹)) → full GMEs: a = FᵀW(x − m), B = FᵀWF (shared, an expanded view)."""
    if x.dim() != 2 or loading.dim() != 2 or loading.shape[0] != x.shape[1]:
        raise GMEError(
            f"from_plda needs x [N, D] and F [D, d]; got {tuple(x.shape)}, {tuple(loading.shape)}"
        )
    ftw = loading.T @ within_precision
    a = (x - mean) @ ftw.T
    precision = ftw @ loading
    precision = 0.5 * (precision + precision.T)
    return GME(a, precision.expand(len(x), *precision.shape))


def from_two_covariance(x: Tensor, mean: Tensor, between: Tensor, within: Tensor) -> GME:
    """Two-covariance PLDA x = m + y + ε, y ~ N(0, Σ_b), ε ~ N(0, Σ_w) → GMEs (F = chol Σ_b)."""
    return from_plda(x, mean, torch.linalg.cholesky(between), torch.linalg.inv(within))


def from_diagonal_plda(y: Tensor, psi: Tensor, mean: Tensor | None = None) -> GME:
    """Diagonalised PLDA (Σ_w = I, Σ_b = diag ψ) on projected features y → DGMEs:
    a = √ψ ⊙ (y − m), b = ψ."""
    if mean is not None:
        y = y - mean
    return GME(psi.sqrt() * y, psi.expand_as(y))


def simultaneous_diagonalisation(between: Tensor, within: Tensor) -> tuple[Tensor, Tensor]:
    """T and ψ (descending) with T Σ_w Tᵀ = I and T Σ_b Tᵀ = diag(ψ): rows of T project features
    into the space where from_diagonal_plda applies."""
    lw = torch.linalg.cholesky(within)
    lw_inv = torch.linalg.inv(lw)
    psi, vecs = torch.linalg.eigh(lw_inv @ between @ lw_inv.T)
    order = torch.argsort(psi, descending=True)
    return vecs[:, order].T @ lw_inv, psi[order].clamp(min=0)
