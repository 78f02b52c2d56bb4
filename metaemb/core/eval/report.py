"""What `metaemb evaluate` shows of a verification result: the DET curve, the score histograms
and the metrics table it prints. Run and embedding figures (training curves, embedding maps,
CMC) are in `plots.py`; both draw through `figures.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from metaemb.core.eval import metrics
from metaemb.core.eval.figures import pyplot, save_png

DET_TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99]
DET_WINDOW = (0.0005, 0.5)
MIN_DCF = "min_dcf_"  # report keys "min_dcf_<P_tar>"


def det_window(points: list[float]) -> tuple[float, float]:
    """The classic 0.05 %…50 % window, its upper end widened (at most to 99 %) until it holds
    every point to be marked (the EER of a weak system, a minDCF point at a high miss rate)."""
    worst = max(points, default=0.0)
    hi = next((t for t in (0.5, 0.8, 0.9, 0.95, 0.99) if worst <= t), 0.99)
    return DET_WINDOW[0], hi


def _axis(p: Any, lo: float) -> np.ndarray:
    """probit(p), with 0 and 1 clipped just outside the window so they stay finite."""
    return metrics.probit(np.clip(p, lo / 10, 1.0 - 1e-9))


def min_dcf_point(tar: np.ndarray, non: np.ndarray, p_target: float) -> tuple[float, float]:
    """(P_fa, P_miss) where the normalised DCF at P_target (C_miss = C_fa = 1) is smallest."""
    p_miss, p_fa, _ = metrics.error_rates(tar, non)
    dcf = p_target * p_miss + (1 - p_target) * p_fa
    i = int(np.argmin(dcf))
    return float(p_fa[i]), float(p_miss[i])


def _densified(fa: np.ndarray, miss: np.ndarray, per_segment: int = 200) -> tuple[Any, Any]:
    """The hull's vertices with points between them: it is straight in (P_fa, P_miss), where
    the EER is read, and curved on probit axes, so joining the vertices there would pass beside
    the EER mark."""
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[None, :]
    fa, miss = np.asarray(fa, float), np.asarray(miss, float)
    dense = [np.append((v[:-1, None] + t * np.diff(v)[:, None]).ravel(), v[-1]) for v in (fa, miss)]
    return dense[0], dense[1]


def det_plot(path: Path, tar: np.ndarray, non: np.ndarray, result: dict[str, Any]) -> Path:
    """DET curve on probit axes, with the EER and each minDCF operating point marked.

    `result` is a verification report (metrics.verification_report): its "eer" and
    "min_dcf_<p>" entries label the marks.
    """
    plt = pyplot()
    priors = sorted(float(k[len(MIN_DCF) :]) for k in result if k.startswith(MIN_DCF))
    dcf_points = {f"{MIN_DCF}{p:g}": min_dcf_point(tar, non, p) for p in priors}
    marked = [result.get("eer", 0.0), *(p for pts in dcf_points.values() for p in pts)]
    lo, hi = det_window(marked)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    p_miss, p_fa, _ = metrics.error_rates(tar, non)
    ax.plot(_axis(p_fa, lo), _axis(p_miss, lo), color="tab:blue", label="every threshold")
    # the EER is the convex hull's (as BOSARIS defines it): drawn, so its mark lies on a curve
    hull_fa, hull_miss = _densified(*metrics.rocch(tar, non)[::-1])
    ax.plot(_axis(hull_fa, lo), _axis(hull_miss, lo), ls="--", lw=0.9, color="tab:cyan",
            label="ROC convex hull")  # fmt: skip
    diagonal = _axis([lo, hi], lo)
    ax.plot(diagonal, diagonal, ls=":", color="grey", lw=0.8)  # where P_miss = P_fa

    def mark(fa: float, miss: float, style: str, color: str, label: str) -> None:
        # points outside the window (e.g. P_fa = 0) are drawn on its edge
        x, y = metrics.probit(np.clip([fa, miss], lo, hi))
        ax.plot([x], [y], style, color=color, label=label, clip_on=False, zorder=3)

    if "eer" in result:
        mark(result["eer"], result["eer"], "o", "tab:red", f"EER {100 * result['eer']:.2f}% (hull)")
    styles = [("s", "tab:green"), ("^", "tab:purple"), ("D", "tab:orange"), ("v", "tab:brown")]
    for (key, (fa, miss)), (style, color) in zip(dcf_points.items(), styles, strict=False):
        p = float(key[len(MIN_DCF) :])
        mark(fa, miss, style, color, f"minDCF(P_tar={p:g}) {result[key]:.3f}")
    crowded = (0.002, 0.02) if hi > DET_WINDOW[1] else ()  # a wider window has less room
    ticks = np.array([t for t in DET_TICKS if lo <= t <= hi and t not in crowded])
    labels = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(metrics.probit(ticks), labels)
    ax.set_yticks(metrics.probit(ticks), labels)
    ax.set_xlim(metrics.probit(lo), metrics.probit(hi))
    ax.set_ylim(metrics.probit(lo), metrics.probit(hi))
    ax.set_xlabel("false acceptance rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.set_title(f"DET curve ({len(tar)} target, {len(non)} non-target trials)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save_png(fig, path)


def roc_plot(path: Path, tar: np.ndarray, non: np.ndarray, result: dict[str, Any]) -> Path:
    """ROC curve as the face benchmarks draw it: true-accept rate against the false-accept rate
    on a log axis, with the report's TAR@FAR points marked (those its non-target trials can
    reach: a rate below 1/non-targets has no threshold of its own)."""
    plt = pyplot()
    t, n = np.asarray(tar, float), np.asarray(non, float)
    lowest = 1.0 / max(n.size, 1)  # the smallest false-accept rate a threshold can give
    lo = 10.0 ** np.floor(np.log10(lowest))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    p_miss, p_fa, _ = metrics.error_rates(t, n)
    ax.step(np.clip(p_fa, lo, 1.0), 1.0 - p_miss, where="post", color="tab:blue",
            label="every threshold")  # fmt: skip
    styles = [("o", "tab:red"), ("s", "tab:green"), ("^", "tab:purple"), ("D", "tab:orange"),
              ("v", "tab:brown"), ("P", "tab:pink")]  # fmt: skip
    marks = [k for k in result if k.startswith("tar_at_far_")]
    reachable = [k for k in marks if float(k.removeprefix("tar_at_far_")) * n.size >= 1]
    for key, (style, color) in zip(reachable, styles, strict=False):
        far = float(key.removeprefix("tar_at_far_"))
        tar_value = float(result[key])
        ax.plot([far], [tar_value], style, color=color, zorder=3,
                label=f"TAR {100 * tar_value:.2f}% @ FAR {100 * far:g}%")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false acceptance rate")
    ax.set_ylabel("true acceptance rate")
    ax.set_title(f"ROC ({len(t)} target, {len(n)} non-target trials)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_png(fig, path)


def histogram_plot(
    path: Path, tar: np.ndarray, non: np.ndarray, title: str = "score distributions"
) -> Path:
    """Target and non-target score histograms on one axis (densities)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    both = np.concatenate([tar, non])
    if not len(both):
        bins: Any = 10
    elif both.max() > both.min():
        bins = np.linspace(both.min(), both.max(), 60)
    else:  # every score equal (a collapsed model): one visible bar, not zero-width bins
        bins = np.linspace(both.min() - 0.5, both.min() + 0.5, 61)
    ax.hist(non, bins=bins, density=True, alpha=0.55, label=f"non-target ({len(non)})")
    ax.hist(tar, bins=bins, density=True, alpha=0.55, label=f"target ({len(tar)})")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title(title)
    return save_png(fig, path)


def verification_plots(
    out: Path, tar: np.ndarray, non: np.ndarray, result: dict[str, Any]
) -> list[Path]:
    """The standard plots of a verification evaluation: det.png, roc.png and scores.png."""
    return [
        det_plot(out / "det.png", tar, non, result),
        roc_plot(out / "roc.png", tar, non, result),
        histogram_plot(out / "scores.png", tar, non),
    ]


# ---------------------------------------------------------------------------------------------
# the terminal table of `metaemb evaluate`


def metric_rows(rep: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, label, formatted value) for the verification metrics of a report, in print order."""
    rows = [("eer", "EER", f"{100 * rep['eer']:.2f}%")]
    for p in rep.get("p_targets") or sorted(
        float(k[len("min_dcf_") :]) for k in rep if k.startswith("min_dcf_")
    ):
        for kind in ("min", "act"):
            key = f"{kind}_dcf_{p:g}"
            if key in rep:
                rows.append((key, f"{kind}DCF (P_tar={p:g})", f"{rep[key]:.4f}"))
    rows.append(("cllr", "Cllr (bits)", f"{rep['cllr']:.4f}"))
    rows.append(("min_cllr", "minCllr (bits)", f"{rep['min_cllr']:.4f}"))
    rows.append(("cllr_loss", "Cllr − minCllr", f"{rep['cllr'] - rep['min_cllr']:.4f}"))
    return rows


def tar_at_far_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) of the report's TAR@FAR entries that its non-targets can reach (a FAR
    below 1/non-targets has no threshold of its own: shown for folded protocols only, where
    the face benchmarks report TAR@FAR 0.1 %, and marked as the TAR at FAR 0)."""
    non = int(result.get("n_nontarget", 0))
    rows = []
    for key in (k for k in result if k.startswith("tar_at_far_")):
        far = float(key.removeprefix("tar_at_far_"))
        if non * far < 1 and not (key == "tar_at_far_0.001" and "accuracy" in result):
            continue
        tar = f"{100 * result[key]:.2f}%"
        if 0 < non * far < 1:  # no threshold lets that share through: it is TAR at FAR 0
            tar += f" (at FAR 0: {non} non-targets)"
        rows.append((f"TAR @ FAR={100 * far:g}%", tar))
    return rows


def print_result(console: Console, result: dict[str, Any]) -> None:
    """The metrics table: raw scores, and calibrated ones beside them when there are any."""
    cal = result.get("calibrated")
    console.print(
        f"evaluation on {result['trials_source']}: {result['n_target']} target and "
        f"{result['n_nontarget']} non-target trials, scorer '{result['scorer']}'",
        markup=False,
    )
    table = Table()
    table.add_column("metric")
    table.add_column("raw scores" if cal else "value", justify="right")
    if cal:
        table.add_column("calibrated", justify="right")
        calibrated = {k: v for k, _, v in metric_rows({**cal, "p_targets": result["p_targets"]})}
    for key, label, value in metric_rows(result):
        table.add_row(label, value, *([calibrated[key]] if cal else []))
    if "accuracy" in result:
        acc = f"{100 * result['accuracy']:.2f} ± {100 * result['accuracy_std']:.2f}%"
        table.add_row(f"{result['folds']}-fold accuracy", acc, *([""] if cal else []))
    for label, tar in tar_at_far_rows(result):
        table.add_row(label, tar, *([""] if cal else []))
    console.print(table)
    if cal:
        c = result["calibration"]
        console.print(
            f"calibration: llr = {c['weight']:.4g}·score {'-' if c['bias'] < 0 else '+'} "
            f"{abs(c['bias']):.4g}, fitted on "
            f"{c['trials']} ({c['n_target']} target, {c['n_nontarget']} non-target trials)",
            markup=False,
        )
