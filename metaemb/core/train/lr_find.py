"""The learning-rate range test (Smith 2017; fastai's `lr_find`): train from the run's initial
weights for a few hundred steps while the learning rate grows exponentially from `start` to
`end`, record the loss, and suggest the LR where the smoothed loss falls fastest.

Nothing is written into any run folder and the training random streams are not consumed; the
model trained here is thrown away.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metaemb.core.config import Config
from metaemb.core.errors import MetaembError

MAX_END_LR = 100.0


@dataclass
class LRFind:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # raw per-step losses
    smoothed: list[float] = field(default_factory=list)  # bias-corrected EMA (β = 0.98)
    suggestion: float = float("nan")  # steepest descent of the smoothed loss
    min_loss_lr: float = float("nan")  # LR at the smallest smoothed loss
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def suggest(
    lrs: list[float], smoothed: list[float], skip_start: int = 5, skip_end: int = 3
) -> float:
    """The LR where d(smoothed loss)/d(log lr) is most negative (ends trimmed, as fastai)."""
    lo, hi = skip_start, max(skip_start + 2, len(lrs) - skip_end)
    x, y = np.log(np.asarray(lrs[lo:hi])), np.asarray(smoothed[lo:hi])
    if len(x) < 3:
        raise MetaembError("the LR sweep is too short to suggest a learning rate; raise --steps.")
    return float(np.exp(x[int(np.argmin(np.gradient(y, x)))]))


def lr_range_test(
    config: Config,
    steps: int = 200,
    start: float = 1e-6,
    end: float = 1.0,
    device: str = "auto",
    workers: int = 0,
    diverge: float = 4.0,
) -> LRFind:
    """Sweep the LR over `steps` optimizer steps of the configured training; stop once the
    smoothed loss exceeds `diverge` × its minimum (or is not finite)."""
    from metaemb.core.data.loaders import make_loader
    from metaemb.core.train.engine import NO_STEP, Trainer
    from metaemb.core.train.validation import isolated_rng

    if not 0 < start < end:
        raise MetaembError(f"the LR range needs 0 < start < end, got {start} … {end}.")
    if not end <= MAX_END_LR:  # inf, 1e300: the sweep diverged at once, "too short" blamed steps
        raise MetaembError(
            f"--end-lr {end}: a learning-rate sweep ends at most at {MAX_END_LR:g} (the usual "
            "range is 1e-7 … 10); beyond that the loss diverges in the first steps."
        )
    if steps < 10:
        raise MetaembError(f"--steps must be ≥ 10, got {steps}.")
    out = LRFind()
    with tempfile.TemporaryDirectory(prefix="metaemb-lrfind-") as tmp:
        trainer = Trainer(config, runs_root=Path(tmp), device=device, workers=workers)
        trainer.setup()
        base = trainer.config.train.lr
        ratios = [g["lr"] / base if base else 1.0 for g in trainer.optimizer.param_groups]
        gamma = (end / start) ** (1.0 / (steps - 1))
        avg, best, epoch = 0.0, math.inf, 0
        with isolated_rng(trainer.device):
            trainer.step_module.train()
            while len(out.lrs) < steps and not out.stopped_early:
                trainer.sampler.set_epoch(epoch)
                loader = make_loader(trainer.train_set, workers, batch_sampler=trainer.sampler)
                swept = len(out.lrs)
                for batch in loader:
                    if len(batch) < 2:
                        continue
                    lr = start * gamma ** len(out.lrs)
                    for g, r in zip(trainer.optimizer.param_groups, ratios, strict=True):
                        g["lr"] = lr * r
                    try:
                        loss = trainer.train_batch(batch)
                    except MetaembError:  # diverged: the sweep has gone far enough
                        out.stopped_early = True
                        break
                    avg = 0.98 * avg + 0.02 * loss
                    smooth = avg / (1 - 0.98 ** (len(out.lrs) + 1))
                    out.lrs.append(lr)
                    out.losses.append(loss)
                    out.smoothed.append(smooth)
                    best = min(best, smooth)
                    if not math.isfinite(smooth) or smooth > diverge * best:
                        out.stopped_early = True
                        break
                    if len(out.lrs) >= steps:
                        break
                if len(out.lrs) == swept and not out.stopped_early:  # a pass without one step
                    raise MetaembError(
                        NO_STEP.format(epoch=epoch + 1, batch=trainer.config.train.batch_size)
                    )
                epoch += 1
    out.suggestion = suggest(out.lrs, out.smoothed)
    out.min_loss_lr = float(out.lrs[int(np.argmin(out.smoothed))])
    return out


def lr_find_figure(result: LRFind) -> Any:
    """Smoothed loss against LR (log axis), raw losses faint, the suggestion marked."""
    from metaemb.core.eval import figures

    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.25, lw=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", label="smoothed loss")
    ax.axvline(result.suggestion, color="tab:red", ls="--",
               label=f"suggested lr {result.suggestion:.2g}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("learning-rate range test")
    return fig
