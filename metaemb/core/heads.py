"""Heads: pooled backbone features [N, in_features] → a point embedding or a Gaussian meta-embedding.

Both work for any backbone of any modality (they only see a feature vector).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.gme import GME
from metaemb.core.interfaces import Head


class EmbeddingHead(Head):
    """BatchNorm → Dropout → Linear → BatchNorm1d: the usual face/speaker embedding layer."""

    output = "point"

    def __init__(self, in_features: int, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_sizes(in_features, dim, dropout)
        self.dim = dim
        self.layers = nn.Sequential(
            nn.BatchNorm1d(in_features),
            nn.Dropout(dropout),
            nn.Linear(in_features, dim),
            nn.BatchNorm1d(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class GMEHead(Head):
    """Features → diagonal Gaussian meta-embedding (a, b) over a `dim`-dimensional identity.

    Parameterisation (x = Dropout(BatchNorm(features))):
        μ = BN_μ(W_μ x + c_μ)                the point estimate of the identity variable
        b = softplus(W_b x + c_b) + floor    its per-dimension precision (≥ floor > 0)
        a = b ⊙ μ
    so one recording's likelihood is N(μ; z, diag(1/b)): a confident input gets a large b, a poor
    one (blurred face, short noisy utterance) a small b and therefore LLRs nearer 0. W_b starts at 0
    (every input starts equally certain, b = init_precision); with `adaptive_precision=False` b is
    a learned per-dimension constant (the Gaussian-PLDA case). BN_μ (`normalize_mean`) starts μ
    with variance 1 + 1/init_precision per dimension, the spread the N(0, I) identity prior plus
    noise of precision b implies, so the first LLRs are already on a sensible scale (a mis-scaled μ
    makes every pair look like a target). `init_from_plda` starts the head at a PLDA fitted on
    backbone features, as the original meta-embedding recipe did.
    """

    output = "gme"

    def __init__(
        self,
        in_features: int,
        dim: int,
        dropout: float = 0.0,
        normalize_input: bool = True,
        init_precision: float = 1.0,
        precision_floor: float = 1e-3,
        adaptive_precision: bool = True,
        normalize_mean: bool = True,
    ) -> None:
        super().__init__()
        _check_sizes(in_features, dim, dropout)
        if precision_floor < 0 or init_precision <= precision_floor:
            raise ConfigError(
                f"GME head needs 0 ≤ precision_floor < init_precision; got precision_floor="
                f"{precision_floor}, init_precision={init_precision}"
            )
        self.dim = dim
        self.in_features = in_features
        self.precision_floor = precision_floor
        self.norm = nn.BatchNorm1d(in_features) if normalize_input else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.mean = nn.Linear(in_features, dim)
        self.mean_norm = nn.BatchNorm1d(dim) if normalize_mean else nn.Identity()
        if normalize_mean:
            nn.init.constant_(self.mean_norm.weight, math.sqrt(1.0 + 1.0 / init_precision))
        self.precision = nn.Linear(in_features, dim)
        nn.init.zeros_(self.precision.weight)
        nn.init.constant_(self.precision.bias, _softplus_inverse(init_precision - precision_floor))
        self.precision.weight.requires_grad_(adaptive_precision)

    def forward(self, x: Tensor) -> GME:
        h = self.dropout(self.norm(x))
        # Natural parameters stay in float32 under bf16 autocast: LLRs of confident GMEs need it.
        with torch.autocast(h.device.type, enabled=False):
            if h.dtype in (torch.float16, torch.bfloat16):
                h = h.float()
            b = F.softplus(self.precision(h)) + self.precision_floor
            return GME(b * self.mean_norm(self.mean(h)), b)

    # -- PLDA initialisation ------------------------------------------------------------
    @torch.no_grad()
    def init_from_plda(self, mean: Tensor, transform: Tensor, psi: Tensor) -> None:
        """Start at the diagonalised PLDA y = T(x − m), Σ_w = I, Σ_b = diag(ψ), i.e. so that the
        head (in eval mode) outputs a = √ψ ⊙ y, b = ψ for raw backbone features x.

        `mean` [in_features], `transform` [dim, in_features] (rows = PLDA directions, largest ψ
        first), `psi` [dim]. An input BatchNorm is folded in with its running statistics, so fit the
        PLDA on features the BatchNorm has seen (or after one pass in train mode).
        """
        if transform.shape != (self.dim, self.in_features) or psi.shape != (self.dim,):
            raise ConfigError(
                f"GME head init_from_plda: transform must be [{self.dim}, {self.in_features}] and "
                f"psi [{self.dim}], got {tuple(transform.shape)} and {tuple(psi.shape)}"
            )
        dev, dt = self.mean.weight.device, self.mean.weight.dtype
        m = mean.to(dev, torch.float64)
        psi = psi.to(dev, torch.float64).clamp(min=self.precision_floor + 1e-6)
        proj = transform.to(dev, torch.float64) / psi.sqrt()[:, None]  # μ = proj (x − m)
        weight, bias = proj, -(proj @ m)
        if isinstance(self.norm, nn.BatchNorm1d):
            # eval BN: x̂ = (x − rm)·s + β with s = γ/√(rv + eps); solve W' x̂ + c' = W x + c.
            bn = self.norm
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)).double()
            scale = scale / (bn.running_var.double() + bn.eps).sqrt()
            shift = bn.bias.double() if bn.affine else torch.zeros_like(scale)
            weight_hat = weight / scale[None, :]
            bias = bias + weight @ bn.running_mean.double() - weight_hat @ shift
            weight = weight_hat
        self.mean.weight.copy_(weight.to(dt))
        self.mean.bias.copy_(bias.to(dt))
        if isinstance(self.mean_norm, nn.BatchNorm1d):  # identity in eval mode
            self.mean_norm.weight.fill_(1.0)
            self.mean_norm.bias.zero_()
            self.mean_norm.running_mean.zero_()
            self.mean_norm.running_var.fill_(1.0 - self.mean_norm.eps)
        self.precision.weight.zero_()
        self.precision.bias.copy_(_softplus_inverse_t(psi - self.precision_floor).to(dt))

    @torch.no_grad()
    def init_from_features(self, features: Tensor, labels: Tensor, iterations: int = 10) -> Tensor:
        """Fit a two-covariance PLDA (core/plda.py, EM) to training-set backbone features and
        `init_from_plda` with its `dim` leading directions; returns their ψ.

        The input BatchNorm's running statistics are set to the features' first, so the folded
        initialisation is exact in eval mode. Needs ≥ 2 identities.
        """
        from metaemb.core.plda import PLDA

        x = features.detach().double().flatten(1).cpu()
        labels = torch.as_tensor(labels).long().reshape(-1).cpu()
        if x.shape[1] != self.in_features or labels.shape != (len(x),):
            raise DataError(
                f"GME head init: expected features [N, {self.in_features}] and labels [N], got "
                f"{tuple(x.shape)} and {tuple(labels.shape)}"
            )
        if self.dim > self.in_features:
            raise ConfigError(
                f"GME head init from PLDA: dim={self.dim} exceeds the {self.in_features} features"
            )
        if isinstance(self.norm, nn.BatchNorm1d):
            self.norm.running_mean.copy_(x.mean(0).to(self.norm.running_mean))
            self.norm.running_var.copy_(x.var(0).to(self.norm.running_var))
        plda = PLDA.fit(x, labels, iterations=iterations)
        psi = plda.psi[: self.dim]
        self.init_from_plda(plda.mean, plda.transform[: self.dim], psi)
        return psi.float()


def _check_sizes(in_features: int, dim: int, dropout: float) -> None:
    if in_features < 1 or dim < 1:
        raise ConfigError(f"head sizes must be positive: in_features={in_features}, dim={dim}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"head dropout must lie in [0, 1), got {dropout}")


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _softplus_inverse_t(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))
