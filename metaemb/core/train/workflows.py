"""Engine callbacks a config asks for: warm start / continual learning (`train.init_from`,
core/train/warmstart.py), snapshots every N epochs (`train.snapshot_every`) and TensorBoard
logging (`train.tensorboard`, the tensorboard extra; nothing is imported when it is off)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from metaemb.core.config import Config
from metaemb.core.errors import MetaembError
from metaemb.core.train.callbacks import Callback
from metaemb.core.train.validation import isolated_rng


def config_callbacks(config: Config) -> list[Callback]:
    """The callbacks `config` asks for, in the order they must run."""
    t = config.train
    out: list[Callback] = []
    if t.init_from:
        from metaemb.core.train.warmstart import Forgetting, InitFrom

        out.append(InitFrom(t.init_from, t.init_parts, t.init_distill))
        out.append(Forgetting(t.init_from))
    elif t.init_distill or t.rehearsal:
        raise MetaembError(
            "train.init_distill and train.rehearsal continue from a previous model: set "
            "train.init_from=RUN_DIR_OR_CHECKPOINT too."
        )
    if t.snapshot_every < 0:
        raise MetaembError(f"train.snapshot_every must be ≥ 0, got {t.snapshot_every}.")
    if t.snapshot_every:
        out.append(Snapshots(t.snapshot_every))
    if t.tensorboard:
        out.append(TensorBoard())
    return out


class Snapshots(Callback):
    """Keep a copy of the checkpoint every `every` epochs: RUN/snapshot-epochNNN.pt."""

    def __init__(self, every: int) -> None:
        self.every = int(every)

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        if not trainer.dist.main or (epoch + 1) % self.every:
            return
        from metaemb.core.files import atomic_write_bytes

        last = trainer.dir / "last.pt"
        if last.is_file():
            atomic_write_bytes(trainer.dir / f"snapshot-epoch{epoch + 1:03d}.pt", last.read_bytes())


def summary_writer(log_dir: Path) -> Any:
    """torch's TensorBoard SummaryWriter, or a one-line install hint."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MetaembError(
            "train.tensorboard needs TensorBoard: pip install 'metaemb[tensorboard]'."
        ) from None
    return SummaryWriter(log_dir=str(log_dir))


class TensorBoard(Callback):
    """Per step: loss, learning rate of each optimizer group, throughput (samples/s). Per epoch:
    every validation metric, epoch loss/throughput and the DET curve (a picture, with matplotlib).
    At the end: up to `projector_samples` validation embeddings with identities for the
    projector. Everything goes to RUN/tensorboard (`tensorboard --logdir runs`)."""

    def __init__(self, projector_samples: int = 500) -> None:
        self.projector_samples = projector_samples
        self.writer: Any = None
        self._t = 0.0

    def on_setup(self, trainer: Any) -> None:
        if trainer.dist.main:
            self.writer = summary_writer(trainer.dir / "tensorboard")

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self._t = time.perf_counter()

    def on_step(self, trainer: Any, step: int, loss: float) -> None:
        if self.writer is None:
            return
        now = time.perf_counter()
        self.writer.add_scalar("train/loss", loss, step)
        for g in trainer.optimizer.param_groups:
            self.writer.add_scalar(f"lr/{g.get('name', 'group')}", g["lr"], step)
        if self._t:
            rate = trainer.config.train.batch_size / max(now - self._t, 1e-9)
            self.writer.add_scalar("train/samples_per_s", rate, step)
        self._t = now

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                group = "train" if key in ("loss", "seconds", "samples_per_s", "lr") else "val"
                self.writer.add_scalar(f"{group}_epoch/{key}", value, epoch + 1)
        picture = det_picture(trainer)
        if picture is not None:
            self.writer.add_image("val/det", picture, epoch + 1, dataformats="HWC")
        self.writer.flush()

    def on_train_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        v = trainer.validator
        n = min(self.projector_samples, len(v.val_folder))
        ds = trainer.parts.dataset(v.val_folder, train=False)
        ds.indices = list(range(n))
        with isolated_rng(trainer.device):  # a resumed run must not see other random numbers
            emb, kept = trainer.embed(ds)
        if isinstance(emb, torch.Tensor):
            names = [v.val_folder.samples[int(i)].identity for i in kept]
            self.writer.add_embedding(
                emb, metadata=names, tag="validation", global_step=trainer.step
            )
        self.writer.close()
        self.writer = None


def det_picture(trainer: Any) -> Any:
    """The validation DET curve of the current model as an RGB array, or None (no matplotlib,
    or samples were skipped)."""
    from metaemb.core.eval import figures, report
    from metaemb.core.train import validation

    v = trainer.validator
    with isolated_rng(trainer.device):  # after the checkpoint: must not shift the training RNG
        emb, kept = trainer.embed(v.val_set)
    if len(kept) != len(v.val_folder):
        return None
    scores = validation.score_indexed_trials(v.scorer, emb, v.trials)
    labels = v.trials.labels
    tar, non = scores[labels == 1].double().numpy(), scores[labels == 0].double().numpy()
    rep = validation.report(scores, labels, trainer.config.eval.p_targets)
    try:
        import tempfile

        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            path = report.det_plot(Path(tmp) / "det.png", tar, non, rep)
            with Image.open(path) as im:
                import numpy as np

                return np.asarray(im.convert("RGB")).copy()
    except figures.PlotsUnavailable:
        return None
    except (OSError, ValueError):  # a figure that cannot be drawn is not worth a failed run
        return None
