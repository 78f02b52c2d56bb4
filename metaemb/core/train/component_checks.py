"""Run-time checks of what components hand each other, naming the component that broke the
contract (and its plugin) instead of letting a tensor error surface deep inside PyTorch.

The resolve-time contract (contract.py) checks declared kinds before any data is read; these
check the values themselves: the first training batch through features → backbone → head,
the sampler's batches, and, when a loss turns non-finite, which stage made the first NaN (a
component, or the optimisation itself). The objective's own checks are in objective_checks.py.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from metaemb.core.config import CHOICE_FIELDS, COMPONENT_SECTIONS, Config
from metaemb.core.data.dataset import check_lengths_fit
from metaemb.core.data.embed import non_finite_rows, row_files
from metaemb.core.errors import ConfigError, MetaembError, first_line
from metaemb.core.plugin.manager import registry


def component(config: Config, section: str) -> str:
    """ "backbone 'tdnn' (plugin 'accel')": how messages name the component of `section`."""
    group, key = CHOICE_FIELDS[section]
    name = getattr(getattr(config, group), key)
    kind = COMPONENT_SECTIONS[section]
    try:
        plugin = registry(kind).entry(name).plugin
    except Exception:  # a name that is not registered here: say what we know
        return f"{section} '{name}'"
    return f"{section} '{name}' (plugin '{plugin}')"


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Eval mode for a check, then every submodule back in its own mode (a frozen trunk
    stays in eval mode)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {list(x.shape)}"
    return f"a {type(x).__name__}"


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
    with _eval_mode(model):
        feats_name = component(config, "features")
        out = model.features(x, lengths)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Tensor)):
            raise ConfigError(
                f"{feats_name}: forward must return (tensor, lengths or None); it returned "
                f"{_describe(out)}."
            )
        f, flen = out
        if not f.is_floating_point():
            raise ConfigError(
                f"{feats_name}: forward returned {_describe(f)}; the backbone needs a floating "
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
                    "give [batch, channels, time] (docs/plugins.md, 'Layout and lengths')."
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
                f"{backbone_name} failed on the features' output ({_describe(f)}): "
                f"{type(exc).__name__}: {exc}.{hint}"
            ) from exc
        dim = getattr(backbone, "feature_dim", None)
        if not isinstance(pooled, Tensor) or pooled.dim() != 2 or pooled.shape[1] != dim:
            raise ConfigError(
                f"{backbone_name} returned {_describe(pooled)}; a backbone returns pooled "
                f"features [batch, feature_dim] = [{len(f)}, {dim}] (pool over time or space, "
                "and set feature_dim to the pooled size)."
            )
        if pooled.dtype != f.dtype:
            raise ConfigError(
                f"{backbone_name} returned {_describe(pooled)} from {f.dtype} features; the "
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
            f'{name} declares output = "gme" but returned {_describe(out)}; return a GME(a, b), '
            'or declare output = "point".'
        )
    parts = (out.a, out.b) if isinstance(out, GME) else (out,)
    for t in parts:
        if not isinstance(t, Tensor) or t.dim() != 2 or tuple(t.shape) != (n, dim):
            raise ConfigError(
                f"{name} returned {_describe(t)}; a head returns [batch, model.dim] = "
                f"[{n}, {dim}] (build its last layer with the `dim` it is given)."
            )
        if t.dtype != dtype:
            raise ConfigError(
                f"{name} returned {_describe(t)} from {dtype} backbone features; return "
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


PLAIN = (str, int, float, bool, type(None))


def _not_plain(value: Any, where: str) -> str | None:
    """Where `value` holds something a checkpoint cannot carry (numpy scalars, paths, objects:
    checkpoints are read with torch.load(weights_only=True), which refuses them)."""
    if type(value) in PLAIN or isinstance(value, Tensor):
        return None
    if isinstance(value, (list, tuple)):
        return next((p for i, v in enumerate(value) if (p := _not_plain(v, f"{where}[{i}]"))), None)
    if isinstance(value, dict):
        for k, v in value.items():
            if type(k) is not str:
                return f"{where} has a key {k!r} of type {type(k).__name__}"
            if p := _not_plain(v, f"{where}[{k!r}]"):
                return p
        return None
    return f"{where} is a {type(value).__module__}.{type(value).__name__}"


def warn_if_not_deterministic(parts: Any, config: Config) -> None:
    """A frontend must be deterministic (its output may be cached, and evaluation must give one
    answer), and so must the features' evaluation-time `prepare(raw, train=False)`: run each
    twice on the first sample and warn, by name, when the two differ. A sample that cannot be
    read is left to the data loader to report."""
    folder, frontend = parts.folder, parts.frontend
    if not folder.samples:
        return
    sample = folder.samples[0]
    try:
        raw = folder.load(folder.abspath(sample))
        first = frontend(raw, sample.path, folder.root)
        second = frontend(folder.load(folder.abspath(sample)), sample.path, folder.root)
        same = _same_output(first, second)
    except Exception:  # reported where the sample is read, with its name
        return
    if not same:
        warnings.warn(
            f"{component(config, 'frontend')} gave two different outputs for the same file "
            f"('{sample.path}'): a frontend must be deterministic (no random noise or crop; "
            "put those in the features' prepare when train is true, or in an augmentation), "
            "or every evaluation gives other numbers.",
            stacklevel=2,
        )
        return
    features = getattr(parts, "features", None)
    try:
        with torch.no_grad():
            same = _same_output(features.prepare(first, False), features.prepare(first, False))
    except Exception:  # the data loader names the file and the features
        return
    if not same:
        warnings.warn(
            f"{component(config, 'features')} prepared the same file ('{sample.path}') twice "
            "with train=False and gave two different results: evaluation must be "
            "deterministic (random crops, noise or dropout belong under `if train:`), or every "
            "evaluation gives other numbers.",
            stacklevel=2,
        )


def _same_output(a: Any, b: Any) -> bool:
    """Equal, NaN where NaN (a NaN is reported as such where the sample is read, not as
    randomness)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point() or a.is_complex():
            return bool(
                torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
            )
        return bool(torch.equal(a, b))
    try:
        import numpy as np

        x, y = np.asarray(a), np.asarray(b)
        nan = x.dtype.kind in "fc" and y.dtype.kind in "fc"
        return bool(np.array_equal(x, y, equal_nan=nan))
    except Exception:  # values that do not compare: say nothing
        return True


def check_input_spec(features: Any, config: Config) -> None:
    """input_spec() travels in every checkpoint: refuse, before training, what could be saved
    but never loaded back."""
    spec = features.input_spec()
    problem = (
        _not_plain(spec, "input_spec()")
        if isinstance(spec, dict)
        else f"input_spec() returned a {type(spec).__name__}, not a dict"
    )
    if problem:
        raise ConfigError(
            f"{component(config, 'features')}: {problem}; it is saved in every checkpoint, "
            "which holds plain values only (str, int, float, bool, None, lists and dicts of "
            "them, tensors): convert it (float(x), str(path))."
        )


def train_mode_failure(model: Any, config: Config, x: Tensor, lengths: Tensor | None) -> str | None:
    """The first-batch checks run the network in eval mode; when the first training step then
    fails, run it stage by stage in training mode to name a features, backbone or head that
    fails or changes shape only there (the run is stopping, so moved statistics do not
    matter). None when the network is not to blame."""
    stage = "features"
    model.train()
    try:
        with torch.no_grad():
            f, flen = model.features(x, lengths)
            stage = "backbone"
            pooled = model.backbone(f, flen)
            dim = getattr(model.backbone, "feature_dim", None)
            sized = isinstance(pooled, Tensor) and isinstance(dim, int)
            if sized and (pooled.dim() != 2 or pooled.shape[1] != dim):
                return (
                    f"{component(config, 'backbone')} returned {_describe(pooled)} in training "
                    f"mode, [batch, {dim}] (its feature_dim) in eval mode; it must return the "
                    "same shape in both (check `if self.training` branches)"
                )
            stage = "head"
            model.head(pooled)
    except Exception as exc:
        return (
            f"{component(config, stage)} failed in training mode (it passed in eval mode): "
            f"{type(exc).__name__}: {first_line(exc)}"
        )
    return None


def first_step_failure(config: Config, exc: BaseException) -> str:
    """The message for a first training step that raised although features, backbone, head and
    augmentations passed their checks: what is left is the objective and its classifier."""
    return (
        f"the first training step failed in {component(config, 'objective')} (its loss or its "
        f"classifier; the network's output passed its checks): {type(exc).__name__}: {exc}"
    )


def check_batches(sampler: Any, n: int, config: Config, *, twice: bool = False) -> None:
    """A sampler's batches are lists of sample indices in [0, n); an epoch needs one batch of
    two or more. `twice`: also ask for the epoch's batches again, which must be the same (a
    resumed run repeats them: draw from `self.generator()`, not an unseeded shuffle)."""
    name = component(config, "sampler")
    batches = sampler.all_batches()
    if not isinstance(batches, (list, tuple)):
        raise ConfigError(
            f"{name}: all_batches() returned {_describe(batches)}; return a list of batches, "
            "each a list of sample indices."
        )
    for batch in batches:
        bad = _bad_indices(batch, n)
        if bad is not None:
            raise ConfigError(
                f"{name}: all_batches() gave a batch {bad}; a batch is a list of sample indices "
                f"in [0, {n}) ({n} training samples)."
            )
    if not any(len(b) >= 2 for b in batches):
        sizes = sorted({len(b) for b in batches})
        got = (
            f"{len(batches)} batch(es) of at most {sizes[-1]} sample(s)" if batches else "no batch"
        )
        raise ConfigError(
            f"{name} gave {got} this epoch ({n} training samples); a training step needs a "
            f"batch of at least 2 (train.batch_size = {config.train.batch_size})."
        )
    if twice and [list(map(int, b)) for b in sampler.all_batches()] != [
        list(map(int, b)) for b in batches
    ]:
        raise ConfigError(
            f"{name} gave other batches when asked twice for the same epoch; draw them from "
            "self.generator() (seeded by the run seed and the epoch) so a resumed run repeats "
            "them."
        )


def _bad_indices(batch: Any, n: int) -> str | None:
    """What is wrong with one batch, or None."""
    if isinstance(batch, Tensor):
        batch = batch.tolist()
    if not isinstance(batch, (list, tuple)):
        return f"that is {_describe(batch)}"
    for i in batch:
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            return f"holding {i!r} ({type(i).__name__})"
        if not 0 <= int(i) < n:
            return f"holding index {int(i)}"
    return None


@torch.no_grad()
def nonfinite_stage(
    model: Any, config: Config, x: Tensor, lengths: Tensor | None, labels: Tensor | None = None,
    augmenter: Any = None, objective: Any = None, classifier: Any = None,
) -> str | None:  # fmt: skip
    """Why a loss is not finite, when a component rather than the optimisation is to blame:
    the first stage (augmentation, features, backbone, head, objective) whose output holds NaN
    or inf from finite input while every weight is still finite. A BatchNorm statistic that is
    NaN while the weights are finite means a NaN input reached that layer in training mode."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return None  # the weights themselves diverged: an optimisation problem
    if augmenter is not None:
        bad = augmenter.first_nonfinite(x, lengths, labels, model.features)
        if bad:
            return bad
    with _eval_mode(model):  # stage by stage: a stage's statistics, then its output
        poisoned = _nonfinite_buffer(model, config, "features")
        if poisoned:
            return poisoned
        f, flen = model.features(x, lengths)
        if f.is_floating_point() and not torch.isfinite(f).all():
            return f"{component(config, 'features')} gave NaN or inf values from finite input"
        poisoned = _nonfinite_buffer(model, config, "backbone")
        if poisoned:
            return poisoned
        pooled = model.backbone(f, flen)
        if not torch.isfinite(pooled).all():
            return f"{component(config, 'backbone')} gave NaN or inf values from finite features"
        poisoned = _nonfinite_buffer(model, config, "head")
        if poisoned:
            return poisoned
        out = model.head(pooled)
        if isinstance(out, Tensor) and not torch.isfinite(out).all():
            return f"{component(config, 'head')} gave NaN or inf values"
        if objective is not None and labels is not None:
            loss = objective(out, labels, classifier)
            if isinstance(loss, Tensor) and not torch.isfinite(loss).all():
                return (
                    f"{component(config, 'objective')} gave a loss of {loss.item()} from finite "
                    "embeddings"
                )
    return None


def _nonfinite_buffer(model: Any, config: Config, section: str) -> str | None:
    """The component of `section` holding a NaN or inf buffer (BatchNorm running statistics)
    while every weight is finite: a NaN or inf input reached it in training mode. Asked stage
    by stage, after the stages before it gave finite outputs, so the poisoned statistics of a
    head are not blamed for a backbone that makes NaN."""
    part = getattr(model, section, None)
    for buf_name, buf in part.named_buffers() if part is not None else ():
        if buf.is_floating_point() and not torch.isfinite(buf).all():
            return (
                f"{component(config, section)} holds NaN or inf in '{buf_name}' (running "
                "statistics) while every weight is finite: a NaN or inf input reached it "
                "during training (from an augmentation, or the stage before it), or its "
                "activations overflowed because the learning rate is far too large (lower "
                f"train.lr, now {config.train.lr:g})"
            )
    return None


def refuse_nonfinite(out: Any, kept: Tensor, folder: Any, config: Config, epoch: int) -> None:
    """The current model's embeddings must be finite: one NaN embedding would make every score
    and the EER NaN. Names the files and the components that could be the cause."""
    rows = non_finite_rows(out)
    if rows:
        raise MetaembError(
            f"after epoch {epoch + 1} the model gives NaN or infinite embeddings for "
            f"{len(rows)} of {len(kept)} samples ({row_files(folder, kept, rows)}) under "
            f"'{folder.root}': its weights diverged (lower train.lr) or "
            f"{component(config, 'features')} or {component(config, 'backbone')} makes NaN "
            "from these inputs. Checkpoints of earlier epochs are kept."
        )
