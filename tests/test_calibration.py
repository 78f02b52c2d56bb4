"""Linear logistic calibration against sklearn's weighted logistic regression and a PAV minCllr."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.scoring.calibration import CalibratedScorer, LinearCalibration, pair_trials


def cllr(tar, non):
    """Cllr in bits: ½[mean_tar log2(1 + e^−s) + mean_non log2(1 + e^s)]."""
    tar, non = np.asarray(tar, float), np.asarray(non, float)
    return 0.5 * (np.logaddexp(0, -tar).mean() + np.logaddexp(0, non).mean()) / math.log(2)


def min_cllr(tar, non):
    """Cllr after the optimal monotone (PAV) recalibration."""
    s = np.r_[tar, non]
    y = np.r_[np.ones(len(tar)), np.zeros(len(non))]
    p = IsotonicRegression(y_min=0, y_max=1).fit_transform(s, y)
    with np.errstate(divide="ignore"):
        llr = np.log(p) - np.log1p(-p) - math.log(len(tar) / len(non))
    return cllr(llr[: len(tar)], llr[len(tar) :])


def miscalibrated(seed=0, n_tar=3000, n_non=20000):
    rng = np.random.default_rng(seed)
    # Equal-variance Gaussian scores: the true LLR is affine in s; then scale and shift it badly.
    tar, non = rng.normal(2.0, 1.0, n_tar), rng.normal(-1.0, 1.0, n_non)
    return 4.0 * tar + 7.0, 4.0 * non + 7.0


def test_calibration_reaches_min_cllr():
    tar, non = miscalibrated(0)
    before = cllr(tar, non)
    cal = LinearCalibration().fit(np.r_[tar, non], np.r_[np.ones(len(tar)), np.zeros(len(non))])
    t2, n2 = miscalibrated(1)  # evaluate on fresh trials from the same distribution
    after = cllr(cal(torch.tensor(t2)).numpy(), cal(torch.tensor(n2)).numpy())
    floor = min_cllr(t2, n2)
    assert before > 1.0
    assert after - floor < 0.01, (after, floor)
    # The true map is llr = 3s' − 3/2 with s' = (s − 7)/4: w = 3/4, b = −21/4 − 3/2.
    assert abs(cal.weight - 0.75) < 0.03
    assert abs(cal.bias - (-21 / 4 - 1.5)) < 0.15


@pytest.mark.parametrize("prior", [0.5, 0.1])
def test_matches_sklearn_weighted_logistic_regression(prior):
    tar, non = miscalibrated(2, 500, 2000)
    s = np.r_[tar, non]
    y = np.r_[np.ones(len(tar)), np.zeros(len(non))]
    cal = LinearCalibration(prior=prior).fit(s, y)
    weights = np.where(y == 1, prior / len(tar), (1 - prior) / len(non))
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000)
    ref.fit(s[:, None], y, sample_weight=weights * len(s))
    offset = math.log(prior / (1 - prior))
    assert abs(cal.weight - ref.coef_[0, 0]) < 1e-5
    assert abs(cal.bias - (ref.intercept_[0] - offset)) < 1e-4
    if prior == 0.5:  # at P = ½ the objective is Cllr · ln 2
        j = cal.objective(torch.tensor(tar), torch.tensor(non), cal.weight, cal.bias)
        assert (
            abs(j - cllr(cal.weight * tar + cal.bias, cal.weight * non + cal.bias) * math.log(2))
            < 1e-12
        )


def test_state_round_trip_and_errors():
    tar, non = miscalibrated(3, 100, 300)
    cal = LinearCalibration().fit(np.r_[tar, non], np.r_[np.ones(100), np.zeros(300)])
    again = LinearCalibration()
    again.load_state_dict(cal.state_dict())
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    torch.testing.assert_close(again(x), cal(x))
    with pytest.raises(DataError, match="non-target"):
        LinearCalibration().fit([1.0, 2.0], [1, 1])
    with pytest.raises(ConfigError, match="prior"):
        LinearCalibration(prior=1.5)


def test_pair_trials_counts():
    labels = [0, 0, 1, 1, 1, 2]
    e, t, y = pair_trials(labels, max_trials=1000)
    assert len(e) == 15 and int(y.sum()) == 1 + 3
    assert bool((e < t).all())
    e, t, y = pair_trials(labels, max_trials=4)
    assert len(e) == 4 and int(y.sum()) == 2


def test_calibrated_scorer_gives_near_optimal_llrs():
    rng = np.random.default_rng(4)
    d = 16

    def speakers(n, per):
        c = rng.standard_normal((n, d)) * 0.6
        lab = np.repeat(np.arange(n), per)
        return torch.tensor(c[lab] + rng.standard_normal((n * per, d)) * 0.5), torch.tensor(lab)

    train, tl = speakers(60, 6)
    sc = CalibratedScorer(base="cosine", held_out=0.4)
    sc.fit(train, tl)
    ev, el = speakers(40, 6)
    mat = sc.score_matrix(ev, ev).numpy()
    iu = np.triu_indices(len(el), 1)
    same = (el.numpy()[:, None] == el.numpy()[None])[iu]
    s = mat[iu]
    c, floor = cllr(s[same], s[~same]), min_cllr(s[same], s[~same])
    raw = sc.base.score_matrix(ev, ev).numpy()[iu]
    assert cllr(raw[same], raw[~same]) - floor > 0.2  # raw cosine is far from calibrated
    assert c - floor < 0.05, (c, floor)
    again = CalibratedScorer(base="cosine")
    again.load_state_dict(sc.state_dict())
    torch.testing.assert_close(again.score(ev[:5], ev[5:10]), sc.score(ev[:5], ev[5:10]))


def test_swapped_arguments_and_labels_other_than_0_1_are_refused():
    """fit(labels, scores) fitted silently on booleans read as scores, and −1/1 or 1/2 labels
    were read by truthiness (every non-zero a target); the Python docs promised a refusal (L2 F5)."""
    import numpy as np

    from metaemb.core.errors import MetaembError

    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(2, 1, 100), rng.normal(0, 1, 100)]
    labels = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    with pytest.raises(MetaembError, match=r"LinearCalibration.fit takes \(scores, labels\)"):
        LinearCalibration().fit(labels, np.r_[scores[:150], np.zeros(50)])
    for bad in (np.where(labels, 1, -1), np.where(labels, 1, 2), np.where(labels, "t", "n")):
        with pytest.raises(MetaembError, match=r"must be 1 \(target\) or 0 \(non-target\)"):
            LinearCalibration().fit(scores, bad)
    fitted = LinearCalibration().fit(scores, labels)
    for same in (labels.astype(int), labels.astype(float).tolist(), torch.tensor(labels)):
        assert LinearCalibration().fit(scores, same).weight == fitted.weight
    assert torch.equal(fitted([0.1, 0.2]), fitted(torch.tensor([0.1, 0.2], dtype=torch.float64)))
    column = LinearCalibration().fit(torch.tensor(scores)[:, None], labels)  # [N, 1] (R4 F3)
    assert column.weight == pytest.approx(fitted.weight)
    half = LinearCalibration().fit(torch.tensor(scores).bfloat16(), labels)  # (R4 F12)
    assert half.weight == pytest.approx(fitted.weight, rel=0.05)
    with pytest.raises(MetaembError, match="not fitted"):
        LinearCalibration()(torch.zeros(2))
