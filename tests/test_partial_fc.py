"""Partial FC: equals the full margin softmax at sample rate 1.0; at lower rates, exactly the
margin softmax over the sampled centres, which always include the batch's classes."""

from __future__ import annotations

import math

import pytest
import torch

from metaemb.core.errors import ConfigError
from metaemb.core.plugin.components import build
from metaemb.core.train.objectives.margin import (
    ArcFaceObjective,
    CosFaceObjective,
    NormalisedClassifier,
)
from metaemb.core.train.objectives.partial_fc import PartialFCObjective, sample_classes


def batch(n=24, dim=8, classes=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    clf = NormalisedClassifier(dim, classes).double()
    with torch.no_grad():
        clf.weight.copy_(torch.randn(classes, dim, generator=g, dtype=torch.float64))
    return x, labels, clf


def loss_and_grads(objective, x, labels, clf):
    x = x.clone().requires_grad_(True)
    clf.zero_grad()
    loss = objective(x, labels, clf)
    loss.backward()
    return loss.detach(), x.grad, clf.weight.grad.clone()


@pytest.mark.parametrize(
    ("margin_type", "reference"),
    [
        ("arcface", ArcFaceObjective(scale=30.0, margin=0.2)),
        ("cosface", CosFaceObjective(scale=30.0, margin=0.2)),
    ],
)
def test_rate_one_equals_the_full_margin_softmax(margin_type, reference):
    x, labels, clf = batch()
    pfc = PartialFCObjective(sample_rate=1.0, margin_type=margin_type, scale=30.0, margin=0.2)
    got = loss_and_grads(pfc, x, labels, clf)
    want = loss_and_grads(reference, x, labels, clf)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert pfc.stats["sampled_classes"] == 50


def test_sampling_keeps_every_batch_class_and_the_requested_fraction():
    labels = torch.tensor([3, 3, 97, 41, 0, 999])
    g = torch.Generator().manual_seed(1)
    index, local = sample_classes(labels, 1000, 0.05, generator=g)
    assert index.numel() == 50 and torch.equal(index, index.sort().values)
    assert len(set(index.tolist())) == 50
    assert torch.equal(index[local], labels)
    # more batch classes than the fraction: all of them, nothing else
    index, local = sample_classes(torch.arange(30), 1000, 0.01)
    assert torch.equal(index, torch.arange(30)) and torch.equal(local, torch.arange(30))
    # negatives differ between steps (uniformly random), positives never drop out
    seen = set()
    for s in range(20):
        idx, _ = sample_classes(labels, 1000, 0.05, torch.Generator().manual_seed(s))
        assert {0, 3, 41, 97, 999} <= set(idx.tolist())
        seen |= set(idx.tolist())
    assert len(seen) > 400


def test_low_rate_is_the_margin_softmax_over_the_sampled_centres(monkeypatch):
    x, labels, clf = batch(classes=200)
    pfc = PartialFCObjective(sample_rate=0.1, scale=30.0, margin=0.2)
    chosen = {}
    import metaemb.core.train.objectives.partial_fc as mod

    real = mod.sample_classes

    def spy(*args, **kwargs):
        chosen["index"], chosen["local"] = real(*args, **kwargs)
        return chosen["index"], chosen["local"]

    monkeypatch.setattr(mod, "sample_classes", spy)
    loss, gx, gw = loss_and_grads(pfc, x, labels, clf)
    index = chosen["index"]
    assert index.numel() == math.ceil(0.1 * 200) or index.numel() == labels.unique().numel()
    # brute force: a classifier holding only the sampled rows, labels re-indexed
    small = NormalisedClassifier(8, index.numel()).double()
    with torch.no_grad():
        small.weight.copy_(clf.weight[index])
    ref = ArcFaceObjective(scale=30.0, margin=0.2)
    want_loss, want_gx, want_gw = loss_and_grads(ref, x, chosen["local"], small)
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(gx, want_gx)
    torch.testing.assert_close(gw[index], want_gw)
    rest = torch.ones(200, dtype=torch.bool)
    rest[index] = False
    assert torch.count_nonzero(gw[rest]) == 0  # centres not sampled get no gradient this step


def test_registered_with_options_and_bad_options_refused():
    obj = build("objectives", "partial-fc", {"sample_rate": 0.25, "margin_type": "cosface"})
    assert isinstance(obj, PartialFCObjective) and obj.sample_rate == 0.25
    assert isinstance(obj.build_classifier(8, 10), NormalisedClassifier)
    obj.set_epoch(3)
    assert obj.margin_objective.epoch == 3
    with pytest.raises(ConfigError, match="sample_rate"):
        PartialFCObjective(sample_rate=0.0)
    with pytest.raises(ConfigError, match="margin_type"):
        PartialFCObjective(margin_type="sphereface")
