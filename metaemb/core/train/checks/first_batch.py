"""The first training batch run through features → backbone → head before any step: refuse, by
component, an output of the wrong type, shape or dtype, and warn about unscaled inputs and
padding that leaks into the embeddings."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from metaemb.core.config import Config
from metaemb.core.data.collate import check_lengths_fit
from metaemb.core.data.embed import non_finite_rows
from metaemb.core.errors import ConfigError
from metaemb.core.train.checks.eval_mode import eval_mode
from metaemb.core.train.checks.naming import component, describe_value

#: the largest network input that is not taken for unscaled data (log-mels reach ~30, pixels
#: normalised to [-1, 1], a z-score a few tens)
LARGE_INPUT = 1e4


@torch.no_grad()
def check_first_batch(
    model: Any, config: Config, x: Tensor, lengths: Tensor | None, scorer: Any = None
) -> None:
    """Run one batch through the network stage by stage (in eval mode, no gradient, so no
    state or random stream moves) and refuse, by component, what does not fit; with `scorer`
    (one that needs no fitting), also score the batch's embeddings both ways, so a scorer whose
    pair and matrix scores disagree is named before an epoch is spent."""
    with eval_mode(model):
        feats_name = component(config, "features")
        out = model.features(x, lengths)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Tensor)):
            raise ConfigError(
                f"{feats_name}: forward must return (tensor, lengths or None); it returned "
                f"{describe_value(out)}."
            )
        f, flen = out
        if not f.is_floating_point():
            raise ConfigError(
                f"{feats_name}: forward returned {describe_value(f)}; the backbone needs a floating "
                "point tensor (float32)."
            )
        if isinstance(flen, Tensor) and flen.numel() == len(f):
            check_lengths_fit(flen, f, f"{feats_name}: forward")
        peak = float(f.detach().abs().max()) if f.numel() else 0.0
        if peak > LARGE_INPUT:  # unscaled 16-bit data, say
            warnings.warn(
                f"{feats_name} gives the backbone values up to {peak:.3g}: networks train on "
                "inputs of order 1 (normalised pixels, log-mel energies). Unscaled data (16-bit "
                "pixels, int16 samples)? Scale it in the features' prepare.",
                stacklevel=2,
            )
        backbone_name = component(config, "backbone")
        backbone = getattr(model.backbone, "_orig_mod", model.backbone)  # not torch.compile's
        try:
            pooled = backbone(f, flen)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            hint = ""
            channels = getattr(model.features, "out_channels", None)
            if (
                f.dim() >= 3
                and channels is not None
                and f.shape[1] != channels
                and channels in f.shape[2:]
            ):
                hint = (
                    f" The features declare out_channels = {channels} and give a tensor with "
                    f"{channels} on a later axis: channels go on axis 1 ([batch, channels, "
                    f"time…]); transpose in {feats_name}'s forward."
                )
            elif (
                f.dim() == 2
                and isinstance(channels, int)
                and 0 < channels < f.shape[1]
                and f.shape[1] % channels == 0
            ):
                hint = (
                    f" The features give a rank-2 batch [batch, {f.shape[1]}] and declare "
                    f"out_channels = {channels}: the other axis is missing or flattened "
                    f"({f.shape[1]} = {channels} × {f.shape[1] // channels}?). Sequence features "
                    "give [batch, channels, time], two-dimensional ones [batch, channels, "
                    "height, width] (docs/plugins.md, 'Layout and lengths')."
                )
            elif f.dim() >= 2 and channels is not None and f.shape[1] != channels:
                hint = (
                    f" The features declare out_channels = {channels} (what the backbone was "
                    f"built for) but give {f.shape[1]} channels: set out_channels in "
                    f"{feats_name}."
                )
            elif f.dtype != torch.float32:
                hint = f" {feats_name} should give float32."
            raise ConfigError(
                f"{backbone_name} failed on the features' output ({describe_value(f)}): "
                f"{type(exc).__name__}: {exc}.{hint}"
            ) from exc
        dim = getattr(backbone, "feature_dim", None)
        if not isinstance(pooled, Tensor) or pooled.dim() != 2 or pooled.shape[1] != dim:
            raise ConfigError(
                f"{backbone_name} returned {describe_value(pooled)}; a backbone returns pooled "
                f"features [batch, feature_dim] = [{len(f)}, {dim}] (pool over time or space, "
                "and set feature_dim to the pooled size)."
            )
        if pooled.dtype != f.dtype:
            raise ConfigError(
                f"{backbone_name} returned {describe_value(pooled)} from {f.dtype} features; the "
                f"head and the objective expect the features' dtype: return {f.dtype} (build "
                "the layers in the default dtype and do not convert the output)."
            )
        embeddings = model.head(pooled)
        check_head_output(model.head, embeddings, config, len(f), pooled.dtype)
        _warn_if_padding_leaks(model, backbone, config, x, lengths, pooled, flen)
        # NaN embeddings are left to the training step, which names the stage that made them
        # and the files (a scorer would be blamed for NaN scores here).
        if scorer is not None and not non_finite_rows(embeddings):
            from metaemb.core.scoring.scorers import check_consistent

            if isinstance(embeddings, Tensor):  # as validation scores them: float32, CPU
                embeddings = embeddings.detach().float().cpu()
            else:  # a GME
                embeddings = type(embeddings)(
                    embeddings.a.float().cpu(), embeddings.b.float().cpu()
                )
            check_consistent(scorer, embeddings, component(config, "scorer"))


def check_head_output(head: Any, out: Any, config: Config, n: int, dtype: torch.dtype) -> None:
    """A head gives [batch, model.dim] in the backbone's dtype: a tensor for a point head, a
    GME (a, b) for one declaring output = "gme". Anything else fails later inside an objective
    or a scorer with an error that does not name the head."""
    from metaemb.core.gme.algebra import GME

    name, dim = component(config, "head"), config.model.dim
    declared = getattr(head, "output", "point")
    if declared == "gme" and not isinstance(out, GME):
        raise ConfigError(
            f'{name} declares output = "gme" but returned {describe_value(out)}; return a GME(a, b), '
            'or declare output = "point".'
        )
    parts = (out.a, out.b) if isinstance(out, GME) else (out,)
    for t in parts:
        if not isinstance(t, Tensor) or t.dim() != 2 or tuple(t.shape) != (n, dim):
            raise ConfigError(
                f"{name} returned {describe_value(t)}; a head returns [batch, model.dim] = "
                f"[{n}, {dim}] (build its last layer with the `dim` it is given)."
            )
        if t.dtype != dtype:
            raise ConfigError(
                f"{name} returned {describe_value(t)} from {dtype} backbone features; return "
                f"{dtype} (build the layers in the default dtype and do not convert the output)."
            )
    if isinstance(out, GME) and bool((out.b.detach() < 0).any()):
        share = float((out.b.detach() < 0).float().mean())
        raise ConfigError(
            f"{name} returned a GME with negative precisions b ({share:.0%} of the values); "
            "b is a precision and must be ≥ 0 (end its layer with softplus or exp)."
        )


def _warn_if_padding_leaks(
    model: Any, backbone: Any, config: Config, x: Tensor, lengths: Tensor | None,
    pooled: Tensor, flen: Tensor | None,
) -> None:  # fmt: skip
    """A padded batch must embed each sample as it would be alone (evaluation embeds
    utterances of every length together): compare the most padded sample with itself alone,
    or, when training crops all have one length, the first sample with itself padded in a
    batch with a longer one.
    A batch of one length may come with lengths None (nothing was padded): its first sample is
    padded too when the features pass lengths on (sequences, not fixed-size inputs)."""
    unpadded = lengths is None
    if unpadded:
        if x.dim() != 3 or x.shape[0] < 1:  # [N, channels, steps] batches only
            return
        lengths = torch.full((x.shape[0],), x.shape[-1], dtype=torch.long, device=x.device)
    if lengths.numel() < 1 or x.shape[-1] != int(lengths.max()):
        return
    if bool((lengths == x.shape[-1]).all()):  # fixed-length crops: pad one sample ourselves
        try:
            # Beside a longer companion (the sample and its own start), so features that
            # trim a batch to its longest length cannot cut the padding away again.
            extra = max(1, x.shape[-1] // 4)
            padded = torch.nn.functional.pad(x[:1], (0, extra))
            longer = torch.cat([x[:1], x[:1, ..., :extra]], dim=-1)
            both = torch.cat([padded, longer])
            f, fl = model.features(both, torch.stack([lengths[0], lengths[0] + extra]))
            if unpadded and fl is None and not _pads_items(model.features, x):
                return  # features without lengths: fixed-size inputs
            alone, batched = pooled[0].float(), backbone(f, fl)[0].float()
        except Exception:  # a plugin that cannot take this made-up batch: nothing to say
            return
        flen = fl  # what the features made of the lengths of the batch padded here
    else:
        i = int(torch.argmin(lengths))
        if int(lengths[i]) < 1:
            return
        f, fl = model.features(x[i : i + 1, ..., : int(lengths[i])], lengths[i : i + 1])
        alone, batched = backbone(f, fl)[0].float(), pooled[i].float()
    gap = float((alone - batched).abs().max())
    if not math.isfinite(gap) or gap <= 1e-3 * max(1.0, float(batched.abs().max())):
        return  # NaN is the non-finite checks' business, not a padding leak
    dropped = " The features returned lengths None for a padded batch." if flen is None else ""
    warnings.warn(
        f"{component(config, 'features')} → {component(config, 'backbone')}: a sample padded in "
        f"a batch is embedded differently from the same sample alone (largest difference "
        f"{gap:.3g}), so padding leaks into the result and embeddings depend on what they are "
        f"batched with.{dropped} Pass the lengths on and mask the padded steps (pool over the "
        "valid steps only); see docs/plugins.md, 'Testing a plugin'.",
        stacklevel=3,
    )


def _pads_items(features: Any, x: Tensor) -> bool:
    """Whether the features' collate pads items of two lengths and returns their lengths: they
    take sequences, so a forward that returns lengths None drops them (when training crops all
    have one length, nothing else shows it)."""
    try:
        item = x[0].detach().cpu()
        _, lens = features.collate([item, item[..., : max(1, item.shape[-1] // 2)]])
    except Exception:
        return False
    return lens is not None
