"""EER + minDCF + actDCF + Cllr + minCllr over 10 million synthetic trials, against sklearn's
roc_curve-based EER and a plain threshold-sweep EER, all timed in this run.

    python bench/bench_metrics.py [--trials 10000000] [--target-fraction 0.5] [--seed 0]

Prints times and ratios (no assertions; speed targets live here, not in tests): the target is a
full metaemb report in < 10 s and no slower than sklearn's roc_curve alone. Also checks that the
hull EER agrees with two independent hull computations: scipy's ConvexHull on the full ROC, and
an O(n²) brute force on a subsample.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from metaemb.core.eval import metrics


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def sklearn_eer(labels: np.ndarray, scores: np.ndarray) -> float:
    """The common recipe: roc_curve, then (FAR+FRR)/2 where they are closest."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = np.nanargmin(np.abs(fnr - fpr))
    return float((fpr[i] + fnr[i]) / 2)


def sweep_eer(tar: np.ndarray, non: np.ndarray) -> float:
    """Threshold sweep by one argsort and cumulative counts (speechbrain / pyeer style)."""
    scores = np.concatenate([tar, non])
    labels = np.concatenate([np.ones(tar.size), np.zeros(non.size)])
    order = np.argsort(scores, kind="stable")
    lab = labels[order]
    frr = np.cumsum(lab) / tar.size  # rejected targets below each cut
    far = 1 - np.cumsum(1 - lab) / non.size
    i = np.argmin(np.abs(far - frr))
    return float((far[i] + frr[i]) / 2)


def convex_hull_eer(tar: np.ndarray, non: np.ndarray) -> float:
    """EER from scipy's ConvexHull of the ROC points (sklearn's, accept iff score ≥ θ)."""
    from scipy.spatial import ConvexHull
    from sklearn.metrics import roc_curve

    labels = np.concatenate([np.ones(tar.size), np.zeros(non.size)])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([tar, non]), drop_intermediate=True)
    pts = np.unique(np.column_stack([fpr, 1 - tpr]), axis=0)
    pts = np.vstack([pts, [[1.0, 1.0]]])  # close the polygon above the curve
    v = pts[ConvexHull(pts).vertices]
    a, b = v, np.roll(v, -1, axis=0)
    da, db = a[:, 0] - a[:, 1], b[:, 0] - b[:, 1]
    best = math.inf
    for (x1, _), (x2, _), d1, d2 in zip(a, b, da, db, strict=True):
        if d1 == 0:
            best = min(best, x1)
        if d1 * d2 < 0:
            lam = d1 / (d1 - d2)
            best = min(best, x1 + lam * (x2 - x1))
    return best


def brute_hull_eer(tar: np.ndarray, non: np.ndarray) -> float:
    """O(n²): lowest diagonal crossing of any segment between two ROC points."""
    thr = np.unique(np.concatenate([tar, non, [np.inf]]))
    pfa = 1 - np.searchsorted(np.sort(non), thr, side="left") / non.size
    pmiss = np.searchsorted(np.sort(tar), thr, side="left") / tar.size
    d = pfa - pmiss
    best = float(pfa[d == 0].min()) if (d == 0).any() else math.inf
    i, j = np.nonzero((d[:, None] > 0) & (d[None, :] < 0))
    lam = d[i] / (d[i] - d[j])
    cross = pfa[i] + lam * (pfa[j] - pfa[i])
    return min(best, float(cross.min())) if cross.size else best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10_000_000)
    ap.add_argument("--target-fraction", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    n_tar = int(args.trials * args.target_fraction)
    n_non = args.trials - n_tar
    # float32 scores, as networks produce them (so there are ties), separated by d' ≈ 3.3
    tar = rng.normal(2.0, 1.2, n_tar).astype(np.float32).astype(np.float64)
    non = rng.normal(-2.0, 1.2, n_non).astype(np.float32).astype(np.float64)
    scores = np.concatenate([tar, non])
    labels = np.concatenate([np.ones(n_tar, np.int8), np.zeros(n_non, np.int8)])
    print(f"{args.trials:,} trials ({n_tar:,} target, {n_non:,} non-target), float32 scores")

    # warm-up on a small set, so no timing below includes imports (scipy.optimize, sklearn)
    small = slice(0, 1000)
    metrics.verification_report(tar[small], non[small])
    sklearn_eer(np.r_[labels[:500], labels[-500:]], np.r_[scores[:500], scores[-500:]])

    report, t_report = timed(metrics.verification_report, tar, non, p_targets=(0.01, 0.05))
    hull_eer, t_eer = timed(metrics.eer, tar, non)
    sk, t_sk = timed(sklearn_eer, labels, scores)
    sw, t_sw = timed(sweep_eer, tar, non)
    msw, t_msw = timed(metrics.sweep_eer, tar, non)

    print(f"\n{'implementation':<58}{'seconds':>9}{'EER %':>11}")
    rows = [
        ("metaemb report (EER, minDCF×2, actDCF×2, Cllr, minCllr)", t_report, report["eer"]),
        ("metaemb hull EER alone", t_eer, hull_eer),
        ("sklearn roc_curve EER (argmin |FAR−FRR|)", t_sk, sk),
        ("threshold sweep (argsort + cumsum)", t_sw, sw),
        ("metaemb sweep_eer (labelled variant)", t_msw, msw),
    ]
    for name, t, e in rows:
        print(f"{name:<58}{t:>9.2f}{100 * e:>11.5f}")
    print(
        f"\nratios: sklearn roc_curve / metaemb report = {t_sk / t_report:.2f}x, "
        f"sweep / metaemb report = {t_sw / t_report:.2f}x, "
        f"sklearn / metaemb hull EER = {t_sk / t_eer:.2f}x"
    )
    print(
        f"targets: report < 10 s: {'yes' if t_report < 10 else 'NO'} ({t_report:.2f} s); "
        f"at least as fast as sklearn roc_curve: {'yes' if t_report <= t_sk else 'NO'}"
    )
    print("report:", {k: round(v, 6) if isinstance(v, float) else v for k, v in report.items()})

    chull, t_ch = timed(convex_hull_eer, tar, non)
    print(
        f"\nfull-set check, scipy ConvexHull of the ROC ({t_ch:.1f} s): EER {100 * chull:.6f} % "
        f"vs metaemb {100 * hull_eer:.6f} %, |diff| = {abs(chull - hull_eer):.2e} → "
        f"{'agree' if abs(chull - hull_eer) < 1e-9 else 'DISAGREE'}"
    )
    worst = 0.0
    for k in range(5):
        idx = rng.choice(args.trials, size=1500, replace=False)
        t_s, n_s = scores[idx][labels[idx] == 1], scores[idx][labels[idx] == 0]
        # round to a coarse grid so the subsample has ties too
        t_s, n_s = np.round(t_s * 4 + k) / 4, np.round(n_s * 4 + k) / 4
        worst = max(worst, abs(brute_hull_eer(t_s, n_s) - metrics.eer(t_s, n_s)))
    print(
        f"subsample check, O(n²) brute-force hull on 5 × 1,500 trials (with ties): "
        f"max |diff| = {worst:.2e} → {'agree' if worst < 1e-12 else 'DISAGREE'}"
    )


if __name__ == "__main__":
    main()
