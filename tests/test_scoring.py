"""Scorers against numpy/scipy brute force: cosine (with training mean), Euclidean, s-norm and
AS-norm, chunked vs unchunked matrices, top-k, multi-sample enrollment, saved state."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from metaemb.core.errors import ConfigError, DataError, MetaembError, UnknownComponentError
from metaemb.core.plugin import manager as plugins
from metaemb.core.plugin.interfaces import Scorer
from metaemb.core.scoring.cosine import CosineScorer
from metaemb.core.scoring.scorenorm import ASNorm, SNorm
from metaemb.core.scoring.scorers import EuclideanScorer, PLDAScorer, score_trials


def data(seed=0, n_classes=20, per_class=5, d=12):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d)) * 2 + 1.5  # non-zero global mean
    labels = np.repeat(np.arange(n_classes), per_class)
    x = centres[labels] + rng.standard_normal((len(labels), d))
    return torch.tensor(x, dtype=torch.float64), torch.tensor(labels)


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_cosine_plain_and_subtract_mean():
    train, labels = data(0)
    e, t = data(1)[0][:7], data(2)[0][:9]
    plain = CosineScorer().score_matrix(e, t).numpy()
    np.testing.assert_allclose(plain, unit(e.numpy()) @ unit(t.numpy()).T, atol=1e-12)
    s = CosineScorer(subtract_mean=True)
    assert s.requires_fit
    with pytest.raises(MetaembError, match="fitted"):
        s.score(e, t[:7])
    s.fit(train, labels)
    m = train.numpy().mean(0)
    want = unit(e.numpy() - m) @ unit(t.numpy() - m).T
    np.testing.assert_allclose(s.score_matrix(e, t).numpy(), want, atol=1e-12)
    np.testing.assert_allclose(s.score(e, t[:7]).numpy(), np.diag(want[:, :7]), atol=1e-12)
    assert np.abs(want - plain).max() > 0.05  # the mean matters on this data


def inv_sqrt(a):
    w, v = np.linalg.eigh(a)
    return (v / np.sqrt(w)) @ v.T


def test_cosine_wccn_whitens_the_within_class_covariance():
    train, labels = data(0, n_classes=30, per_class=8)
    sc = CosineScorer(subtract_mean=True, wccn=True, wccn_shrink=0.0)
    sc.fit(train, labels)
    x, y = train.numpy(), labels.numpy()
    dev = x - np.stack([x[y == c].mean(0) for c in y])
    w = dev.T @ dev / len(x)
    np.testing.assert_allclose(sc.transform.numpy(), inv_sqrt(w), atol=1e-10)
    z = dev @ sc.transform.numpy()  # the within-class covariance becomes the identity
    np.testing.assert_allclose(z.T @ z / len(x), np.eye(x.shape[1]), atol=1e-10)
    e, t = data(3)[0][:6], data(4)[0][:8]
    m = x.mean(0)
    want = unit((e.numpy() - m) @ inv_sqrt(w)) @ unit((t.numpy() - m) @ inv_sqrt(w)).T
    np.testing.assert_allclose(sc.score_matrix(e, t).numpy(), want, atol=1e-10)
    # Shrinkage mixes in the mean variance: the transform of (1−λ)W + λ·mean(diag W)·I.
    half = CosineScorer(wccn=True, wccn_shrink=0.5)
    half.fit(train, labels)
    mixed = 0.5 * w + 0.5 * np.eye(len(w)) * np.trace(w) / len(w)
    np.testing.assert_allclose(half.transform.numpy(), inv_sqrt(mixed), atol=1e-10)
    with pytest.raises(MetaembError, match="labels"):
        CosineScorer(wccn=True).fit(train)
    with pytest.raises(ConfigError, match="wccn_shrink"):
        CosineScorer(wccn=True, wccn_shrink=1.5)


def test_cosine_adapt_mean_is_a_map_estimate_and_removes_a_domain_shift():
    train, labels = data(0)
    x = data(5)[0][:40]
    shift = torch.linspace(-3, 4, x.shape[1], dtype=torch.float64)  # a new channel's offset
    sc = CosineScorer(subtract_mean=True, adapt_mean=True, adapt_relevance=10.0)
    sc.fit(train, labels)
    sc.adapt(x)
    want = (x.sum(0) + 10.0 * train.mean(0)) / (40 + 10)
    torch.testing.assert_close(sc.domain_mean, want, rtol=0, atol=1e-12)
    # With no prior weight, adapting to shifted data scores it exactly as the unshifted data.
    free = CosineScorer(adapt_mean=True, adapt_relevance=0.0)
    free.adapt(x)
    before = free.score_matrix(x[:10], x[10:])
    free.adapt(x + shift)
    torch.testing.assert_close(free.score_matrix(x[:10] + shift, x[10:] + shift), before)
    unadapted = CosineScorer().score_matrix(x[:10] + shift, x[10:] + shift)
    assert (unadapted - before).abs().max() > 0.1  # the shift does matter without adapt
    # Two files barely move a fitted scorer: the prior outweighs them.
    few = CosineScorer(subtract_mean=True, adapt_mean=True)
    few.fit(train, labels)
    few.adapt(x[:2])
    assert (few.domain_mean - train.mean(0)).norm() < 0.2 * (x[:2].mean(0) - train.mean(0)).norm()
    # adapt_mean = false (the default) ignores adapt().
    plain = CosineScorer(subtract_mean=True)
    plain.fit(train, labels)
    plain.adapt(x + shift)
    assert plain.domain_mean is None
    with pytest.raises(DataError, match="dimensions"):
        few.adapt(x[:, :5])


def test_cosine_adapt_scale_undoes_a_per_dimension_gain_of_the_new_domain():
    train, labels = data(0)
    x = data(5)[0][:40]
    gain = torch.linspace(0.5, 3.0, x.shape[1], dtype=torch.float64)
    shift = torch.linspace(-3, 4, x.shape[1], dtype=torch.float64)
    sc = CosineScorer(adapt_mean=True, adapt_scale=True, adapt_relevance=0.0)
    assert sc.requires_fit  # the training spread is the prior of the adapted one
    sc.fit(train, labels)
    assert sc.adapt(x)
    before = sc.score_matrix(x[:10], x[10:])
    y = x * gain + shift  # the new domain stretches and moves every dimension
    sc.adapt(y)
    torch.testing.assert_close(sc.score_matrix(y[:10], y[10:]), before)
    mean_only = CosineScorer(adapt_mean=True, adapt_relevance=0.0)
    mean_only.adapt(y)
    assert (mean_only.score_matrix(y[:10], y[10:]) - before).abs().max() > 0.05
    # The spread is a MAP estimate around the training spread, both after WCCN.
    r = 10.0
    s = CosineScorer(subtract_mean=True, wccn=True, adapt_mean=True, adapt_scale=True,
                     adapt_relevance=r)  # fmt: skip
    s.fit(train, labels)
    s.adapt(x)
    w, m_train = s.transform, train.mean(0)
    prior = ((train - m_train) @ w).var(0)
    m = (x.sum(0) + r * m_train) / (40 + r)
    z = (x - m) @ w
    spread = (((z**2).sum(0) + r * prior) / (40 + r)).sqrt()
    torch.testing.assert_close(s.domain_scale, spread)
    e, t = unit(((x[:5] - m) @ w / spread).numpy()), unit(((x[5:9] - m) @ w / spread).numpy())
    np.testing.assert_allclose(s.score_matrix(x[:5], x[5:9]).numpy(), e @ t.T, atol=1e-10)


def test_euclidean_is_negative_distance():
    e, t = data(1)[0][:10], data(2)[0][:13]
    sc = EuclideanScorer()
    np.testing.assert_allclose(sc.score_matrix(e, t).numpy(), -cdist(e, t), atol=1e-9)
    np.testing.assert_allclose(sc.score(e, t[:10]).numpy(), -np.diag(cdist(e, t[:10])), atol=1e-12)


def fitted(name):
    train, labels = data(0)
    sc = {
        "cosine": lambda: CosineScorer(subtract_mean=True),
        "cosine-wccn": lambda: CosineScorer(
            subtract_mean=True, wccn=True, adapt_mean=True, adapt_scale=True
        ),
        "euclidean": EuclideanScorer,
        "plda": lambda: PLDAScorer(lda_dim=8, iterations=4),
        "snorm": lambda: SNorm(base="cosine"),
        "asnorm": lambda: ASNorm(base={"name": "plda", "lda_dim": 8, "iterations": 3}, top_n=7),
        "asnorm-spk": lambda: ASNorm(base="cosine", top_n=5, speaker_mean=True),
    }[name]()
    sc.fit(train, labels)
    return sc


ALL = ["cosine", "cosine-wccn", "euclidean", "plda", "snorm", "asnorm", "asnorm-spk"]


@pytest.mark.parametrize("name", ALL)
def test_chunked_equals_unchunked_and_pairs_and_topk(name):
    sc = fitted(name)
    e, t = data(3)[0][:37], data(4)[0][:53]
    full = sc.score_matrix(e, t, row_chunk=1000, col_chunk=1000)
    chunked = sc.score_matrix(e, t, row_chunk=5, col_chunk=7)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-10)
    out = torch.zeros(37, 53, dtype=torch.float32)
    assert sc.score_matrix(e, t, out=out) is out
    torch.testing.assert_close(out, full.float())
    sc.pair_chunk = 4
    torch.testing.assert_close(sc.score(e, t[:37]), full.diagonal(), rtol=0, atol=1e-10)
    sc.col_chunk = 10
    vals, idx = sc.topk(e, t, 6)
    ref_v, ref_i = full.topk(6, dim=1)
    torch.testing.assert_close(vals, ref_v, rtol=0, atol=1e-10)
    assert torch.equal(idx, ref_i)
    blocks = list(sc.iter_score_matrix(e, t, row_chunk=16, col_chunk=20))
    assert len(blocks) == 3 * 3
    for rows, cols, blk in blocks:
        torch.testing.assert_close(blk, full[rows, cols], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name):
    sc = fitted(name)
    state = sc.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    # Through torch.save/load with weights_only (no pickle of objects), as runs store it.
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    kwargs = {
        "cosine": {"subtract_mean": True},
        "cosine-wccn": {
            "subtract_mean": True,
            "wccn": True,
            "adapt_mean": True,
            "adapt_scale": True,
        },
        "plda": {"lda_dim": 8, "iterations": 4},
        "asnorm": {"base": "plda", "top_n": 7},
        "asnorm-spk": {"base": "cosine", "top_n": 5, "speaker_mean": True},
    }.get(name, {})
    fresh = type(sc)(**kwargs)
    fresh.load_state_dict(state)
    e, t = data(3)[0][:9], data(4)[0][:11]
    torch.testing.assert_close(fresh.score_matrix(e, t), sc.score_matrix(e, t), rtol=0, atol=1e-12)
    # An unfitted scorer's empty state loads back as unfitted.
    empty = type(sc)(**kwargs)
    empty.load_state_dict(empty.state_dict())


def snorm_reference(base, e, t, cohort, top_n):
    s = base.score_matrix(e, t).numpy()
    ce = base.score_matrix(e, cohort).numpy()
    ct = base.score_matrix(cohort, t).numpy().T

    def stats(c):
        if top_n:
            c = -np.sort(-c, axis=1)[:, :top_n]
        return c.mean(1), c.std(1, ddof=1)

    (me, se), (mt, st) = stats(ce), stats(ct)
    return 0.5 * ((s - me[:, None]) / se[:, None] + (s - mt[None]) / st[None])


@pytest.mark.parametrize("top_n", [0, 6])
@pytest.mark.parametrize("base", ["cosine", "plda"])
def test_snorm_matches_brute_force(top_n, base):
    train, labels = data(0)
    table = {"name": "plda", "lda_dim": 8, "iterations": 3} if base == "plda" else base
    kw = {"base": table}
    sc = SNorm(**kw) if top_n == 0 else ASNorm(top_n=top_n, speaker_mean=False, **kw)
    sc.fit(train, labels)
    sc.col_chunk, sc.stat_chunk = 7, 4  # cohort statistics streamed over many small blocks
    e, t = data(3)[0][:15], data(4)[0][:17]
    want = snorm_reference(sc.base, e, t, train, top_n)
    np.testing.assert_allclose(sc.score_matrix(e, t).numpy(), want, atol=1e-9)
    np.testing.assert_allclose(sc.score(e, t[:15]).numpy(), np.diag(want), atol=1e-9)


def test_score_normalisation_sees_its_cohort_through_the_adapted_base():
    train, labels = data(0)
    x = data(5)[0][:30] + 2.0  # another domain
    sc = ASNorm(
        base={"name": "cosine", "subtract_mean": True, "adapt_mean": True},
        top_n=6,
        speaker_mean=False,
    )
    sc.fit(train, labels)
    before = sc.score_matrix(x[:5], x[5:])
    assert sc.adapt(x) and sc.base.domain_mean is not None
    want = snorm_reference(sc.base, x[:5], x[5:], train, 6)  # every score by the adapted base
    np.testing.assert_allclose(sc.score_matrix(x[:5], x[5:]).numpy(), want, atol=1e-9)
    assert np.abs(want - before.numpy()).max() > 1e-3


def test_asnorm_speaker_mean_cohort():
    train, labels = data(0)
    sc = ASNorm(base="cosine", top_n=4, speaker_mean=True)
    sc.fit(train, labels)
    spk = torch.stack([train[labels == c].mean(0) for c in range(20)])
    e, t = data(3)[0][:6], data(4)[0][:8]
    want = snorm_reference(sc.base, e, t, spk, 4)
    np.testing.assert_allclose(sc.score_matrix(e, t).numpy(), want, atol=1e-9)


def test_multi_enrollment_cosine_and_snorm():
    x = data(5)[0]
    groups = [[0, 1, 2], [3], [4, 5], [0, 1, 2]]
    tests = [10, 11, 12, 13]
    cos = CosineScorer()
    got = score_trials(cos, x, groups, tests).numpy()
    u = unit(x.numpy())
    want = [unit(u[g].mean(0)[None])[0] @ u[t] for g, t in zip(groups, tests, strict=True)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    # s-norm of a pooled PLDA model: enrollment-side stats come from the pooled model.
    train, labels = data(0)
    sn = SNorm(base={"name": "plda", "lda_dim": 8, "iterations": 3})
    sn.fit(train, labels)
    got = score_trials(sn, x, groups[:1], tests[:1]).item()
    base = sn.base
    s = score_trials(base, x, groups[:1], tests[:1]).item()
    both = torch.cat([x, train])
    ce = score_trials(base, both, [groups[0]] * len(train), range(len(x), len(both))).numpy()
    ct = base.score_matrix(train, x[10:11]).numpy()[:, 0]
    want = 0.5 * ((s - ce.mean()) / ce.std(ddof=1) + (s - ct.mean()) / ct.std(ddof=1))
    assert abs(got - want) < 1e-9
    # Groups-vs-test matrix with mixed counts agrees with trial scoring.
    mat = sn.score_groups_matrix(x, groups, x[10:14])
    np.testing.assert_allclose(
        mat.diagonal().numpy(), score_trials(sn, x, groups, tests).numpy(), atol=1e-10
    )


def test_score_trials_falls_back_for_other_scorers():
    class Dot(Scorer):
        def score_matrix(self, enroll, test):
            return enroll @ test.T

    x = data(6)[0]
    got = score_trials(Dot(), x, [[0], [1]], [2, 3])
    torch.testing.assert_close(got, (x[[0, 1]] * x[[2, 3]]).sum(1))
    with pytest.raises(MetaembError, match="multi-sample"):
        score_trials(Dot(), x, [[0, 1]], [2])


def test_registered_and_bad_options():
    reg = plugins.registry("scorers")
    for name in ("cosine", "euclidean", "plda", "snorm", "asnorm", "calibrated"):
        assert name in reg
    sc = reg.get("plda")(lda_dim=4, iterations=2)
    assert sc.requires_fit and sc.needs == "point"
    with pytest.raises(UnknownComponentError, match="unknown scorer 'nope'"):
        SNorm(base="nope")
    with pytest.raises(ConfigError, match="not a point-embedding scorer"):
        SNorm(base="gme")
    with pytest.raises(ConfigError, match="top_n"):
        ASNorm(top_n=1)
    with pytest.raises(DataError, match="out of range"):
        score_trials(CosineScorer(), data(6)[0], [[0]], [999])
    with pytest.raises(DataError, match="aligned"):
        CosineScorer().score(torch.ones(2, 3), torch.ones(3, 3))


def test_a_cohort_smaller_than_top_n_uses_all_of_it_with_a_note():
    """A recipe's top_n = 300 (VoxCeleb's thousands of speakers) on a cohort of 5 speaker
    means: adaptive s-norm over the whole cohort, which is what top_n = 5 gives, said once."""
    x, labels = torch.randn(20, 8), torch.arange(20) % 5
    enroll, test = torch.randn(6, 8), torch.randn(6, 8)
    wide = ASNorm(top_n=300)
    with pytest.warns(UserWarning, match=r"top_n = 300, but the cohort .*identity means\) has 5"):
        wide.fit(x, labels)
    exact = ASNorm(top_n=5)
    exact.fit(x, labels)
    torch.testing.assert_close(wide.score(enroll, test), exact.score(enroll, test))
    with pytest.raises(DataError, match=r"identity means\) has 1; s-norm needs ≥ 2"):
        ASNorm(top_n=300).fit(x, torch.zeros(20, dtype=torch.long))


def test_plda_says_when_lda_keeps_fewer_dimensions_than_asked():
    """LDA-200 (the Kaldi recipe) on 5 identities keeps 4 dimensions: said once, not silent."""
    x, labels = torch.randn(40, 8, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 5
    scorer = PLDAScorer(lda_dim=200)
    with pytest.warns(UserWarning, match=r"lda_dim = 200, but LDA can keep at most 4 .*identities"):
        scorer.fit(x, labels)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scorer.fit(x, labels)  # once per scorer
        PLDAScorer(lda_dim=4).fit(x, labels)  # as asked: nothing to say


def test_a_pairs_method_returning_a_list_is_told_so_not_given_a_shape_hint():
    import pytest
    import torch

    from metaemb.core.errors import ConfigError
    from metaemb.core.scoring.cosine import CosineScorer
    from metaemb.core.scoring.scorers import check_consistent

    class ListPairs(CosineScorer):
        def pairs(self, models, counts, test):
            return super().pairs(models, counts, test).tolist()

    with pytest.raises(ConfigError, match=r"returning something other than a tensor \(a list\?\)"):
        check_consistent(ListPairs(), torch.randn(6, 4), "scorer 'lists'")


def test_whole_number_scores_are_refused_by_name():
    """Integer pairs were told they 'differ by 98' from the float matrix; integers from both
    methods tied trials silently (C1 F7). float64 is fine."""
    import pytest
    import torch

    from metaemb.core.errors import ConfigError
    from metaemb.core.scoring.cosine import CosineScorer
    from metaemb.core.scoring.scorers import check_consistent

    class IntPairs(CosineScorer):
        def pairs(self, models, counts, test):
            return (super().pairs(models, counts, test) * 100).long()

    class IntBoth(IntPairs):
        def block(self, models, counts, test):
            return (super().block(models, counts, test) * 100).long()

    class Doubles(CosineScorer):
        def pairs(self, models, counts, test):
            return super().pairs(models, counts, test).double()

        def block(self, models, counts, test):
            return super().block(models, counts, test).double()

    x = torch.randn(6, 4)
    with pytest.raises(ConfigError, match=r"scorer 'i': score gave torch.int64 scores; scores "
                       r"are floating point"):  # fmt: skip
        check_consistent(IntPairs(), x, "scorer 'i'")
    with pytest.raises(ConfigError, match=r"gave torch.int64 scores"):
        check_consistent(IntBoth(), x, "scorer 'i'")
    check_consistent(Doubles(), x, "scorer 'd'")
