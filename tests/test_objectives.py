"""Objectives against hand-computed losses on tiny batches, plus gradient checks."""

from __future__ import annotations

import math

import pytest
import torch

from metaemb.core.errors import ConfigError
from metaemb.core.train.objectives.contrastive import ContrastiveObjective
from metaemb.core.train.objectives.distill import DistillObjective
from metaemb.core.train.objectives.margin import ArcFaceObjective, CosFaceObjective
from metaemb.core.train.objectives.softmax import LinearClassifier, SoftmaxObjective
from metaemb.core.train.objectives.triplet import TripletObjective


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


# ---------------------------------------------------------------------------------------------
# triplet
def _on_circle(degrees, radius=1.0):
    """Points on a circle (radius ≠ 1 checks the L2 normalisation)."""
    return torch.tensor(
        [[radius * math.cos(math.radians(a)), radius * math.sin(math.radians(a))] for a in degrees],
        dtype=torch.float64,
    )


def _d(a, b):
    """Squared distance of unit vectors at angles a, b (degrees): 2 − 2 cos Δ."""
    return 2.0 - 2.0 * math.cos(math.radians(a - b))


def test_triplet_batch_hard_tiny_batch_by_hand():
    # A: 0°, 60°; B: 30°, 180°. Anchors' hardest (positive, negative) distances:
    # 0°: (60°→1.0, 30°→0.268), 60°: (1.0, 0.268), 30°: (150°→3.732, 0.268), 180°: (3.732, 120°→3)
    obj = TripletObjective(margin=0.2, mining="batch-hard")
    loss = obj(_on_circle([0, 60, 30, 180], radius=3.0), torch.tensor([0, 0, 1, 1]), None)
    c30, c150 = math.cos(math.radians(30)), math.cos(math.radians(150))
    d30, d60, d120, d150 = 2 - 2 * c30, 1.0, 3.0, 2 - 2 * c150
    expected = (2 * (d60 - d30 + 0.2) + (d150 - d30 + 0.2) + (d150 - d120 + 0.2)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(1.6150635, rel=1e-6)


ANGLES = [0, 20, 100, 40, 200, 270]
TLABELS = [0, 0, 0, 1, 1, 1]
# Worked out by hand from the angular differences: anchor → (hardest positive, hardest negative)
HARDEST = {0: (2, 3), 1: (2, 3), 2: (0, 3), 3: (4, 1), 4: (3, 2), 5: (3, 0)}


def _pairs(kind):
    n = len(ANGLES)
    return [
        (a, b)
        for a in range(n)
        for b in range(n)
        if a != b and (TLABELS[a] == TLABELS[b]) == (kind == "pos")
    ]


def test_triplet_batch_hard_uses_the_known_hardest_pairs():
    m = 0.3
    d = {(a, b): _d(ANGLES[a], ANGLES[b]) for a in range(6) for b in range(6)}
    for a, (p, n) in HARDEST.items():  # the hand-made table agrees with brute force
        assert d[a, p] == max(d[a, q] for q in range(6) if q != a and TLABELS[q] == TLABELS[a])
        assert d[a, n] == min(d[a, q] for q in range(6) if TLABELS[q] != TLABELS[a])
    expected = sum(max(0.0, d[a, p] - d[a, n] + m) for a, (p, n) in HARDEST.items()) / 6
    obj = TripletObjective(margin=m, mining="batch-hard")
    loss = obj(_on_circle(ANGLES, 2.0), torch.tensor(TLABELS), None)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_triplet_semi_hard_by_brute_force():
    m = 0.3
    terms = []
    for a, p in _pairs("pos"):
        dap = _d(ANGLES[a], ANGLES[p])
        negs = [_d(ANGLES[a], ANGLES[n]) for n in range(6) if TLABELS[n] != TLABELS[a]]
        outside = [x for x in negs if x > dap]
        dn = min(outside) if outside else max(negs)
        terms.append(max(0.0, dap - dn + m))
    # The anchor 40° / positive 200° pair (Δ160°) has no negative beyond it: fallback used.
    assert not [n for n in (0, 1, 2) if _d(40, ANGLES[n]) > _d(40, 200)]
    obj = TripletObjective(margin=m, mining="semi-hard")
    loss = obj(_on_circle(ANGLES), torch.tensor(TLABELS), None)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-9)


def test_triplet_batch_all_by_brute_force():
    m = 0.3
    terms = [
        max(0.0, _d(ANGLES[a], ANGLES[p]) - _d(ANGLES[a], ANGLES[n]) + m)
        for a, p in _pairs("pos")
        for n in range(6)
        if TLABELS[n] != TLABELS[a]
    ]
    nonzero = [t for t in terms if t > 0]
    assert 0 < len(nonzero) < len(terms) == 6 * 2 * 3
    obj = TripletObjective(margin=m, mining="batch-all")
    loss = obj(_on_circle(ANGLES), torch.tensor(TLABELS), None)
    assert loss.item() == pytest.approx(sum(nonzero) / len(nonzero), rel=1e-9)
    assert obj.stats["active"] == pytest.approx(len(nonzero) / len(terms))


def test_triplet_unsquared_distance():
    obj = TripletObjective(margin=0.3, mining="batch-hard", squared=False)
    loss = obj(_on_circle(ANGLES), torch.tensor(TLABELS), None)
    dist = {k: math.sqrt(_d(ANGLES[k[0]], ANGLES[k[1]])) for k in _pairs("pos") + _pairs("neg")}
    expected = sum(max(0.0, dist[a, p] - dist[a, n] + 0.3) for a, (p, n) in HARDEST.items()) / 6
    assert loss.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("mining", ["batch-hard", "semi-hard", "batch-all"])
@pytest.mark.parametrize("squared", [True, False])
def test_triplet_gradcheck(mining, squared):
    torch.manual_seed(2)
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    obj = TripletObjective(margin=1.0, mining=mining, squared=squared)
    assert obj(x, y, None).item() > 0
    assert torch.autograd.gradcheck(lambda e: obj(e, y, None), (x,))


def test_triplet_collapse_is_reported():
    torch.manual_seed(0)
    obj = TripletObjective(margin=0.2)
    obj.set_epoch(0)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    for _ in range(3):  # every embedding (nearly) the same point
        obj(torch.ones(6, 4) + 1e-4 * torch.randn(6, 4), y, None)
    warnings = obj.end_epoch()
    assert len(warnings) == 1 and "stuck at the margin" in warnings[0]
    assert "mean positive distance 0.0000" in warnings[0]
    assert "mean negative distance 0.0000" in warnings[0]
    # Separated identities: no warning (and the statistics restart each epoch).
    obj.set_epoch(1)
    obj(_on_circle([0, 1, 120, 121, 240, 241]).float(), y, None)
    assert obj.stats["loss"] == 0.0 and obj.end_epoch() == []


def test_triplet_warns_without_triplets():
    """In a training loop of one's own the zero loss was silent until end_epoch (L1 O2)."""
    obj = TripletObjective()
    with pytest.warns(UserWarning, match=r"no \(anchor, positive, negative\) triplet \(no two "
                      r"samples of one identity\).*P×K batches"):  # fmt: skip
        loss = obj(torch.randn(4, 3, requires_grad=True), torch.tensor([0, 1, 2, 3]), None)
    assert loss.item() == 0.0 and loss.requires_grad
    assert "train.sampler=pk" in obj.end_epoch()[0]
    with pytest.raises(ConfigError, match="mining"):
        TripletObjective(mining="hardest")


# ---------------------------------------------------------------------------------------------
# contrastive
def test_contrastive_consecutive_pairs_by_hand():
    # Pairs: (0°, 60°) genuine: D = 1 → ½; (0°, 90°) impostor: D = √2 > m → 0;
    # (10°, 40°) impostor: D = 2 sin 15° → ½(1 − D)²; trailing odd row ignored.
    x = _on_circle([0, 60, 0, 90, 10, 40, 77], radius=5.0)
    y = torch.tensor([3, 3, 1, 2, 1, 2, 1])
    obj = ContrastiveObjective(margin=1.0, pairing="consecutive")
    loss = obj(x, y, None)
    d15 = 2 * math.sin(math.radians(15))
    expected = (0.5 * 1.0**2 + 0.0 + 0.5 * (1.0 - d15) ** 2) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(0.2054457, rel=1e-6)
    assert obj.stats["genuine_fraction"] == pytest.approx(1 / 3)


def test_contrastive_all_pairs_by_brute_force():
    angles, labels = ANGLES, TLABELS
    gen, imp = [], []
    for a in range(6):
        for b in range(a + 1, 6):
            dist = math.sqrt(_d(angles[a], angles[b]))
            if labels[a] == labels[b]:
                gen.append(0.5 * dist**2)
            else:
                imp.append(0.5 * max(0.0, 0.8 - dist) ** 2)
    obj = ContrastiveObjective(margin=0.8, pairing="all")
    loss = obj(_on_circle(angles), torch.tensor(labels), None)
    assert loss.item() == pytest.approx(sum(gen) / len(gen) + sum(imp) / len(imp), rel=1e-9)


@pytest.mark.parametrize("pairing", ["consecutive", "all"])
def test_contrastive_gradcheck(pairing):
    torch.manual_seed(3)
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 2, 2, 2, 3, 1])
    obj = ContrastiveObjective(margin=1.5, pairing=pairing)
    assert torch.autograd.gradcheck(lambda e: obj(e, y, None), (x,))


# ---------------------------------------------------------------------------------------------
# distillation
def _unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def test_distill_logit_kd_by_hand():
    x = [[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]]
    w = [[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]]
    b = [0.0, 0.5, -0.5]
    labels = [0, 2, 1]
    teacher = [[2.0, 0.0, -1.0], [0.0, 0.0, 3.0], [-1.0, 4.0, 1.0]]
    obj = DistillObjective(task="softmax", kd="logits", weight=0.5, temperature=4.0)
    head = obj.build_classifier(2, 3)
    _set_linear(head.task, w, b)
    obj.teacher_outputs = torch.tensor(teacher)
    loss = obj(torch.tensor(x), torch.tensor(labels), head)

    def softmax(z, t):
        e = [math.exp(v / t) for v in z]
        return [v / sum(e) for v in e]

    kd = 0.0
    for xi, zt in zip(x, teacher, strict=True):
        zs = [
            sum(a * c for a, c in zip(wj, xi, strict=True)) + bj
            for wj, bj in zip(w, b, strict=True)
        ]
        pt, ps = softmax(zt, 4.0), softmax(zs, 4.0)
        kd += 16.0 * sum(p * math.log(p / q) for p, q in zip(pt, ps, strict=True))
    kd /= 3
    task = _softmax_by_hand(x, w, b, labels, 0.0)
    assert obj.stats["kd"] == pytest.approx(kd, rel=1e-5)
    assert loss.item() == pytest.approx(task + 0.5 * kd, rel=1e-5)
    assert obj.teacher_outputs is None  # consumed: a stale teacher batch is never reused


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_distill_embedding_kd_with_projection_by_hand(kind):
    x = [[1.0, 2.0], [-1.0, 0.5]]
    proj = [[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]  # student 2 → teacher 3 dimensions
    teacher = [[0.0, 1.0, 1.0], [2.0, 0.0, -1.0]]
    obj = DistillObjective(task="none", kd="embedding", embedding_loss=kind, teacher_dim=3)
    head = obj.build_classifier(2, 5)
    assert head.task is None
    with torch.no_grad():
        head.projection.weight.copy_(torch.tensor(proj))
    obj.teacher_outputs = torch.tensor(teacher)
    loss = obj(torch.tensor(x), torch.tensor([0, 1]), head)
    total = 0.0
    for xi, ti in zip(x, teacher, strict=True):
        s = _unit([sum(p * v for p, v in zip(row, xi, strict=True)) for row in proj])
        t = _unit(ti)
        cos = sum(a * c for a, c in zip(s, t, strict=True))
        total += sum((a - c) ** 2 for a, c in zip(s, t, strict=True)) if kind == "mse" else 1 - cos
    assert loss.item() == pytest.approx(total / 2, rel=1e-5)


def test_distill_gradcheck_and_task_sum():
    torch.manual_seed(4)
    obj = DistillObjective(task="cosface", kd="embedding", weight=2.0, teacher_dim=5)
    head = obj.build_classifier(3, 4).double()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    t = torch.randn(6, 5, dtype=torch.float64)

    def f(e, _p):
        obj.teacher_outputs = t
        return obj(e, y, head)

    assert torch.autograd.gradcheck(f, (x, head.projection.weight))
    # total = task + λ·KD, with the task computed by the task objective on its own classifier
    obj.teacher_outputs = t
    total = obj(x, y, head).item()
    task = obj.task(x, y, head.task).item()
    assert total == pytest.approx(task + 2.0 * obj.stats["kd"], rel=1e-9)


def test_distill_errors():
    obj = DistillObjective(kd="embedding")
    head = obj.build_classifier(3, 2)
    with pytest.raises(ConfigError, match="teacher"):
        obj(torch.randn(2, 3), torch.tensor([0, 1]), head)
    obj.teacher_outputs = torch.randn(2, 7)
    with pytest.raises(ConfigError, match="teacher_dim=7"):
        obj(torch.randn(2, 3), torch.tensor([0, 1]), head)
    with pytest.raises(ConfigError, match="classifier task"):
        DistillObjective(task="triplet", kd="logits")
    with pytest.raises(ConfigError, match="task"):
        DistillObjective(task="gme")
    with pytest.raises(ConfigError, match="point-embedding objective"):
        DistillObjective(task="gme-bxe")  # a registered objective, but of meta-embeddings
    # any registered point objective is a task, with its own options from a nested table
    arc = DistillObjective(task={"name": "arcface", "margin": 0.3}, kd="logits")
    assert type(arc.task).__name__ == "ArcFaceObjective" and arc.task.margin == 0.3


def test_the_train_banner_names_the_scale_and_margin_a_margin_loss_uses():
    """ArcFace's defaults differ between toolkits (InsightFace s=64, m=0.5; speaker recipes
    s=30, m=0.2), and config.toml records only what was set: the banner says which are used."""
    from metaemb.core.config import resolve
    from metaemb.core.train.summary import _objective

    # the face modality's own default: label smoothing 0.1 (set options are shown too)
    assert _objective(resolve("face")) == "softmax(label_smoothing=0.1)"
    assert _objective(resolve("speaker", sets=["train.objective=softmax"])) == "softmax"
    assert _objective(resolve("face", sets=["train.objective=arcface"])) == (
        "arcface(scale=30, margin=0.2)"
    )
    chosen = ["train.objective=cosface", "objective.scale=64", "objective.margin=0.35"]
    assert _objective(resolve("face", sets=chosen)) == "cosface(scale=64, margin=0.35)"
    # a loss's other hyper-parameters were left out (a plugin's sub-centre k, say) (C1 F10)
    chosen = ["train.objective=triplet", "objective.mining=batch-hard"]
    assert _objective(resolve("face", sets=chosen)) == "triplet(margin=0.2, mining=batch-hard)"


@pytest.mark.parametrize("name", ["softmax", "arcface", "cosface", "partial-fc", "triplet",
                                  "contrastive"])  # fmt: skip
def test_point_objectives_name_what_is_wrong_with_their_inputs(name):
    """Used in one's own loop they failed deep in torch: gather() on numpy labels, 'index 7
    is out of bounds', 'GME has no attribute norm' (L1 O4)."""
    from metaemb.core.gme.algebra import GME
    from metaemb.core.plugin.components import build_part

    obj = build_part("objectives", name)
    classifier = obj.build_classifier(4, 4)
    x, y = torch.randn(8, 4, requires_grad=True), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    with pytest.raises(ConfigError, match=rf"objective '{name}' \(plugin 'core'\): labels must "
                       r"be an integer tensor \[N\] of class indices, got ndarray"):  # fmt: skip
        obj(x, y.numpy(), classifier)
    with pytest.raises(ConfigError, match=r"labels must be an integer tensor .* got torch.float32"):
        obj(x, y.float(), classifier)
    for other in (torch.int32, torch.uint8):  # integer labels are labels (R2-2)
        assert obj(x, y.to(other), classifier) == obj(x, y, classifier)
    with pytest.raises(ConfigError, match=rf"objective '{name}' \(plugin 'core'\) takes point"):
        obj(GME(x, x.abs()), y, classifier)
    if classifier is not None:
        with pytest.raises(ConfigError, match=r"class indices in \[0, 4\) \(the classifier's "
                           r"classes\), got 7"):  # fmt: skip
            obj(x, torch.tensor([0, 1, 2, 7, 0, 1, 2, 3]), classifier)
        # "mat1 and mat2 shapes cannot be multiplied" named neither the loss nor the size (L2 F2)
        with pytest.raises(ConfigError, match=rf"objective '{name}': embeddings \[N, 5\] but its "
                           "classifier was built for dim 4"):  # fmt: skip
            obj(torch.randn(8, 5), y, classifier)
    assert torch.isfinite(obj(x, y, classifier))
