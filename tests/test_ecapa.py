"""ECAPA-TDNN: the spec's parameter counts and exact masking of padded batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaemb.core.errors import ConfigError
from metaemb.plugins.audio.backbones.ecapa import ecapa_tdnn
from metaemb.plugins.audio.backbones.pooling import AttentiveStatsPooling


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("channels", "millions"), [(512, 6.2), (1024, 14.7)])
def test_parameter_counts(channels, millions):
    model = ecapa_tdnn(channels=channels)
    n = count(model)
    print(f"ECAPA-TDNN C={channels}: {n:,} parameters")
    assert abs(n - millions * 1e6) / (millions * 1e6) < 0.02
    assert model.feature_dim == 192


def test_output_shape_and_structure():
    model = ecapa_tdnn(channels=64, mfa_channels=96, se_channels=16, attention_channels=16)
    assert model(torch.randn(2, 80, 30)).shape == (2, 192)
    dilations = [b.res2.blocks[0].conv.dilation[0] for b in model.blocks]
    assert dilations == [2, 3, 4]
    assert len(model.blocks[0].res2.blocks) == 7  # scale 8: first group passes through


def test_padded_batch_equals_each_utterance_alone():
    torch.manual_seed(0)
    model = ecapa_tdnn(channels=64, mfa_channels=96, se_channels=16, attention_channels=16)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(6, 80, 50) * 2 + 1)
    model.eval()
    lengths = [64, 9, 1, 40]
    utts = [torch.randn(80, n) for n in lengths]
    batch = torch.full((len(utts), 80, max(lengths)), 3.0)  # padding filled with garbage
    for i, u in enumerate(utts):
        batch[i, :, : u.shape[1]] = u
    with torch.no_grad():
        together = model(batch, torch.tensor(lengths))
        alone = torch.cat([model(u[None]) for u in utts])
        unmasked = model(batch)
    cos = nn.functional.cosine_similarity(together, alone)
    assert float((1 - cos).abs().max()) <= 1e-4
    assert float(1 - nn.functional.cosine_similarity(unmasked[1:2], alone[1:2])) > 1e-3


def test_attentive_pooling_ignores_padding_and_weights_sum_to_one():
    torch.manual_seed(2)
    pool = AttentiveStatsPooling(8, attention_channels=4).eval()
    x = torch.randn(1, 8, 12)
    mask = torch.zeros(1, 1, 12)
    mask[..., :7] = 1
    padded = x.clone()
    padded[..., 7:] = 100.0
    torch.testing.assert_close(pool(padded, mask), pool(x[..., :7]))
    # A constant attention score reduces to plain mean ‖ std of the valid frames.
    nn.init.zeros_(pool.attention[-1].weight)
    nn.init.zeros_(pool.attention[-1].bias)
    out = pool(padded, mask)[0]
    ref = torch.cat([x[0, :, :7].mean(-1), x[0, :, :7].std(-1, unbiased=False)])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_bad_options():
    with pytest.raises(ConfigError, match="multiple of scale"):
        ecapa_tdnn(channels=100)
    with pytest.raises(ConfigError, match="embedding_dim"):
        ecapa_tdnn(channels=64, embedding_dim=0)
