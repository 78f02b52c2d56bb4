"""Plots people want to look at: DET curves, score histograms, CMC curves, training curves.

matplotlib is an optional extra (`pip install 'metaemb[plots]'`); without it every command still
works and says how to get plots. Figures are written atomically as PNG.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaemb.core.errors import MetaembError
from metaemb.core.runs import atomic_write_bytes

DET_TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
DET_WINDOW = (0.0005, 0.5)


class PlotsUnavailable(MetaembError):
    """matplotlib is missing."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailable(
            "matplotlib is not installed; `pip install 'metaemb[plots]'` to get PNG plots."
        ) from None
    return plt


def probit(p: np.ndarray) -> np.ndarray:
    """√2·erfinv(2p − 1), the DET axis warping."""
    return torch.special.ndtri(torch.as_tensor(np.asarray(p, dtype=np.float64))).numpy()


def error_rates(tar: np.ndarray, non: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P_miss, P_fa) at every distinct threshold, accept iff score ≥ θ (metrics.md semantics)."""
    tar = np.sort(np.asarray(tar, dtype=np.float64))
    non = np.sort(np.asarray(non, dtype=np.float64))
    thresholds = np.unique(np.concatenate([tar, non, [np.inf]]))
    p_miss = np.searchsorted(tar, thresholds, side="left") / max(len(tar), 1)
    p_fa = 1.0 - np.searchsorted(non, thresholds, side="left") / max(len(non), 1)
    return p_miss, p_fa


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    _pyplot().close(fig)
    return path


def det_plot(path: Path, tar: np.ndarray, non: np.ndarray, result: dict[str, Any]) -> Path:
    """DET curve on probit axes (0.05 %…50 %), with the EER and minDCF operating points marked."""
    plt = _pyplot()
    p_miss, p_fa = error_rates(tar, non)
    lo, hi = DET_WINDOW
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot(probit(np.clip(p_fa, lo / 10, 1 - 1e-9)), probit(np.clip(p_miss, lo / 10, 1 - 1e-9)))
    if "eer" in result:
        e = probit(np.clip(result["eer"], lo / 10, hi))
        ax.plot([e], [e], "o", color="tab:red", label=f"EER {100 * result['eer']:.2f}%")
    for key, marker in (("min_dcf_0.01", "s"), ("min_dcf_0.05", "^")):
        if key in result:
            p = float(key.rsplit("_", 1)[1])
            dcf = _dcf_curve(p_miss, p_fa, p)
            i = int(np.argmin(dcf))
            ax.plot(
                probit(np.clip(p_fa[i], lo / 10, 1)),
                probit(np.clip(p_miss[i], lo / 10, 1)),
                marker,
                color="tab:green" if marker == "s" else "tab:purple",
                label=f"minDCF(P_tar={p}) {result[key]:.3f}",
            )
    ticks = probit(np.array(DET_TICKS))
    labels = [f"{100 * t:g}" for t in DET_TICKS]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlim(probit(lo), probit(hi))
    ax.set_ylim(probit(lo), probit(hi))
    ax.set_xlabel("false acceptance rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.set_title("DET curve")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def _dcf_curve(p_miss: np.ndarray, p_fa: np.ndarray, p_tar: float) -> np.ndarray:
    return (p_tar * p_miss + (1 - p_tar) * p_fa) / min(p_tar, 1 - p_tar)


def histogram_plot(path: Path, tar: np.ndarray, non: np.ndarray) -> Path:
    """Target and non-target score histograms on one axis (densities)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    both = np.concatenate([tar, non])
    bins = np.linspace(both.min(), both.max(), 60) if len(both) else 10
    ax.hist(non, bins=bins, density=True, alpha=0.55, label=f"non-target ({len(non)})")
    ax.hist(tar, bins=bins, density=True, alpha=0.55, label=f"target ({len(tar)})")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title("score distributions")
    return _save(fig, path)


def cmc_plot(path: Path, ranks: np.ndarray, accuracy: np.ndarray) -> Path:
    """Cumulative match characteristic: rank-k identification accuracy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ranks, 100 * np.asarray(accuracy), marker="o", markersize=3)
    ax.set_xlabel("rank")
    ax.set_ylabel("identification accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title("CMC")
    return _save(fig, path)


def training_curves(run_dir: Path) -> Path:
    """Loss and validation EER per epoch from metrics.jsonl."""
    plt = _pyplot()
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    epochs = [r["epoch"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["loss"] for r in records], color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [100 * r["eer"] for r in records], color="tab:red", label="validation EER")
    ax2.set_ylabel("EER (%)")
    fig.legend(loc="upper right")
    return _save(fig, run_dir / "training.png")


def verification_plots(out: Path, tar: np.ndarray, non: np.ndarray, result: dict) -> list[Path]:
    """The standard pair of plots for a verification evaluation."""
    return [
        det_plot(out / "det.png", tar, non, result),
        histogram_plot(out / "scores.png", tar, non),
    ]
