"""Engine callbacks: the public way to watch or extend a training run without touching the engine.

A callback subclasses `Callback` and overrides the events it needs; `Trainer(callbacks=[...])`
calls them in order on every rank (check `trainer.dist.main` before writing files). Each event gets
the Trainer, whose public attributes (`config`, `dir`, `model`, `classifier`, `optimizer`,
`scheduler`, `objective`, `sampler`, `device`, `dist`, `epoch`, `step`, `start_epoch`,
`resumed`) are the state to read. `trainer.request_stop()` ends the run after the current step
(the last completed epoch stays checkpointed, so re-running the command resumes from it); under
DDP every rank must request it at the same step. A run found complete at start returns before
`on_train_start`, so only `on_setup` is called.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metaemb.core.train.engine import Trainer


class Callback:
    """Override any of these; the defaults do nothing."""

    def on_setup(self, trainer: Trainer) -> None:
        """Every component is built (model, optimizer, scheduler, sampler, validation trials);
        no checkpoint is restored yet and nothing was trained."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first epoch of this invocation: after a resume (`trainer.resumed`,
        `trainer.start_epoch`) or after the fresh-start initialisation (e.g. of the head)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before epoch `epoch` (0-based) trains."""

    def on_step(self, trainer: Trainer, step: int, loss: float) -> None:
        """After optimizer and scheduler stepped; `step` counts steps since the run began (1 is
        the first) and `loss` is this batch's training loss."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """After epoch `epoch` (0-based) was validated and checkpointed. `record` is the line
        appended to metrics.jsonl (on rank 0; empty on other ranks)."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """After the last epoch (or a requested stop), with the summary `Trainer.run` returns."""


class CallbackList(Callback):
    """Calls each callback in order (what the engine holds)."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_setup(self, trainer: Trainer) -> None:
        for cb in self.callbacks:
            cb.on_setup(trainer)

    def on_train_start(self, trainer: Trainer) -> None:
        for cb in self.callbacks:
            cb.on_train_start(trainer)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        for cb in self.callbacks:
            cb.on_epoch_start(trainer, epoch)

    def on_step(self, trainer: Trainer, step: int, loss: float) -> None:
        for cb in self.callbacks:
            cb.on_step(trainer, step, loss)

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(trainer, epoch, record)

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_train_end(trainer, summary)
