"""Heads: pooled backbone features [N, in_features] → a point embedding or a Gaussian meta-embedding.

Both work for any backbone of any modality (they only see a feature vector).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.gme.algebra import GME
from metaemb.core.plugin.interfaces import Head


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

    Parameterisation (x = Dropout(Norm(features)), u = W_μ x + c_μ):
        b = floor + exp(s + W_b x + c_b)     per-dimension precision of this recording (≥ floor > 0)
        n = √dim · u / ‖u‖                   ("sample" normalization; "batch": n = BN(u), no affine)
        μ = √(1 + 1/b) ⊙ n                   its point estimate of the identity variable
        a = b ⊙ μ
    One recording's likelihood is N(μ; z, diag(1/b)) with z ~ N(0, I), so μ's population variance
    must be 1 + 1/b: tying μ's scale to b (`normalize_mean`, default) makes the head a consistent
    generative model whose only calibration knob is b (a free scale on μ let training inflate or
    shrink every LLR). With a constant b and "batch" normalization this is exactly a diagonalised
    PLDA (`init_from_plda`). log b is what the network predicts, so a precision learns as fast at
    0.05 as at 50; W_b starts at 0 (every input equally certain, b = init_precision) and a small
    init_precision starts every LLR near 0 (with d = 128 and b = 1, untrained pairs scored ±20
    and training stalled). A confident input then learns a large b, a poor one a small b.

    `normalization="sample"` (default: LayerNorm on the input, length normalisation of u) makes
    each output independent of the rest of the batch. With BatchNorm, P × K training batches of
    16 identities are centred on their own mean, which shifted training-time non-target LLRs by
    about −0.2 relative to evaluation, so the LLRs were calibrated for the wrong mode.
    `calibration_parameters` (precision biases and s) train without LR decay or weight decay,
    at `precision_lr_mult` × the head LR, so they keep tracking the representation to the end.
    A diagonal GME counts its dimensions as independent evidence: keep `dim` near the number of
    identity factors the network actually learns (8–16 on the face demo) or the LLRs come out
    under-confident with d = 128 (docs/meta-embeddings.md).
    """

    output = "gme"
    max_log_precision = math.log(1e4)  # exp() stays finite; LLRs of 1e4-precise dims are huge

    def __init__(
        self,
        in_features: int,
        dim: int,
        dropout: float = 0.0,
        normalize_input: bool = True,
        init_precision: float = 0.05,
        precision_floor: float = 1e-3,
        adaptive_precision: bool = True,
        normalize_mean: bool = True,
        precision_lr_mult: float = 1.0,
        normalization: str = "sample",
    ) -> None:
        super().__init__()
        _check_sizes(in_features, dim, dropout)
        if precision_lr_mult <= 0:
            raise ConfigError(f"GME head precision_lr_mult must be > 0, got {precision_lr_mult}")
        self.precision_lr_mult = float(precision_lr_mult)
        if precision_floor < 0 or init_precision <= precision_floor:
            raise ConfigError(
                f"GME head needs 0 ≤ precision_floor < init_precision; got precision_floor="
                f"{precision_floor}, init_precision={init_precision}"
            )
        self.dim = dim
        self.in_features = in_features
        self.precision_floor = precision_floor
        if normalization not in ("batch", "sample"):
            raise ConfigError(
                f"GME head normalization must be 'batch' or 'sample', got {normalization!r}"
            )
        self.normalization = normalization
        if not normalize_input:
            self.norm: nn.Module = nn.Identity()
        elif normalization == "batch":
            self.norm = nn.BatchNorm1d(in_features)
        else:
            self.norm = nn.LayerNorm(in_features)
        self.dropout = nn.Dropout(dropout)
        self.mean = nn.Linear(in_features, dim)
        self.normalize_mean = normalize_mean
        batch_mean = normalize_mean and normalization == "batch"
        self.mean_norm = nn.BatchNorm1d(dim, affine=False) if batch_mean else None
        self.precision = nn.Linear(in_features, dim)
        nn.init.zeros_(self.precision.weight)
        nn.init.constant_(self.precision.bias, math.log(init_precision - precision_floor))
        self.precision.weight.requires_grad_(adaptive_precision)
        # One log-scale shared by every dimension: it receives the summed gradient of all `dim`
        # biases, so the overall LLR scale converges in a few hundred steps (per-dimension biases
        # alone barely moved from init_precision in a short run, leaving LLRs underconfident).
        self.log_precision_scale = nn.Parameter(torch.zeros(()))

    def calibration_parameters(self) -> dict[str, float]:
        """The precision biases and the shared log-scale set the LLR scale."""
        return {name: self.precision_lr_mult for name in ("precision.bias", "log_precision_scale")}

    def forward(self, x: Tensor) -> GME:
        h = self.dropout(self.norm(x))
        # Natural parameters stay in float32 under bf16 autocast: LLRs of confident GMEs need it.
        with torch.autocast(h.device.type, enabled=False):
            if h.dtype in (torch.float16, torch.bfloat16):
                h = h.float()
            log_b = (self.precision(h) + self.log_precision_scale).clamp(max=self.max_log_precision)
            b = log_b.exp() + self.precision_floor
            mu = self.mean(h)
            if self.normalize_mean and self.normalization == "sample":
                mu = F.normalize(mu, dim=1) * math.sqrt(self.dim) * (1.0 + 1.0 / b).sqrt()
            elif self.mean_norm is not None:
                mu = self.mean_norm(mu) * (1.0 + 1.0 / b).sqrt()
            return GME(b * mu, b)

    # -- PLDA initialisation ------------------------------------------------------------
    @torch.no_grad()
    def init_from_plda(self, mean: Tensor, transform: Tensor, psi: Tensor) -> None:
        """Start at the diagonalised PLDA y = T(x − m), Σ_w = I, Σ_b = diag(ψ), i.e. so that the
        head (in eval mode) outputs a = √ψ ⊙ y, b = ψ for raw backbone features x.

        `mean` [in_features], `transform` [dim, in_features] (rows = PLDA directions, largest ψ
        first), `psi` [dim]. An input BatchNorm is folded in with its running statistics, so fit the
        PLDA on features the BatchNorm has seen (or after one pass in train mode).
        """
        if self.normalization != "batch":
            raise ConfigError(
                "GME head init_from_plda needs head.normalization='batch' (a per-sample "
                f"normalisation cannot be folded into a linear PLDA map); got {self.normalization!r}"
            )
        if transform.shape != (self.dim, self.in_features) or psi.shape != (self.dim,):
            raise ConfigError(
                f"GME head init_from_plda: transform must be [{self.dim}, {self.in_features}] and "
                f"psi [{self.dim}], got {tuple(transform.shape)} and {tuple(psi.shape)}"
            )
        dev, dt = self.mean.weight.device, self.mean.weight.dtype
        m = mean.to(dev, torch.float64)
        psi = psi.to(dev, torch.float64).clamp(
            self.precision_floor + 1e-6, math.exp(self.max_log_precision)
        )
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
        if self.mean_norm is not None:  # eval: μ = √(1 + 1/ψ) · u / √(running_var + eps) = u
            self.mean_norm.running_mean.zero_()
            var = 1.0 + 1.0 / psi - self.mean_norm.eps
            self.mean_norm.running_var.copy_(var.to(self.mean_norm.running_var))
        self.precision.weight.zero_()
        self.precision.bias.copy_((psi - self.precision_floor).log().to(dt))
        self.log_precision_scale.zero_()

    def feature_init_problem(self) -> str | None:
        if self.normalization != "batch":
            return (
                "the GME head needs head.normalization=batch (the PLDA map is folded into its "
                f"BatchNorm); got head.normalization={self.normalization}"
            )
        return None

    @torch.no_grad()
    def init_from_features(self, features: Tensor, labels: Tensor, iterations: int = 10) -> Tensor:
        """Fit a two-covariance PLDA (core/scoring/plda.py, EM) to training-set backbone features and
        `init_from_plda` with its `dim` leading directions; returns their ψ.

        The input BatchNorm's running statistics are set to the features' first, so the folded
        initialisation is exact in eval mode. Needs ≥ 2 identities.
        """
        from metaemb.core.scoring.plda import PLDA

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
        # With fewer within-class degrees of freedom (N − identities) than features, the
        # within-class covariance is singular: fit the PLDA in the leading principal subspace.
        rank = min(x.shape[1], len(x) - int(labels.unique().numel()) - 1)
        if rank < self.dim:
            raise DataError(
                f"GME head init from PLDA: {len(x)} training samples of "
                f"{labels.unique().numel()} identities support at most {max(rank, 0)} PLDA "
                f"dimensions, fewer than dim={self.dim}; use more data or a smaller model.dim"
            )
        mean = x.mean(0)
        basis = torch.eye(x.shape[1], dtype=x.dtype)
        if rank < x.shape[1]:
            basis = torch.linalg.svd(x - mean, full_matrices=False).Vh[:rank]
        plda = PLDA.fit(x @ basis.T, labels, iterations=iterations)
        psi = plda.psi[: self.dim]
        self.init_from_plda(mean, plda.transform[: self.dim] @ basis, psi)
        return psi.float()


def _check_sizes(in_features: int, dim: int, dropout: float) -> None:
    if in_features < 1 or dim < 1:
        raise ConfigError(f"head sizes must be positive: in_features={in_features}, dim={dim}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"head dropout must lie in [0, 1), got {dropout}")
