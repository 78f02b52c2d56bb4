"""Objectives against hand-computed losses on tiny batches, plus gradient checks."""

from __future__ import annotations

import math

import pytest
import torch

from metaemb.core.errors import ConfigError
from metaemb.core.objectives.margin import ArcFaceObjective, CosFaceObjective
from metaemb.core.objectives.softmax import LinearClassifier, SoftmaxObjective


def _set_linear(clf: LinearClassifier, weight: list[list[float]], bias: list[float]) -> None:
    with torch.no_grad():
        clf.fc.weight.copy_(torch.tensor(weight))
        clf.fc.bias.copy_(torch.tensor(bias))


# ---------------------------------------------------------------------------------------------
# softmax
def _softmax_by_hand(x, w, b, labels, eps):
    total = 0.0
    for xi, y in zip(x, labels, strict=True):
        z = [sum(wj[k] * xi[k] for k in range(len(xi))) + bj for wj, bj in zip(w, b, strict=True)]
        lse = math.log(sum(math.exp(v) for v in z))
        nll = [lse - v for v in z]
        total += (1 - eps) * nll[y] + eps * sum(nll) / len(z)
    return total / len(x)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_softmax_matches_hand_computation(eps):
    x = [[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]]
    w = [[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]]
    b = [0.0, 0.5, -0.5]
    labels = [0, 2, 1]
    obj = SoftmaxObjective(label_smoothing=eps)
    clf = obj.build_classifier(2, 3)
    _set_linear(clf, w, b)
    loss = obj(torch.tensor(x), torch.tensor(labels), clf)
    assert loss.item() == pytest.approx(_softmax_by_hand(x, w, b, labels, eps), rel=1e-5)
    assert obj.stats["loss"] == pytest.approx(loss.item())
    # argmax: sample 0 → class 0 (1 vs .5 vs -1.5) ✓; sample 1 → class 0 (.5) ✗; sample 2 → 1 ✓
    assert obj.stats["accuracy"] == pytest.approx(2 / 3)


def test_softmax_gradcheck():
    torch.manual_seed(0)
    obj = SoftmaxObjective(label_smoothing=0.1)
    clf = obj.build_classifier(3, 4).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 1])
    assert torch.autograd.gradcheck(lambda e: obj(e, y, clf), (x,))


def test_softmax_rejects_bad_smoothing_and_missing_classifier():
    with pytest.raises(ConfigError, match="label_smoothing"):
        SoftmaxObjective(label_smoothing=1.5)
    with pytest.raises(ConfigError, match="classifier"):
        SoftmaxObjective()(torch.zeros(2, 3), torch.tensor([0, 1]), None)


# ---------------------------------------------------------------------------------------------
# ArcFace / CosFace
def _margin_by_hand(x, w, labels, s, target):
    """Mean CE of s·cos logits where the target class's cosine is replaced by target(cos)."""
    total = 0.0
    for xi, y in zip(x, labels, strict=True):
        nx = math.sqrt(sum(v * v for v in xi))
        cos = []
        for wj in w:
            nw = math.sqrt(sum(v * v for v in wj))
            cos.append(sum(a * b for a, b in zip(xi, wj, strict=True)) / (nx * nw))
        z = [s * (target(c) if j == y else c) for j, c in enumerate(cos)]
        total += math.log(sum(math.exp(v) for v in z)) - z[y]
    return total / len(x)


X2 = [[1.0, 0.2], [0.3, -1.0], [-1.0, 0.1], [0.6, 0.5]]
W3 = [[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]
Y2 = [0, 2, 1, 2]  # sample 3 points away from its class 2: θ + m passes π for m = 0.5


def _classifier(obj, w):
    clf = obj.build_classifier(len(w[0]), len(w))
    with torch.no_grad():
        clf.weight.copy_(torch.tensor(w))
    return clf


def _arc(m):
    def target(c):
        theta = math.acos(c)
        return math.cos(theta + m) if theta + m <= math.pi else c - m * math.sin(m)

    return target


@pytest.mark.parametrize("s,m", [(30.0, 0.2), (64.0, 0.5), (10.0, 0.0)])
def test_arcface_matches_hand_computation(s, m):
    obj = ArcFaceObjective(scale=s, margin=m)
    clf = _classifier(obj, W3)
    loss = obj(torch.tensor(X2, dtype=torch.float64), torch.tensor(Y2), clf.double())
    assert loss.item() == pytest.approx(_margin_by_hand(X2, W3, Y2, s, _arc(m)), rel=1e-6)
    assert obj.stats["margin"] == m


def test_arcface_threshold_branch_is_used():
    """Sample 3's angle to its class is ~3.05 rad, so θ + 0.5 > π: the linear branch applies."""
    c = (0.6 * -1.0 + 0.5 * -1.0) / (math.hypot(0.6, 0.5) * math.sqrt(2.0))
    assert math.acos(c) + 0.5 > math.pi  # the constructed case of the hand-computed tests
    obj = ArcFaceObjective(margin=0.5)
    cos = torch.tensor([[-0.99]], dtype=torch.float64)
    expected = -0.99 - 0.5 * math.sin(0.5)
    assert obj.target_logit(cos, 0.5).item() == pytest.approx(expected)
    # Without the branch cos(θ + m) would go back up (monotonicity is what the branch keeps).
    assert math.cos(math.acos(-0.99) + 0.5) > expected
    easy = ArcFaceObjective(margin=0.5, easy_margin=True)
    assert easy.target_logit(cos, 0.5).item() == pytest.approx(-0.99)
    assert easy.target_logit(torch.tensor([[0.6]]), 0.5).item() == pytest.approx(
        math.cos(math.acos(0.6) + 0.5), rel=1e-5
    )


@pytest.mark.parametrize("s,m", [(30.0, 0.35), (16.0, 0.4)])
def test_cosface_matches_hand_computation(s, m):
    obj = CosFaceObjective(scale=s, margin=m)
    clf = _classifier(obj, W3)
    loss = obj(torch.tensor(X2), torch.tensor(Y2), clf)
    assert loss.item() == pytest.approx(_margin_by_hand(X2, W3, Y2, s, lambda c: c - m), rel=1e-5)


@pytest.mark.parametrize("cls", [ArcFaceObjective, CosFaceObjective])
def test_margin_warmup_ramps_linearly(cls):
    obj = cls(margin=0.3, margin_warmup_epochs=3)
    seen = []
    for epoch in range(6):
        obj.set_epoch(epoch)
        seen.append(obj.current_margin)
    assert seen == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.3, 0.3])
    clf = _classifier(obj, W3)
    x, y = torch.tensor(X2), torch.tensor(Y2)
    obj.set_epoch(0)
    plain = _margin_by_hand(X2, W3, Y2, 30.0, lambda c: c)  # margin 0 = normalised softmax
    assert obj(x, y, clf).item() == pytest.approx(plain, rel=1e-5)
    obj.set_epoch(1)
    assert obj.stats["margin"] == 0.0 and obj(x, y, clf).item() > plain
    assert obj.stats["margin"] == pytest.approx(0.1)


@pytest.mark.parametrize("cls", [ArcFaceObjective, CosFaceObjective])
def test_margin_gradcheck(cls):
    torch.manual_seed(1)
    obj = cls(scale=8.0, margin=0.3)
    clf = obj.build_classifier(3, 4).double()
    with torch.no_grad():
        clf.weight.normal_()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    w = clf.weight
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.autograd.gradcheck(lambda e, _w: obj(e, y, clf), (x, w))


def test_margin_options_are_checked():
    with pytest.raises(ConfigError, match="scale"):
        ArcFaceObjective(scale=0.0)
    with pytest.raises(ConfigError, match="margin"):
        CosFaceObjective(margin=-0.1)
    with pytest.raises(ConfigError, match="π/2"):
        ArcFaceObjective(margin=2.0)
