"""When a loss or the embeddings turn NaN or infinite: name the stage that made the first NaN
(an augmentation, a component, its poisoned running statistics) or the files, rather than
leave a NaN loss or EER unexplained."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metaemb.core.config import Config
from metaemb.core.data.embed import non_finite_rows, row_files
from metaemb.core.errors import MetaembError
from metaemb.core.train.checks.eval_mode import eval_mode
from metaemb.core.train.checks.naming import component


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
    with eval_mode(model):  # stage by stage: a stage's statistics, then its output
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
