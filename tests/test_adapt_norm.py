"""AdaBN: BatchNorm statistics re-estimated on the scored files, checked against a brute-force
computation layer by layer."""

from __future__ import annotations

import copy

import torch
from torch import nn

from metaemb.core.eval.adapt_norm import adapt_batchnorm, batchnorm_layers, spread


class Net(nn.Module):
    """Frame layers with BatchNorm, masked mean pooling, a segment layer with BatchNorm; the
    segment BatchNorm is registered first but runs last."""

    def __init__(self) -> None:
        super().__init__()
        self.seg_bn = nn.BatchNorm1d(3)
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4)
        self.seg = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        if lengths is None:
            pooled = h.mean(-1)
        else:
            mask = torch.arange(h.shape[-1])[None] < lengths[:, None]
            pooled = (h * mask[:, None]).sum(-1) / lengths[:, None]
        return self.seg_bn(self.seg(pooled))


def files(n: int, shift: float = 3.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(n)
    out = []
    for i in range(n):
        t = 5 + (7 * i) % 11
        out.append((shift + 2 * torch.randn(1, 2, t, generator=g), torch.tensor([t])))
    return out


def brute_force(net: Net, data: list, weight: float) -> tuple[torch.Tensor, ...]:
    """The expected statistics: frame BatchNorm over every frame of every file, then the segment
    BatchNorm over the files' segment outputs computed with the adapted frame layer."""
    net = copy.deepcopy(net).eval()
    with torch.no_grad():
        frames = torch.cat([net.conv(x)[0].T for x, _ in data]).double()
        m, v = frames.mean(0), frames.var(0, unbiased=False)
        net.bn.running_mean.mul_(1 - weight).add_(weight * m.float())
        net.bn.running_var.mul_(1 - weight).add_(weight * v.float())
        seg = torch.cat([net.seg(torch.relu(net.bn(net.conv(x))).mean(-1)) for x, _ in data])
        sm, sv = seg.double().mean(0), seg.double().var(0, unbiased=False)
    old_m, old_v = net.seg_bn.running_mean, net.seg_bn.running_var
    return (
        net.bn.running_mean,
        net.bn.running_var,
        (1 - weight) * old_m + weight * sm.float(),
        (1 - weight) * old_v + weight * sv.float(),
    )


def test_layers_are_found_in_the_order_the_forward_runs_them():
    net = Net().eval()
    assert batchnorm_layers(net, files(1)[0]) == [net.bn, net.seg_bn]


def test_statistics_equal_a_brute_force_computation_layer_by_layer():
    torch.manual_seed(0)
    net = Net().eval()
    data = files(30)
    expected = brute_force(net, data, weight=30 / (30 + 20))
    assert adapt_batchnorm(net, data, relevance=20) == 30
    got = (net.bn.running_mean, net.bn.running_var, net.seg_bn.running_mean, net.seg_bn.running_var)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_a_few_files_move_the_statistics_little_and_none_leave_them():
    torch.manual_seed(0)
    net = Net().eval()
    before = net.bn.running_mean.clone()
    assert adapt_batchnorm(net, []) == 0
    assert torch.equal(net.bn.running_mean, before)
    adapt_batchnorm(net, files(2, shift=10.0), relevance=20)
    moved = (net.bn.running_mean - before).abs().max()
    torch.manual_seed(0)
    full = Net().eval()  # the same initial network, adapted on the two files alone
    adapt_batchnorm(full, files(2, shift=10.0), relevance=0)
    assert moved < 0.15 * (full.bn.running_mean - before).abs().max()


def test_the_adapted_network_normalises_the_new_domain():
    """After adaptation, the frame BatchNorm's output over the new files has mean 0, std 1
    (relevance 0: the files alone), which the training statistics did not give."""
    torch.manual_seed(0)
    net = Net().eval()
    data = files(40, shift=5.0)

    def frame_moments() -> tuple[float, float]:
        with torch.no_grad():
            out = torch.cat([net.bn(net.conv(x))[0].T for x, _ in data])
        return float(out.mean(0).abs().max()), float((out.std(0) - 1).abs().max())

    assert frame_moments()[0] > 0.5
    adapt_batchnorm(net, data, relevance=0)
    mean_off, std_off = frame_moments()
    assert mean_off < 1e-3 and std_off < 1e-2


def test_spread_keeps_at_most_the_limit_evenly():
    assert spread([5, 6, 7], most=10) == [5, 6, 7]
    picked = spread(list(range(1000)), most=10)
    assert picked == list(range(0, 1000, 100))
