"""Metrics against the spec's known answers (docs/reference/metrics.md), brute-force computations and
reference implementations (sklearn isotonic regression)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metaemb.core.errors import MetaembError
from metaemb.core.eval import identification as ident
from metaemb.core.eval import metrics as m

# case: (tar, non, eer, cllr, min_cllr, min_dcf@(0.01, 0.05, 0.5), act_dcf@(0.01, 0.05, 0.5))
VECTORS = {
    "MV1": (
        [2.0, 1.0, -0.5, 0.3],
        [-3.0, -1.0, 0.5, -0.2, 0.0],
        3 / 13,
        0.7340417194,
        0.5353940100,
        (0.5, 0.5, 0.45),
        (1.0, 1.0, 0.65),
    ),
    "MV2": ([0, 1, 1, 2], [-1, 0, 1, 1], 0.375, 0.9160267387, 0.75, (0.75,) * 3, (1.0, 1.0, 0.75)),
    "MV3": ([0], [0], 0.5, 1.0, 1.0, (1.0,) * 3, None),
    "MV4": ([1, 2], [-1, 0], 0.0, 0.5217501446, 0.0, (0.0,) * 3, (1.0, 1.0, 0.5)),
}
PRIORS = (0.01, 0.05, 0.5)


@pytest.mark.parametrize("case", sorted(VECTORS))
def test_spec_vectors(case):
    tar, non, eer, cllr, min_cllr, min_dcf, act_dcf = VECTORS[case]
    assert m.eer(tar, non) == pytest.approx(eer, abs=1e-9)
    assert m.cllr(tar, non) == pytest.approx(cllr, abs=1e-9)
    assert m.min_cllr(tar, non) == pytest.approx(min_cllr, abs=1e-9)
    for p, want in zip(PRIORS, min_dcf, strict=True):
        assert m.min_dcf(tar, non, p) == pytest.approx(want, abs=1e-9)
    if act_dcf is not None:
        for p, want in zip(PRIORS, act_dcf, strict=True):
            assert m.act_dcf(tar, non, p) == pytest.approx(want, abs=1e-9)


def test_mv1_rocch_vertices_and_sweep():
    tar, non = VECTORS["MV1"][:2]
    p_miss, p_fa = m.rocch(tar, non)
    np.testing.assert_allclose(p_miss, [0, 0, 0.25, 0.5, 1], atol=1e-12)
    np.testing.assert_allclose(p_fa, [1, 0.6, 0.2, 0, 0], atol=1e-12)
    assert m.sweep_eer(tar, non) == pytest.approx(0.225, abs=1e-9)


def test_report_keys_and_torch_input():
    tar, non = VECTORS["MV1"][:2]
    rep = m.verification_report(torch.tensor(tar), torch.tensor(non), p_targets=(0.01, 0.5))
    assert set(rep) == {
        "eer",
        "min_dcf_0.01",
        "act_dcf_0.01",
        "min_dcf_0.5",
        "act_dcf_0.5",
        "cllr",
        "min_cllr",
        "n_target",
        "n_nontarget",
    }
    assert rep["eer"] == pytest.approx(3 / 13, abs=1e-12)
    assert rep["min_dcf_0.5"] == pytest.approx(0.45, abs=1e-12)
    assert rep["act_dcf_0.5"] == pytest.approx(0.65, abs=1e-12)
    assert (rep["n_target"], rep["n_nontarget"]) == (4, 5)


# ---------------------------------------------------------------------------------------------
# brute force


def roc_points(tar, non):
    """(P_fa, P_miss) at every threshold in the scores and +inf, by counting."""
    tar, non = np.asarray(tar, float), np.asarray(non, float)
    thr = sorted(set(tar.tolist()) | set(non.tolist()) | {math.inf})
    return np.array([[np.mean(non >= t), np.mean(tar < t)] for t in thr])


def brute_hull_eer(tar, non):
    """Lowest point where a segment between two ROC points (a randomised mix of two
    thresholds) meets the diagonal P_miss = P_fa: the convex hull's EER, O(n²)."""
    pts = roc_points(tar, non)
    d = pts[:, 0] - pts[:, 1]  # P_fa − P_miss
    best = math.inf
    for i in range(len(pts)):
        for j in range(len(pts)):
            if d[i] == 0:
                best = min(best, pts[i, 0])
            elif d[i] > 0 > d[j]:
                lam = d[i] / (d[i] - d[j])
                best = min(best, pts[i, 0] + lam * (pts[j, 0] - pts[i, 0]))
    return best


def random_sets(n_sets, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n_sets):
        nt, nn = rng.integers(1, 12, size=2)
        shift = rng.uniform(-1, 3)
        tar, non = rng.normal(shift, 1, nt), rng.normal(0, 1, nn)
        if rng.random() < 0.5:  # coarse scores: many ties
            tar, non = np.round(tar), np.round(non)
        yield tar, non


def test_eer_equals_brute_force_hull_on_1000_random_sets():
    for tar, non in random_sets(1000):
        assert m.eer(tar, non) == pytest.approx(brute_hull_eer(tar, non), abs=1e-12), (tar, non)


def test_min_dcf_equals_brute_force_over_thresholds():
    for tar, non in random_sets(300, seed=1):
        pts = roc_points(tar, non)
        for p, cm, cf in ((0.01, 1, 1), (0.05, 1, 1), (0.5, 1, 1), (0.2, 10, 1)):
            dcf = cm * p * pts[:, 1] + cf * (1 - p) * pts[:, 0]
            want = dcf.min() / min(cm * p, cf * (1 - p))
            assert m.min_dcf(tar, non, p, c_miss=cm, c_fa=cf) == pytest.approx(want, abs=1e-12)


def test_act_dcf_counts_ties_at_the_threshold_as_accepts():
    theta = math.log(0.95 / 0.05)
    # a non-target exactly at θ is a false alarm, a target exactly at θ is accepted
    assert m.act_dcf([theta], [theta, -5], 0.05) == pytest.approx(0.95 * 0.5 / 0.05)
    assert m.act_dcf([theta, -5], [-5], 0.05) == pytest.approx(0.5)


def test_cllr_equals_direct_formula():
    rng = np.random.default_rng(2)
    tar, non = rng.normal(2, 3, 50), rng.normal(-2, 3, 70)
    want = 0.5 * (
        np.mean([math.log2(1 + math.exp(-s)) for s in tar])
        + np.mean([math.log2(1 + math.exp(s)) for s in non])
    )
    assert m.cllr(tar, non) == pytest.approx(want, rel=1e-12)
    assert m.cllr([0.0] * 3, [0.0] * 5) == pytest.approx(1.0)
    assert m.cllr([800.0], [-800.0]) == pytest.approx(0.0)  # no overflow


def sklearn_min_cllr(tar, non):
    from sklearn.isotonic import IsotonicRegression

    s = np.concatenate([tar, non])
    y = np.concatenate([np.ones(len(tar)), np.zeros(len(non))])
    p = IsotonicRegression(out_of_bounds="clip").fit(s, y).predict(s)
    with np.errstate(divide="ignore"):
        llr = np.log(p) - np.log1p(-p) - math.log(len(tar) / len(non))
    t, n = llr[: len(tar)], llr[len(tar) :]
    return 0.5 * (np.logaddexp(0, -t).mean() + np.logaddexp(0, n).mean()) / math.log(2)


def test_min_cllr_matches_sklearn_isotonic_regression():
    for tar, non in random_sets(200, seed=3):
        assert m.min_cllr(tar, non) == pytest.approx(sklearn_min_cllr(tar, non), abs=1e-9)
        assert m.min_cllr(tar, non) <= m.cllr(tar, non) + 1e-12


def test_rocch_vertices_are_on_the_roc_and_convex():
    for tar, non in random_sets(200, seed=4):
        p_miss, p_fa = m.rocch(tar, non)
        pts = {tuple(np.round(p, 12)) for p in roc_points(tar, non)}
        assert all((round(f, 12), round(mi, 12)) in pts for f, mi in zip(p_fa, p_miss, strict=True))
        assert np.all(np.diff(p_miss) >= 0) and np.all(np.diff(p_fa) <= 0)
        slopes = np.diff(p_miss) / np.where(np.diff(p_fa) == 0, -1e-300, np.diff(p_fa))
        finite = np.isfinite(slopes)
        assert np.all(np.diff(np.abs(slopes[finite])) >= -1e-9)  # flattening: convex


def test_sweep_eer_never_above_spec_semantics_gap():
    for tar, non in random_sets(100, seed=5):
        s = m.sweep_eer(tar, non)
        pts = roc_points(tar, non)
        i = np.argmin(np.abs(pts[:, 0] - pts[:, 1]))
        assert s == pytest.approx(pts[i].mean(), abs=1e-12)


def test_tar_at_far_brute_force():
    for tar, non in random_sets(200, seed=6):
        for far in (0.0, 0.1, 0.3, 1.0):
            thr = sorted(set(tar.tolist()) | set(non.tolist()) | {math.inf, -math.inf})
            want = max(np.mean(tar >= t) for t in thr if np.mean(non >= t) <= far + 1e-12)
            assert m.tar_at_far(tar, non, far) == pytest.approx(want, abs=1e-12)


def test_det_curve_is_probit_of_error_rates():
    tar, non = VECTORS["MV1"][:2]
    x, y = m.det_curve(tar, non)
    p_miss, p_fa, _ = m.error_rates(tar, non)
    from scipy.stats import norm

    np.testing.assert_allclose(x, norm.ppf(p_fa))
    np.testing.assert_allclose(y, norm.ppf(p_miss))
    hx, _ = m.det_curve(tar, non, hull_only=True)
    assert len(hx) == 5


@pytest.mark.parametrize(
    "fn", [m.eer, m.sweep_eer, m.cllr, m.min_cllr, m.rocch, m.verification_report]
)
def test_undefined_inputs_raise(fn):
    for tar, non in (([], [1.0]), ([1.0], []), ([], [])):
        with pytest.raises(MetaembError, match="undefined without"):
            fn(tar, non)
    with pytest.raises(MetaembError, match="NaN"):
        fn([float("nan")], [0.0])


def test_bad_priors_and_shapes_raise():
    with pytest.raises(MetaembError, match="P_target"):
        m.min_dcf([1], [0], 0.0)
    with pytest.raises(MetaembError, match="C_miss"):
        m.act_dcf([1], [0], 0.1, c_miss=0)
    with pytest.raises(MetaembError, match="1-D"):
        m.eer(np.zeros((2, 2)), [0])


def test_single_trials_and_infinite_llrs():
    assert m.eer([1.0], [0.0]) == 0.0
    assert m.eer([0.0], [1.0]) == 0.5  # the hull never does worse than chance
    assert m.min_cllr([math.inf], [-math.inf]) == 0.0
    assert m.cllr([math.inf], [-math.inf]) == 0.0


# ---------------------------------------------------------------------------------------------
# face verification protocol


def test_kfold_accuracy_on_a_known_toy():
    # Four folds of four pairs; targets score 1, non-targets 0, except one non-target at 2 in
    # fold 3: the other folds always choose θ = 0.5 (accuracy 1 on their training folds, or 11/12
    # with the outlier), so held-out accuracies are 1, 1, 0.75, 1.
    scores = np.array([1, 1, 0, 0] * 4, dtype=float)
    labels = np.array([1, 1, 0, 0] * 4)
    scores[10] = 2.0
    mean, std, thr = m.kfold_accuracy(scores, labels, folds=4)
    assert mean == pytest.approx(0.9375)
    assert std == pytest.approx(np.std([1, 1, 0.75, 1]))
    np.testing.assert_allclose(thr, 0.5)


def test_kfold_threshold_is_chosen_on_the_other_folds():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 60)
    scores = labels + rng.normal(0, 0.7, 60)
    mean, _, thr = m.kfold_accuracy(scores, labels, folds=10)
    accs = []
    for f in range(10):
        test = np.zeros(60, bool)
        test[6 * f : 6 * f + 6] = True
        tr_s, tr_y = scores[~test], labels[~test]
        cands = np.concatenate([[-np.inf], np.sort(tr_s), [np.inf]])
        best = max(np.mean((tr_s >= t) == (tr_y == 1)) for t in cands)
        assert np.mean((tr_s >= thr[f]) == (tr_y == 1)) == pytest.approx(best)
        accs.append(np.mean((scores[test] >= thr[f]) == (labels[test] == 1)))
    assert mean == pytest.approx(np.mean(accs))


def test_kfold_errors():
    with pytest.raises(MetaembError, match="labels"):
        m.kfold_accuracy([0.1, 0.2, 0.3], [0, 1, 2], folds=2)
    with pytest.raises(MetaembError, match="folds"):
        m.kfold_accuracy([0.1, 0.2], [0, 1], folds=10)


def test_triplet_match_accuracy():
    assert m.triplet_match_accuracy([1, 2, 3, 0.5], [0, 2, 4, 0]) == pytest.approx(0.5)
    with pytest.raises(MetaembError):
        m.triplet_match_accuracy([1], [])
    with pytest.raises(MetaembError, match="NaN"):  # not counted as a miss
        m.triplet_match_accuracy([1, float("nan"), 3], [0, 0, 0])


# ---------------------------------------------------------------------------------------------
# identification and retrieval vs loops


def id_problem(seed, ties=False):
    rng = np.random.default_rng(seed)
    g_lab = rng.integers(0, 6, 15)
    p_lab = rng.integers(0, 8, 12)  # labels 6, 7 have no gallery entry
    s = rng.normal(size=(12, 15)) + 2.0 * (p_lab[:, None] == g_lab[None, :])
    return (np.round(s) if ties else s), p_lab, g_lab


def loop_ranked(row, rel):
    """Items by score descending; on ties the non-relevant first (pessimistic)."""
    return [rel[j] for j in sorted(range(len(row)), key=lambda j: (-row[j], rel[j]))]


@pytest.mark.parametrize("ties", [False, True])
def test_cmc_and_map_against_loops(ties):
    s, pl, gl = id_problem(8, ties)
    ranks, aps = [], []
    for i in range(len(pl)):
        rel = [int(pl[i] == g) for g in gl]
        if not any(rel):
            continue
        order = loop_ranked(s[i], rel)
        ranks.append(order.index(1) + 1)
        hits, ap = 0, 0.0
        for k, r in enumerate(order, 1):
            hits += r
            ap += r * hits / k
        aps.append(ap / sum(rel))
    want = [np.mean([r <= k for r in ranks]) for k in range(1, 16)]
    np.testing.assert_allclose(ident.cmc(s, pl, gl), want)
    np.testing.assert_allclose(ident.cmc(torch.tensor(s), pl, gl, max_rank=3), want[:3])
    assert ident.rank_k(s, pl, gl, k=2) == pytest.approx(want[1])
    assert ident.mean_average_precision(s, pl, gl) == pytest.approx(np.mean(aps))


@pytest.mark.parametrize("ties", [False, True])
def test_retrieval_metrics_against_loops(ties):
    rng = np.random.default_rng(9)
    lab = rng.integers(0, 5, 20)
    lab[0] = 99  # a singleton: left out
    x = rng.normal(size=(20, 4)) + np.eye(5)[lab % 5][:, :4] * 2
    s = x @ x.T
    s = np.round(s) if ties else s
    p1, rp, mapr = [], [], []
    for q in range(20):
        others = [j for j in range(20) if j != q]
        rel = [int(lab[j] == lab[q]) for j in others]
        r = sum(rel)
        if r == 0:
            continue
        order = loop_ranked(s[q, others], rel)
        p1.append(order[0])
        rp.append(sum(order[:r]) / r)
        hits, acc = 0, 0.0
        for i in range(r):
            hits += order[i]
            acc += order[i] * hits / (i + 1)
        mapr.append(acc / r)
    got = ident.retrieval_metrics(s, lab)
    assert got["precision_at_1"] == pytest.approx(np.mean(p1))
    assert got["r_precision"] == pytest.approx(np.mean(rp))
    assert got["map_at_r"] == pytest.approx(np.mean(mapr))
    assert ident.map_at_r(s, lab) == pytest.approx(np.mean(mapr))


def test_tpir_at_fpir_against_loops():
    s, pl, gl = id_problem(10)
    mated = np.array([p in set(gl) for p in pl])
    top_non = sorted(s[~mated].max(1))
    for fpir in (0.0, 0.5, 1.0):
        best = 0.0
        for tau in [*np.unique(s), math.inf]:
            if np.mean(np.array(top_non) >= tau) > fpir:
                continue
            hit = []
            for i in np.flatnonzero(mated):
                mate = max(s[i, j] for j in range(len(gl)) if gl[j] == pl[i])
                rank = 1 + sum(s[i, j] >= mate for j in range(len(gl)) if gl[j] != pl[i])
                hit.append(rank <= 1 and mate >= tau)
            best = max(best, np.mean(hit))
        assert ident.tpir_at_fpir(s, pl, gl, fpir=fpir) == pytest.approx(best)


def test_identification_errors():
    s = np.zeros((2, 3))
    with pytest.raises(MetaembError, match="no probe"):
        ident.cmc(s, [5, 6], [1, 2, 3])
    with pytest.raises(MetaembError, match="does not match"):
        ident.cmc(s, [1, 2, 3], [1, 2, 3])
    with pytest.raises(MetaembError, match="non-mated"):
        ident.tpir_at_fpir(s, [1, 2], [1, 2, 3])
    with pytest.raises(MetaembError, match="only once"):
        ident.retrieval_metrics(np.zeros((3, 3)), [1, 2, 3])


def test_boolean_scores_are_refused():
    """eer(labels, scores) gave a number; labels are booleans, scores never are (L1 M3)."""
    for tar in (np.array([True, True]), torch.tensor([True, True]), [True, False]):
        with pytest.raises(MetaembError, match="target scores are booleans; scores are numbers"):
            m.eer(tar, np.array([0.1, 0.4]))
    # the hint gives the function's own argument order (L2 F1), not the pair metrics'
    labels, scores = np.array([True, False, True, False]), [0.3, 0.1, 0.8, 0.2]
    with pytest.raises(MetaembError, match=r"kfold_accuracy takes \(scores, labels\)"):
        m.kfold_accuracy(labels, scores, folds=2)
    with pytest.raises(MetaembError, match=r"best_threshold takes \(scores, labels\)"):
        m.best_threshold(labels, scores)
    with pytest.raises(MetaembError, match="rank_k: k must be ≥ 1, got 0"):
        ident.rank_k(np.eye(2), [0, 1], [0, 1], k=0)


def test_report_priors_that_print_alike_are_refused_and_a_bare_prior_is_taken():
    """Two priors equal to 6 digits overwrote each other's key; a bare 0.01 was a TypeError
    (L1 M1, M2)."""
    rng = np.random.default_rng(0)
    tar, non = rng.normal(1, 1, 50), rng.normal(0, 1, 200)
    with pytest.raises(MetaembError, match="two priors that print alike"):
        m.verification_report(tar, non, p_targets=(0.0100001, 0.01000011))
    assert m.verification_report(tar, non, p_targets=0.01)["min_dcf_0.01"] == m.min_dcf(
        tar, non, 0.01
    )
    assert "min_dcf_0.05" in m.verification_report(tar, non, p_targets=(0.05, 0.05))
