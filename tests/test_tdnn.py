"""x-vector TDNN: the spec's layer table (parameter count), masking (batched = single)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaemb.core.errors import ConfigError
from metaemb.plugins.audio.backbones.pooling import StatsPooling, masked_mean_std
from metaemb.plugins.audio.backbones.tdnn import xvector


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_matches_layer_table():
    model = xvector(in_channels=80)
    # Brute force from the spec table: conv weights + biases, BN affine, segment6 affine.
    convs = [(80, 512, 5), (512, 512, 3), (512, 512, 3), (512, 512, 1), (512, 1500, 1)]
    expected = sum(i * o * k + o + 2 * o for i, o, k in convs) + 3000 * 512 + 512
    assert count(model) == expected
    # segment7 (affine 512 → 512 + BN) is the engine's Head in metaemb: with it, the spec's
    # "x-vector without the classifier" must be within 3 % of 4.6 M.
    segment7 = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.BatchNorm1d(512))
    total = count(model) + count(segment7)
    print(f"x-vector parameters: backbone {count(model):,}, with segment7 {total:,}")
    assert abs(total - 4.6e6) / 4.6e6 < 0.03
    assert model.feature_dim == 512
    assert model(torch.randn(2, 80, 40)).shape == (2, 512)


def test_layer_contexts_follow_the_table():
    model = xvector()
    got = [(f.conv.kernel_size[0], f.conv.dilation[0]) for f in model.frames]
    assert got == [(5, 1), (3, 2), (3, 3), (1, 1), (1, 1)]
    assert [f.conv.out_channels for f in model.frames] == [512, 512, 512, 512, 1500]
    assert model.segment6.in_features == 3000 and model.segment6.out_features == 512


@pytest.mark.parametrize("input_stats", [False, True])
def test_padded_batch_equals_each_utterance_alone(input_stats):
    torch.manual_seed(0)
    model = xvector(channels=64, pool_channels=96, embedding_dim=32, input_stats=input_stats)
    # Give BatchNorm non-trivial running statistics so eval mode is not an identity.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 80, 60) * 3 + 1)
    model.eval()
    lengths = [37, 150, 3, 1, 96]
    utts = [torch.randn(80, n) for n in lengths]
    batch = torch.zeros(len(utts), 80, max(lengths))
    for i, u in enumerate(utts):
        batch[i, :, : u.shape[1]] = u
    batch[:, :, :] += 0.0
    batch[0, :, 37:] = 5.0  # garbage in the padding must not matter
    with torch.no_grad():
        together = model(batch, torch.tensor(lengths))
        alone = torch.cat([model(u[None]) for u in utts])
        unmasked = model(batch)
    cos = nn.functional.cosine_similarity(together, alone)
    assert float((1 - cos).abs().max()) <= 1e-4
    # Without lengths the padding leaks into the embedding (so the test above can fail).
    assert float(1 - nn.functional.cosine_similarity(unmasked[:1], alone[:1])) > 1e-3


def test_input_stats_feed_the_inputs_mean_and_std_to_segment6():
    torch.manual_seed(2)
    model = xvector(
        in_channels=10, channels=16, pool_channels=24, embedding_dim=8, input_stats=True
    )
    assert model.segment6.in_features == 2 * 24 + 2 * 10
    model.eval()
    x, lengths = torch.randn(2, 10, 30), torch.tensor([30, 12])
    seen = {}
    model.input_norm.register_forward_hook(lambda m, args, out: seen.update(stats=args[0]))
    with torch.no_grad():
        model(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        v = x[i, :, :n]
        want = torch.cat([v.mean(1), v.std(1, unbiased=False)])
        torch.testing.assert_close(seen["stats"][i], want, rtol=1e-4, atol=1e-5)


def test_stats_pooling_matches_brute_force():
    torch.manual_seed(1)
    x = torch.randn(3, 4, 10)
    lengths = torch.tensor([10, 4, 7])
    mask = (torch.arange(10)[None] < lengths[:, None]).float()[:, None]
    pooled = StatsPooling()(x, mask)
    for i, n in enumerate(lengths.tolist()):
        valid = x[i, :, :n]
        ref = torch.cat([valid.mean(-1), valid.std(-1, unbiased=False)])
        torch.testing.assert_close(pooled[i], ref, atol=1e-5, rtol=1e-5)
    mean, std = masked_mean_std(torch.ones(1, 2, 5), None)
    assert torch.allclose(mean, torch.ones(1, 2)) and bool((std > 0).all())  # floored, no NaN


def test_bad_options_and_inputs():
    with pytest.raises(ConfigError, match="channels"):
        xvector(channels=0)
    with pytest.raises(ValueError, match=r"\[N, 80, T\]"):
        xvector(channels=8, pool_channels=8, embedding_dim=8)(torch.randn(2, 40, 20))
    with pytest.raises(ValueError, match="lengths"):
        xvector(channels=8, pool_channels=8, embedding_dim=8)(
            torch.randn(2, 80, 20), torch.tensor([0, 20])
        )


def test_trunk_is_the_frame_layers():
    model = xvector(channels=8, pool_channels=8, embedding_dim=8)
    trunk = {id(p) for p in model.trunk().parameters()}
    assert trunk and trunk == {id(p) for p in model.frames.parameters()}
    assert all(id(p) not in trunk for p in model.segment6.parameters())
