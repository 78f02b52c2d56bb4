"""Linear logistic calibration: llr = w·s + b trained to minimise Cllr (prior-weighted).

The objective is the prior-weighted cross-entropy of BOSARIS / Brümmer:
    J = P/N_tar Σ_tar log(1 + e^−(llr + L)) + (1−P)/N_non Σ_non log(1 + e^(llr + L)),  L = logit P,
which at P = ½ is Cllr · ln 2. Two parameters, convex: Newton's method with a backtracking line
search in float64 converges in a handful of steps. `CalibratedScorer` wraps a point scorer so its
scores come out as calibrated LLRs.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.scoring.scorers import (
    DEFAULT_BASE,
    Groups,
    PointScorer,
    as_embeddings,
    build_point_base,
)

DTYPE = torch.float64


def _split(scores: Any, labels: Any) -> tuple[Tensor, Tensor]:
    """(target, non-target) scores; labels given where scores go, or labels other than 0/1
    (−1/1, 1/2, words), are refused as the metrics refuse them, never read by truthiness."""
    from metaemb.core.eval.metrics import as_array

    order = "LinearCalibration.fit takes (scores, labels)"
    flat = scores.reshape(-1) if hasattr(scores, "detach") else np.asarray(scores).reshape(-1)
    s = torch.from_numpy(as_array(flat, "calibration scores", order))  # [N, 1] too; any dtype
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).reshape(-1)
    if s.numel() != y.size:
        raise DataError(f"got {s.numel()} scores for {y.size} labels")
    if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
        raise DataError(
            f"calibration labels must be 1 (target) or 0 (non-target), or True/False; {order}."
        )
    y = torch.from_numpy(y == 1)
    if not torch.isfinite(s).all():
        raise DataError("calibration scores contain NaN or infinite values")
    tar, non = s[y], s[~y]
    if tar.numel() == 0 or non.numel() == 0:
        raise DataError(
            f"calibration needs target and non-target trials; got {tar.numel()} targets and "
            f"{non.numel()} non-targets"
        )
    return tar, non


class LinearCalibration:
    """Affine score → LLR map fitted by prior-weighted logistic regression."""

    def __init__(self, prior: float = 0.5, max_iter: int = 100) -> None:
        if not 0.0 < prior < 1.0:
            raise ConfigError(f"calibration prior must be in (0, 1), got {prior}")
        self.prior = prior
        self.max_iter = max_iter
        self.weight = 1.0
        self.bias = 0.0
        self.fitted = False

    def objective(self, tar: Tensor, non: Tensor, w: float, b: float) -> float:
        """The prior-weighted cross-entropy J (nats) of llr = w·s + b."""
        off = math.log(self.prior / (1.0 - self.prior))
        jt = torch.nn.functional.softplus(-(w * tar + b + off)).mean()
        jn = torch.nn.functional.softplus(w * non + b + off).mean()
        return float(self.prior * jt + (1.0 - self.prior) * jn)

    def fit(self, scores: Any, labels: Any) -> LinearCalibration:
        """Fit on trial scores and labels (1/True = target)."""
        tar, non = _split(scores, labels)
        both = torch.cat([tar, non])
        # Standardise for conditioning, optimise, then map the parameters back.
        mu, sd = float(both.mean()), float(both.std()) if both.numel() > 1 else 1.0
        sd = sd if sd > 0 else 1.0
        t, n = (tar - mu) / sd, (non - mu) / sd
        off = math.log(self.prior / (1.0 - self.prior))
        alpha_t, alpha_n = self.prior / t.numel(), (1.0 - self.prior) / n.numel()
        ridge = 1e-9  # keeps the Hessian positive definite when the classes separate
        theta = torch.tensor([1.0, 0.0], dtype=DTYPE)

        def value(th: Tensor) -> float:
            return (
                self.objective(t, n, float(th[0]), float(th[1])) + 0.5 * ridge * float(th[0]) ** 2
            )

        current = value(theta)
        for _ in range(self.max_iter):
            zt = theta[0] * t + theta[1] + off
            zn = theta[0] * n + theta[1] + off
            gt, gn = -torch.sigmoid(-zt) * alpha_t, torch.sigmoid(zn) * alpha_n
            ht = torch.sigmoid(zt) * torch.sigmoid(-zt) * alpha_t
            hn = torch.sigmoid(zn) * torch.sigmoid(-zn) * alpha_n
            grad = torch.stack([(gt * t).sum() + (gn * n).sum(), gt.sum() + gn.sum()])
            grad[0] += ridge * theta[0]
            h01 = (ht * t).sum() + (hn * n).sum()
            hess = torch.stack(
                [
                    torch.stack([(ht * t * t).sum() + (hn * n * n).sum() + ridge, h01]),
                    torch.stack([h01, ht.sum() + hn.sum()]),
                ]
            )
            step = torch.linalg.solve(hess, grad)
            scale = 1.0
            while scale > 1e-10:
                trial = theta - scale * step
                new = value(trial)
                if new <= current:
                    break
                scale *= 0.5
            else:
                break
            decrease = current - new
            theta, current = trial, new
            if decrease < 1e-15 and float(grad.abs().max()) < 1e-10:
                break
        self.weight = float(theta[0]) / sd
        self.bias = float(theta[1]) - float(theta[0]) * mu / sd
        self.fitted = True
        return self

    def __call__(self, scores: Any) -> Tensor:
        """Calibrated LLRs of scores (a tensor, array or list), by the fitted map."""
        if not self.fitted:
            raise DataError("this calibration is not fitted: call fit(scores, labels) first.")
        if not isinstance(scores, Tensor):
            scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
        return scores * self.weight + self.bias

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "weight": torch.tensor(self.weight, dtype=DTYPE),
            "bias": torch.tensor(self.bias, dtype=DTYPE),
            "prior": torch.tensor(self.prior, dtype=DTYPE),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = [k for k in ("weight", "bias") if k not in state]
        if missing:
            raise DataError(f"calibration state is missing {', '.join(missing)}")
        self.weight, self.bias = float(state["weight"]), float(state["bias"])
        self.prior = float(state.get("prior", torch.tensor(self.prior)))
        self.fitted = True


def pair_trials(labels: Any, max_trials: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(enroll idx, test idx, target) over pairs i < j of a labelled set: all target pairs and
    non-target pairs, each sampled down (seeded) to at most max_trials // 2 when there are more."""
    lab = torch.as_tensor(labels).long().reshape(-1)
    i, j = torch.triu_indices(lab.numel(), lab.numel(), offset=1)
    same = lab[i] == lab[j]
    g = torch.Generator().manual_seed(seed)
    keep = []
    for mask in (same, ~same):
        idx = torch.nonzero(mask).squeeze(1)
        if idx.numel() > max_trials // 2:
            idx = idx[torch.randperm(idx.numel(), generator=g)[: max_trials // 2]]
        keep.append(idx)
    sel = torch.cat(keep)
    return i[sel], j[sel], same[sel]


class CalibratedScorer(PointScorer):
    """A point scorer whose scores are mapped to calibrated LLRs by linear logistic regression.

    `fit` holds out a fraction of the identities: the base scorer is fitted on the rest and the
    calibration on all-pairs trials of the held-out identities (so calibration sees scores the
    base did not train on).
    """

    requires_fit = True

    parts: ClassVar[dict[str, str]] = {"base": "scorers"}  # [scorer.base] name = "plda", …

    def __init__(
        self,
        base: dict[str, Any] | str = DEFAULT_BASE,
        held_out: float = 0.3,
        prior: float = 0.5,
        max_trials: int = 200_000,
        seed: int = 0,
    ) -> None:
        if not 0.0 < held_out < 1.0:
            raise ConfigError(f"held_out must be a fraction in (0, 1), got {held_out}")
        self.base = build_point_base(base, "calibrated")
        self.count_dependent = self.base.count_dependent
        self.calibration = LinearCalibration(prior)
        self.held_out, self.max_trials, self.seed = held_out, max_trials, seed

    @property
    def fitted(self) -> bool:
        return self.base.fitted and self.calibration.fitted

    def fit(self, embeddings: Any, labels: Any) -> None:
        x = as_embeddings(embeddings, "embeddings")
        lab = torch.as_tensor(labels).long().reshape(-1)
        ids = torch.unique(lab)
        n_out = round(ids.numel() * self.held_out)
        if n_out < 2 or ids.numel() - n_out < 2:
            raise DataError(
                f"calibrated scorer: {ids.numel()} identities are too few to hold out "
                f"{self.held_out:.0%} for calibration (need ≥ 2 on each side)"
            )
        g = torch.Generator().manual_seed(self.seed)
        out_ids = ids[torch.randperm(ids.numel(), generator=g)[:n_out]]
        is_out = torch.isin(lab, out_ids)
        if self.base.requires_fit:
            self.base.fit(x[~is_out], lab[~is_out])
        self.fit_calibration(x[is_out], lab[is_out])

    def fit_calibration(self, embeddings: Any, labels: Any) -> None:
        """Fit only the calibration, on all-pairs trials of a held-out labelled set."""
        x = as_embeddings(embeddings, "embeddings")
        ei, ti, y = pair_trials(labels, self.max_trials, self.seed)
        self.calibration.fit(self.base.score(x[ei], x[ti]), y)

    def adapt(self, embeddings: Any) -> bool:
        return self.base.adapt(embeddings)

    def prepare(self, x: Tensor) -> Tensor:
        return self.base.prepare(x)

    def pool(self, prepared: Tensor, groups: Groups) -> tuple[Tensor, Tensor]:
        return self.base.pool(prepared, groups)

    def block(self, models: Tensor, n: int, test: Tensor) -> Tensor:
        return self.calibration(self.base.block(models, n, test))

    def pairs(self, models: Tensor, counts: Tensor, test: Tensor) -> Tensor:
        return self.calibration(self.base.pairs(models, counts, test))

    def state_dict(self) -> dict[str, Tensor]:
        if not self.fitted:
            return {}
        state = {f"base.{k}": v for k, v in self.base.state_dict().items()}
        state.update({f"calibration.{k}": v for k, v in self.calibration.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not state:  # an unfitted scorer's state
            return
        self.base.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("base.")})
        self.calibration.load_state_dict(
            {k[12:]: v for k, v in state.items() if k.startswith("calibration.")}
        )
