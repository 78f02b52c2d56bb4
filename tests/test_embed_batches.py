"""Evaluation batches of mixed lengths: one long recording no longer pads the whole batch."""

from __future__ import annotations

import torch

from metaemb.core.data.embed import length_groups, run_grouped
from metaemb.core.gme.algebra import GME


def masked_mean(seen: list[list[int]]):
    def fn(x, lengths):
        seen.append(list(x.shape))
        steps = torch.arange(x.shape[-1])
        mask = (steps[None] < lengths[:, None]).to(x.dtype)[:, None]
        return (x * mask).sum(-1) / lengths[:, None]

    return fn


def test_one_long_input_is_embedded_apart_and_the_results_keep_their_order():
    """A 10-minute file among 63 short ones padded all 64 to 10 minutes: 20 GB and an OOM kill
    (S3-7). Now the short ones pad to the longest short one."""
    torch.manual_seed(0)
    lengths = torch.tensor([300 + 7 * i for i in range(63)] + [60000])
    lengths = lengths[torch.randperm(64)]
    x = torch.randn(64, 2, int(lengths.max()))
    seen: list[list[int]] = []
    grouped = run_grouped(masked_mean(seen), x, lengths)
    whole = masked_mean([])(x, lengths)
    torch.testing.assert_close(grouped, whole)
    assert max(shape[0] * shape[-1] for shape in seen) <= int(lengths.sum())
    assert [shape[0] for shape in seen] == [63, 1]


def test_batches_of_similar_lengths_or_without_lengths_stay_whole():
    assert len(length_groups(torch.tensor([100, 120, 90, 110]))) == 1
    seen: list[list[int]] = []
    x = torch.randn(4, 3, 5)
    run_grouped(lambda x, lengths: seen.append(list(x.shape)) or x.sum(-1), x, None)
    assert seen == [[4, 3, 5]]


def test_meta_embeddings_come_back_in_the_batch_order():
    lengths = torch.tensor([5000, 10, 12, 11])
    x = torch.randn(4, 1, 5000)

    def fn(x, lengths):
        mean = masked_mean([])(x, lengths)
        return GME(mean, mean.abs() + lengths[:, None].float())

    grouped = run_grouped(fn, x, lengths)
    assert isinstance(grouped, GME)
    torch.testing.assert_close(grouped.b[:, 0] - grouped.a[:, 0].abs(), lengths.float())
