"""Verification metrics, exactly as defined in docs/reference/metrics.md (BOSARIS / NIST semantics).

Decision rule: accept iff score ≥ θ, so P_miss(θ) = #{tar < θ}/T and P_fa(θ) = #{non ≥ θ}/N; a
target tied with a non-target counts as an error (targets sort before non-targets on ties).
Everything is vectorised numpy in float64 and costs one sort (O(n log n)); inputs may be numpy
arrays, sequences or torch tensors. A metric that is undefined for its input (no target trials, no
non-target trials, …) raises MetaembError saying why. Identification and retrieval metrics (CMC,
mAP, TPIR@FPIR, …) live in core/eval/identification.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from metaemb.core.errors import MetaembError

LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# input checking


def as_array(
    x: Any,
    what: str = "scores",
    order: str = "the metrics take target scores, then non-target scores",
) -> np.ndarray:
    """A 1-D float64 array from numpy, a sequence or a torch tensor; NaN is refused, and so
    are booleans (labels passed where scores go: eer(labels, scores) gave a number). `order`
    says the caller's argument order in that message."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu()
        x = x.numpy() if str(x.dtype) == "torch.bool" else x.double().numpy()
    if np.asarray(x).dtype == np.bool_:
        raise MetaembError(
            f"{what} are booleans; scores are numbers (labels given where scores go? {order})."
        )
    a = np.asarray(x, dtype=np.float64)
    if a.ndim > 1:
        raise MetaembError(f"{what} must be a 1-D array, got shape {a.shape}.")
    a = a.reshape(-1)
    if np.isnan(a).any():
        raise MetaembError(f"{what} contain {int(np.isnan(a).sum())} NaN value(s).")
    return a


def _pair(tar: Any, non: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    t, n = as_array(tar, "target scores"), as_array(non, "non-target scores")
    if t.size == 0 or n.size == 0:
        missing = "target" if t.size == 0 else "non-target"
        raise MetaembError(
            f"{metric} is undefined without {missing} trials "
            f"(got {t.size} target and {n.size} non-target scores)."
        )
    return t, n


def _prior(p_target: float, c_miss: float, c_fa: float) -> None:
    if not 0.0 < p_target < 1.0:
        raise MetaembError(f"P_target must lie strictly between 0 and 1, got {p_target}.")
    if not (c_miss > 0 and c_fa > 0):
        raise MetaembError(f"C_miss and C_fa must be positive, got {c_miss} and {c_fa}.")


# ---------------------------------------------------------------------------------------------
# ROC convex hull (pool-adjacent-violators on the sorted labels)


@dataclass(frozen=True)
class Hull:
    """PAV blocks of the score-sorted trials: per block, its target and non-target counts.

    Block boundaries are the ROCCH vertices; the blocks' target fractions are the optimal
    monotone posteriors (minCllr).
    """

    tar_counts: np.ndarray  # int64 per block, lowest scores first
    non_counts: np.ndarray

    @property
    def n_target(self) -> int:
        return int(self.tar_counts.sum())

    @property
    def n_nontarget(self) -> int:
        return int(self.non_counts.sum())

    def vertex_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(misses, false alarms) at each vertex, from (0, N) to (T, 0)."""
        miss = np.concatenate(([0], np.cumsum(self.tar_counts)))
        fa = self.n_nontarget - np.concatenate(([0], np.cumsum(self.non_counts)))
        return miss, fa


def hull(tar: Any, non: Any) -> Hull:
    """PAV on the 0/1 labels of the trials sorted by score (targets first on ties)."""
    from scipy.optimize import isotonic_regression

    t, n = _pair(tar, non, "the ROC convex hull")
    ts, ns = np.sort(t), np.sort(n)
    # Position of each target in the merged order: before every non-target with an equal score.
    pos = np.arange(ts.size) + np.searchsorted(ns, ts, side="left")
    labels = np.zeros(ts.size + ns.size)
    labels[pos] = 1.0
    starts = np.asarray(isotonic_regression(labels).blocks, dtype=np.int64)
    tar_before = np.searchsorted(pos, starts, side="left").astype(np.int64)
    tc, size = np.diff(tar_before), np.diff(starts)
    # Merge adjacent blocks whose target fractions are equal (exact integer comparison), so
    # every remaining boundary is a true vertex whatever the PAV implementation does on ties.
    keep = np.ones(tc.size, dtype=bool)
    keep[1:] = tc[1:] * size[:-1] != tc[:-1] * size[1:]
    group = np.cumsum(keep) - 1
    tc = np.bincount(group, weights=tc).astype(np.int64)
    size = np.bincount(group, weights=size).astype(np.int64)
    return Hull(tc, size - tc)


def rocch(tar: Any, non: Any) -> tuple[np.ndarray, np.ndarray]:
    """ROCCH vertices (P_miss, P_fa), from (0, 1) to (1, 0)."""
    h = hull(tar, non)
    miss, fa = h.vertex_counts()
    return miss / h.n_target, fa / h.n_nontarget


def _hull_eer(h: Hull) -> float:
    miss, fa = h.vertex_counts()
    m1, m2, f1, f2 = miss[:-1], miss[1:], fa[:-1], fa[1:]
    ok = (m1 != m2) & (f1 != f2)  # skip horizontal and vertical segments
    if not ok.any():
        return 0.0
    # Segment line s1·P_fa + s2·P_miss = 1 crosses the diagonal at 1/(s1+s2); in counts:
    num = (f1 * m2 - f2 * m1)[ok].astype(np.float64)
    den = (h.n_nontarget * (m2 - m1) + h.n_target * (f1 - f2))[ok].astype(np.float64)
    return float(max(0.0, (num / den).max()))


def eer(tar: Any, non: Any) -> float:
    """Equal error rate of the ROC convex hull (exact, as BOSARIS rocch2eer)."""
    return _hull_eer(hull(tar, non))


def sweep_eer(tar: Any, non: Any) -> float:
    """Threshold-sweep EER, (FAR+FRR)/2 at argmin |FAR−FRR| over all score thresholds.

    Only for comparison with toolkits that report it (speechbrain, pyeer); it can fall below the
    hull EER, which is what metaemb reports.
    """
    t, n = _pair(tar, non, "EER")
    ts, ns = np.sort(t), np.sort(n)
    thr = np.unique(np.concatenate([ts, ns, [np.inf]]))
    frr = np.searchsorted(ts, thr, side="left") / ts.size
    far = 1.0 - np.searchsorted(ns, thr, side="left") / ns.size
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2)


# ---------------------------------------------------------------------------------------------
# detection costs and Cllr


def _dcf_norm(p_target: float, c_miss: float, c_fa: float) -> float:
    return min(c_miss * p_target, c_fa * (1.0 - p_target))


def _min_dcf(h: Hull, p_target: float, c_miss: float, c_fa: float) -> float:
    _prior(p_target, c_miss, c_fa)
    miss, fa = h.vertex_counts()
    dcf = c_miss * p_target * miss / h.n_target + c_fa * (1 - p_target) * fa / h.n_nontarget
    return float(dcf.min() / _dcf_norm(p_target, c_miss, c_fa))


def min_dcf(tar: Any, non: Any, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Minimum normalised detection cost over all thresholds (= over the ROCCH vertices)."""
    return _min_dcf(hull(tar, non), p_target, c_miss, c_fa)


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """θ* = −logit(P̃): the LLR threshold that minimises the expected cost."""
    _prior(p_target, c_miss, c_fa)
    return math.log(c_fa * (1.0 - p_target)) - math.log(c_miss * p_target)


def act_dcf(tar: Any, non: Any, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised detection cost at the Bayes threshold, the scores taken as natural-log LLRs."""
    t, n = _pair(tar, non, "actDCF")
    theta = bayes_threshold(p_target, c_miss, c_fa)
    p_miss = np.count_nonzero(t < theta) / t.size
    p_fa = np.count_nonzero(n >= theta) / n.size
    dcf = c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa
    return float(dcf / _dcf_norm(p_target, c_miss, c_fa))


def cllr(tar: Any, non: Any) -> float:
    """Log-likelihood-ratio cost in bits: 1 for all-zero LLRs, 0 for perfect calibrated ones."""
    t, n = _pair(tar, non, "Cllr")
    return float(0.5 * (np.logaddexp(0.0, -t).mean() + np.logaddexp(0.0, n).mean()) / LN2)


def _min_cllr(h: Hull) -> float:
    # Block LLR = logit(t_b/(t_b+n_b)) − log(T/N), so e^{−LLR} = n_b·T / (t_b·N); blocks with no
    # targets (no non-targets) contribute nothing to the target (non-target) term.
    t_b, n_b = h.tar_counts.astype(np.float64), h.non_counts.astype(np.float64)
    big_t, big_n = float(h.n_target), float(h.n_nontarget)
    with np.errstate(divide="ignore", invalid="ignore"):
        tar_term = np.where(t_b > 0, t_b * np.log1p(n_b * big_t / (t_b * big_n)), 0.0)
        non_term = np.where(n_b > 0, n_b * np.log1p(t_b * big_n / (n_b * big_t)), 0.0)
    return float(0.5 * (tar_term.sum() / big_t + non_term.sum() / big_n) / LN2)


def min_cllr(tar: Any, non: Any) -> float:
    """Cllr after the optimal monotone recalibration (PAV); Cllr − minCllr is calibration loss."""
    return _min_cllr(hull(tar, non))


# ---------------------------------------------------------------------------------------------
# curves and operating points


def probit(p: Any) -> np.ndarray:
    """√2·erfinv(2p − 1), the DET axis warping (±inf at 0 and 1)."""
    from scipy.special import ndtri

    return ndtri(np.asarray(p, dtype=np.float64))


def error_rates(tar: Any, non: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P_miss, P_fa, thresholds) at every distinct score threshold, plus θ = +inf."""
    t, n = _pair(tar, non, "the ROC")
    ts, ns = np.sort(t), np.sort(n)
    thr = np.unique(np.concatenate([ts, ns, [np.inf]]))
    p_miss = np.searchsorted(ts, thr, side="left") / ts.size
    p_fa = 1.0 - np.searchsorted(ns, thr, side="left") / ns.size
    return p_miss, p_fa, thr


def det_curve(tar: Any, non: Any, hull_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """DET points (probit(P_fa), probit(P_miss)): every threshold, or only the ROCCH vertices."""
    if hull_only:
        p_miss, p_fa = rocch(tar, non)
    else:
        p_miss, p_fa, _ = error_rates(tar, non)
    return probit(p_fa), probit(p_miss)


def false_rate_cut(non: np.ndarray, rate: float, what: str) -> float:
    """The largest score s such that accepting only scores > s keeps the false rate ≤ `rate`
    (−inf when every score may be accepted)."""
    if not 0.0 <= rate <= 1.0:
        raise MetaembError(f"{what} must lie in [0, 1], got {rate}.")
    k = math.floor(rate * non.size + 1e-9)  # false accepts allowed
    if k >= non.size:
        return -math.inf
    return float(np.partition(non, non.size - 1 - k)[non.size - 1 - k])


def tar_at_far(tar: Any, non: Any, far: float) -> float:
    """True-accept rate at the lowest threshold whose false-accept rate is at most `far`."""
    t, n = _pair(tar, non, "TAR@FAR")
    cut = false_rate_cut(n, far, "FAR")
    return float(np.count_nonzero(t > cut) / t.size)


def auc(tar: Any, non: Any) -> float:
    """Area under the ROC curve: the chance that a target trial outscores a non-target one
    (ties count half); 0.5 is chance, below it the scores run the wrong way."""
    t, n = _pair(tar, non, "the AUC")
    ordered = np.sort(n)
    below = np.searchsorted(ordered, t, side="left")
    ties = np.searchsorted(ordered, t, side="right") - below
    return float((below + 0.5 * ties).sum() / (t.size * n.size))


def reversed_auc(tar: Any, non: Any) -> float | None:
    """The AUC when target scores lie clearly below the non-target ones (a scorer that gives a
    distance, lower for the same identity), else None. Clearly: AUC < 0.45 and more than 3
    standard errors of a chance AUC below 0.5, so an untrained model's noise does not count."""
    t, n = _pair(tar, non, "the AUC")
    area = auc(t, n)
    chance_se = np.sqrt((t.size + n.size + 1) / (12.0 * t.size * n.size))
    return area if area < min(0.45, 0.5 - 3 * chance_se) else None


def warn_if_reversed(scorer_label: str, scores: Any, labels: Any, whose: str = "") -> None:
    """Warn when target trials score mostly below non-target ones (`reversed_auc`): the scorer
    probably gives a distance (lower = same identity), and the EER, capped at 50 %, would only
    look like chance. `whose` qualifies the trials in the message ("the validation's ")."""
    import warnings

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if not (labels == 1).any() or not (labels == 0).any():
        return
    area = reversed_auc(scores[labels == 1], scores[labels == 0])
    if area is not None:
        warnings.warn(
            f"{scorer_label} gives {whose}target trials lower scores than non-target trials "
            f"(AUC {area:.2f}, chance 0.50): it may score a distance (lower for the same "
            "identity), but scores must be higher for the same identity (negate them).",
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------------
# the standard verification report


def verification_report(
    tar: Any, non: Any, p_targets: Sequence[float] = (0.01, 0.05)
) -> dict[str, Any]:
    """EER, minDCF and actDCF at each P_target (C_miss = C_fa = 1), Cllr, minCllr and counts.

    Keys: "eer", "min_dcf_<p>", "act_dcf_<p>" (p as in f"{p:g}", e.g. "min_dcf_0.01"), "cllr",
    "min_cllr", "n_target", "n_nontarget".
    """
    t, n = _pair(tar, non, "a verification report")
    h = hull(t, n)
    out: dict[str, Any] = {"eer": _hull_eer(h)}
    if isinstance(p_targets, (int, float)):  # one prior, given bare
        p_targets = (p_targets,)
    names = [f"{p:g}" for p in p_targets]
    if len(set(names)) < len({float(p) for p in p_targets}):  # keys keep 6 significant digits
        raise MetaembError(
            f"p_targets {list(p_targets)} hold two priors that print alike ({names}); their "
            "results would share one key. Give priors that differ in 6 significant digits."
        )
    for p in p_targets:
        out[f"min_dcf_{p:g}"] = _min_dcf(h, float(p), 1.0, 1.0)
        out[f"act_dcf_{p:g}"] = act_dcf(t, n, float(p))
    out["cllr"] = cllr(t, n)
    out["min_cllr"] = _min_cllr(h)
    out["n_target"] = int(t.size)
    out["n_nontarget"] = int(n.size)
    return out


# ---------------------------------------------------------------------------------------------
# face-verification protocols


def kfold_accuracy(scores: Any, labels: Any, folds: int = 10) -> tuple[float, float, np.ndarray]:
    """k-fold verification accuracy (the face benchmarks' convention): folds are contiguous blocks in file order; each fold is classified with
    the threshold that maximises accuracy on the other folds (midpoint of the best score gap).

    Returns (mean, standard deviation (ddof=0, as facenet/insightface), per-fold thresholds).
    """
    s = as_array(scores, "scores", "kfold_accuracy takes (scores, labels)")
    y = _binary_labels(labels, s.size)
    if folds < 2 or s.size < folds:
        raise MetaembError(f"k-fold accuracy needs 2 ≤ folds ≤ trials, got {folds} and {s.size}.")
    blocks = np.array_split(np.arange(s.size), folds)
    accs, thresholds = [], []
    for block in blocks:
        train = np.ones(s.size, dtype=bool)
        train[block] = False
        theta = best_threshold(s[train], y[train])
        accs.append(np.mean((s[block] >= theta) == (y[block] == 1)))
        thresholds.append(theta)
    acc = np.asarray(accs)
    return float(acc.mean()), float(acc.std()), np.asarray(thresholds)


def _binary_labels(labels: Any, n: int) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels).reshape(-1)
    if y.size != n:
        raise MetaembError(f"got {n} scores but {y.size} labels.")
    if not np.isin(y, (0, 1)).all():
        raise MetaembError("labels must be 1 (target) or 0 (non-target).")
    return y.astype(np.int64)


def best_threshold(scores: Any, labels: Any) -> float:
    """The accuracy-maximising threshold (accept iff score ≥ θ), midway into the best score gap;
    ±inf when accepting or rejecting everything is best. The lowest such gap wins ties."""
    s = as_array(scores, "scores", "best_threshold takes (scores, labels)")
    y = _binary_labels(labels, s.size)
    order = np.argsort(s, kind="stable")
    ss, ys = s[order], y[order]
    tar_below = np.concatenate(([0], np.cumsum(ys)))
    # candidate cut positions: the start of each distinct score, and "reject all"
    cuts = np.concatenate((np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]]), [ss.size]))
    correct = (cuts - tar_below[cuts]) + (tar_below[-1] - tar_below[cuts])
    i = cuts[int(np.argmax(correct))]
    if i == 0:
        return -math.inf
    if i == ss.size:
        return math.inf
    lo, hi = ss[i - 1], ss[i]
    mid = lo + (hi - lo) / 2
    return float(mid if lo < mid <= hi else hi)


def triplet_match_accuracy(s_ap: Any, s_an: Any) -> float:
    """Fraction of triplets whose anchor scores strictly higher with the positive (a tie is a
    miss); a NaN score is refused, where it would silently count as a miss."""
    a, b = as_array(s_ap, "anchor-positive scores"), as_array(s_an, "anchor-negative scores")
    if a.size != b.size or a.size == 0:
        raise MetaembError(f"need equally many (≥ 1) scores per side, got {a.size} and {b.size}.")
    return float(np.mean(a > b))
