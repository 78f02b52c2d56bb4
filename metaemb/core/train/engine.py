"""The one train/evaluate engine: every modality, CPU or GPU, single process or torchrun/DDP.

A run is fully described by its resolved Config; its directory is keyed by the config hash. The
Trainer builds the components, then loops: train an epoch, validate (`Validator`), checkpoint
(`Checkpointer`: lock, atomic files, resume). Callbacks (core/train/callbacks.py) observe and
extend the loop. Only rank 0 writes files or prints.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from metaemb.core.config import Config
from metaemb.core.config.checks import check_component_options, check_values
from metaemb.core.config.resolution import check_positives
from metaemb.core.data.dataset import PreparedDataset
from metaemb.core.data.embed import extract, row_files
from metaemb.core.data.loaders import EpochLoader, check_workers
from metaemb.core.data.pipeline import Components, data_root
from metaemb.core.errors import ConfigError, MetaembError
from metaemb.core.files import atomic_write_text
from metaemb.core.locks import RunInProgress
from metaemb.core.plugin.components import build
from metaemb.core.runs import remove_unstarted_run, run_dir
from metaemb.core.train import shard, validation
from metaemb.core.train.callbacks import Callback, CallbackList
from metaemb.core.train.checkpointer import (
    BASELINE,
    Checkpointer,
    check_same_data,
    config_edited_warning,
    fingerprints,
    other_workers_warning,
    restore,
    training_state,
)
from metaemb.core.train.checks.batches import check_batches
from metaemb.core.train.checks.determinism import warn_if_not_deterministic
from metaemb.core.train.checks.first_batch import check_first_batch
from metaemb.core.train.checks.first_step import first_step_failure, train_mode_failure
from metaemb.core.train.checks.input_spec import check_input_spec
from metaemb.core.train.checks.nonfinite import nonfinite_stage, refuse_nonfinite
from metaemb.core.train.checks.objective import (
    ObjectiveWatch,
    check_loss,
    check_objective_parameters,
)
from metaemb.core.train.device import Distributed, pick_device
from metaemb.core.train.model import TrainStep
from metaemb.core.train.optim import build_optimizer, build_scheduler
from metaemb.core.train.random_state import host_rng_state, rank_rng_states, set_host_rng_state
from metaemb.core.train.summary import (
    describe_run,
    print_epoch,
    print_summary,
    rate_text,
    write_summary,
)
from metaemb.core.train.teacher import build_teacher

# Batches of one sample are passed over (batch normalisation cannot train on them); an epoch
# of only such batches would otherwise be recorded with a loss of 0.
NO_STEP = (
    "epoch {epoch} ran no training step: every batch held fewer than 2 samples "
    "(train.batch_size = {batch}, less the samples skipped as bad). Raise train.batch_size "
    "or add training samples."
)


@dataclass
class EpochResult:
    epoch: int
    loss: float
    seconds: float
    samples_per_s: float
    metrics: dict[str, float] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Trains one run. `run()` resumes from last.pt unless `fresh`; `callbacks` see every event."""

    def __init__(
        self,
        config: Config,
        runs_root: str | Path = "runs",
        device: str = "auto",
        fresh: bool = False,
        console: Console | None = None,
        workers: int | None = None,
        callbacks: Iterable[Callback] = (),
    ) -> None:
        check_values(config)  # a Config changed by hand in a notebook, before any folder is made
        check_component_options(config)
        if int(config.train.epochs) < 1:
            raise ConfigError(
                f"train.epochs must be at least 1, got {config.train.epochs}: nothing would be "
                "trained. Set train.epochs to the number of epochs to train (e.g. --set "
                "train.epochs=10)."
            )
        self.config = config
        self.dist = Distributed.from_env()
        self.device = pick_device(device)
        self.fresh = fresh
        self.console = console or Console(emoji=False)
        if not self.dist.main:
            self.console = Console(quiet=True)
        self.dir = run_dir(runs_root, config)
        self.workers = check_workers(config.data.workers if workers is None else workers)
        config.data.workers = self.workers  # config.toml records the count used (not hashed)
        self.callbacks = CallbackList(callbacks)
        self.checkpointer = Checkpointer(self.dir, config.hash(), main=self.dist.main)
        self.skipped: list[str] = []
        self.epoch = self.step = self.start_epoch = 0
        self.resumed = False
        self._stop = False
        self._checked = False  # the first batch went through the first-batch checks
        self.input_shape: list[int] | None = None  # one sample's input, when all are one size
        self._objective_watch: ObjectiveWatch | None = None

    def request_stop(self) -> None:
        """End the run after the current step (callbacks call this, e.g. an LR finder)."""
        self._stop = True

    # -- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Build data, model, objective, sampler, optimizer, scheduler, scorer and validation."""
        cfg = self.config
        check_positives(cfg)  # a training mistake: saved runs of it still load
        self.dist.init(self.device)
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)  # augmentations may draw from these too
        random.seed(cfg.train.seed)
        with validation.isolated_rng(self.device):  # a first-time demo-data build draws nothing
            root = data_root(cfg, self.console if self.dist.main else None)
        self.parts = Components.build(cfg, root)
        self.dist.refuse_differences(_what_this_rank_reads(cfg, self.parts.folder))
        self.train_folder, self.val_folder = validation.split(self.parts.folder, cfg)
        self.model = self.parts.model.to(self.device)
        check_input_spec(self.model.features, cfg)  # saved in every checkpoint
        warn_if_not_deterministic(self.parts, cfg)
        head_output = self.model.head.output
        self.objective = build("objectives", cfg.train.objective, cfg.options("objective"))
        needs = self.objective.needs
        if needs != "any" and needs != head_output:
            raise ConfigError(
                f"objective '{cfg.train.objective}' trains {needs} embeddings but head "
                f"'{cfg.model.head}' outputs {head_output} embeddings; choose a matching pair "
                "(e.g. model.head=gme with train.objective=gme-bxe)."
            )
        from metaemb.core.train.augment import build_augmenter

        self.augmenter = build_augmenter(
            cfg.train.augment, cfg.options("augment"), self.model.features
        )
        self.num_classes = self.train_folder.num_identities
        if self.augmenter is not None:  # e.g. speed perturbation makes new identities
            self.augmenter = self.augmenter.to(self.device)
            self.num_classes = self.augmenter.num_classes(self.num_classes)
        if self.dist.world_size > 1 and hasattr(self.objective, "distribute"):
            self.objective.distribute(self.dist.rank, self.dist.world_size)  # e.g. partial-fc
        self.classifier = self.objective.build_classifier(cfg.model.dim, self.num_classes)
        check_objective_parameters(self.objective, self.classifier, cfg)
        if self.classifier is not None:
            self.classifier = self.classifier.to(self.device)
        self.fingerprints = fingerprints(self.parts.folder, self.train_folder, self.num_classes)
        classes = self.fingerprints["class_fingerprint"]
        teacher = build_teacher(cfg, self.objective, self.device, classes)
        self.step_module: nn.Module = TrainStep(
            self.model, self.classifier, self.objective, teacher, self.augmenter
        )
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            shard.ignore_sharded(self.step_module)  # per-rank class centres are not replicas
            self.step_module = nn.parallel.DistributedDataParallel(self.step_module, device_ids=ids)
        self.sampler = build(
            "samplers",
            cfg.train.sampler,
            cfg.options("sampler"),
            labels=self.train_folder.labels,
            batch_size=cfg.train.batch_size,
            seed=cfg.train.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.train_set = self.parts.dataset(self.train_folder, train=True)
        self.train_loader = EpochLoader(
            self.train_set,
            self.workers,
            self.sampler,
            seed=cfg.train.seed,
            rank=self.dist.rank,
            pin_memory=self.device.type == "cuda",
        )
        # a plugin's sampler is checked before anything asks it for its length
        check_batches(self.sampler, len(self.train_folder), cfg, twice=True)
        self.steps_per_epoch = max(1, len(self.sampler))
        self.optimizer = build_optimizer(self.model, self.classifier, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, self.steps_per_epoch)
        self.scorer = build("scorers", cfg.eval.scorer, cfg.options("scorer"))
        if self.scorer.requires_fit:  # fails now, not after the first epoch's training
            self.scorer.check_fit_data(torch.tensor(self.train_folder.labels))
        self.validator = validation.Validator(
            cfg, self.parts, self.train_folder, self.val_folder, self.scorer, self.embed
        )
        self.amp = cfg.train.amp and self.device.type == "cuda"
        if cfg.train.channels_last and self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            self.model.backbone = torch.compile(self.model.backbone)
        self.callbacks.on_setup(self)

    # -- state (what last.pt / best.pt hold: core/train/checkpointer.py) --------------------
    def training_state(self, epoch: int, step: int, best: float, history: list[dict]) -> dict:
        """Everything a resume needs, as written to last.pt / best.pt."""
        return training_state(self, epoch, step, best, history)

    def restore(self, state: dict[str, Any]) -> None:
        """Load a training state written by `training_state`."""
        restore(self, state)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train (or resume) to train.epochs while holding the run directory's lock. The
        process's random streams (torch, numpy, random), which training seeds with
        train.seed, are the caller's again afterwards: a notebook's next draws do not follow
        the run's seed."""
        callers = host_rng_state()
        new_folder = not self.dir.exists()
        try:
            with self.checkpointer.locked(), torch.random.fork_rng(devices=self._rng_devices()):
                try:
                    return self._run()
                finally:
                    if hasattr(self, "train_loader"):
                        self.train_loader.close()  # persistent workers
                    set_host_rng_state(callers)
        except MetaembError as exc:
            if new_folder and self.dist.main and not isinstance(exc, RunInProgress):
                remove_unstarted_run(self.dir)  # a mistake before any epoch leaves no folder
            raise

    def _rng_devices(self) -> list[int]:
        """The CUDA device whose random stream training draws from, for fork_rng."""
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _warn(self, message: str | None) -> None:
        if message:
            self.console.print(f"[yellow]warning:[/] {escape(message)}")

    def _run(self) -> dict[str, Any]:
        cfg = self.config
        from metaemb.core.train.warmstart import refuse_unmixed_rehearsal

        refuse_unmixed_rehearsal(cfg)  # training, not a sweep (lr-find) of the new data
        self.setup()
        self.checkpointer.prepare(self.fresh)
        self.dist.barrier()  # every rank reads last.pt only once rank 0 prepared the folder
        finished = self.checkpointer.finished_without_last(cfg.train.epochs)
        if finished is not None:  # its last.pt removed to save space: nothing to resume
            self.console.print(
                f"[bold]Run {escape(str(self.dir))} is complete[/] ({cfg.train.epochs}/"
                f"{cfg.train.epochs} epochs; its last.pt was removed, best.pt is kept); use "
                "--fresh to train it again."
            )
            return self._summary(finished, complete=True)
        state = self.checkpointer.resume()
        # every rank resumes from the same epoch, or none trains (--runs not on storage all
        # nodes see: a node's stale last.pt paired its steps with other epochs')
        resumed_at = f"epoch {state['epoch']}" if state is not None else "no checkpoint (a new run)"
        self.dist.refuse_differences({"as its resume point": resumed_at}, f" in '{self.dir}'")
        if state is not None:
            check_same_data(self, state)  # before config.toml: a refused run keeps its own
        complete = state is not None and state["epoch"] >= cfg.train.epochs
        if self.dist.main:  # a finished run's record is rewritten only when edited by hand
            edited = config_edited_warning(self.dir / "config.toml", cfg)
            if edited or not complete:  # (a finished run is otherwise left as it is)
                self._warn(edited)
                atomic_write_text(self.dir / "config.toml", cfg.to_toml())
        self.dist.barrier()
        best, history = math.inf, []
        if state is not None:
            self.restore(state)
            self.start_epoch, self.step, best = state["epoch"], state["step"], state["best"]
            if self.dist.main:
                self._warn(other_workers_warning(self.dir, state, self.workers))
            history = list(state.get("history", []))
            self.skipped = self.checkpointer.skipped()
            self.resumed = True
            if self.start_epoch >= cfg.train.epochs:
                self.console.print(
                    f"[bold]Run {escape(str(self.dir))} is complete[/] "
                    f"({self.start_epoch}/{cfg.train.epochs} "
                    "epochs); use --fresh to train it again."
                )
                return self._summary(history, complete=True)
            self.console.print(
                f"Resuming {self.dir} from epoch {self.start_epoch}/{cfg.train.epochs}.",
                markup=False,
            )
            self._realign_schedule(state)
            if self.start_epoch > 0 and self.sampler.updates_from_embeddings:
                self._update_sampler()  # its mined batches are not part of the checkpoint
        else:
            self._describe()
            if cfg.train.init_head_from_plda:
                self._init_head_from_features()
        baseline = self._baseline()
        self.callbacks.on_train_start(self)
        for epoch in range(self.start_epoch, cfg.train.epochs):
            self.epoch = epoch
            self.callbacks.on_epoch_start(self, epoch)
            result = self.train_epoch(epoch)
            if self._stop:
                break
            record: dict[str, Any] = {}
            whole = shard.gather_states(self.classifier, self.optimizer)  # every rank takes part
            whole["rng_by_rank"] = rank_rng_states(self.dist.world_size)  # so does this
            if self.dist.main:
                result.metrics = self.validator.validate()
                record = self._record(result)
                history.append(record)
                metric = result.metrics.get(cfg.select_key(), math.inf)
                improved = metric < best
                best = min(best, metric)
                state = {**self.training_state(epoch + 1, self.step, best, history), **whole}
                self.checkpointer.save(record, state, improved)
                self._print_epoch(record, improved)
                for warning in self.objective.end_epoch():
                    self.console.print(f"[yellow]warning:[/] {warning}")
            self.dist.barrier()
            self.callbacks.on_epoch_end(self, epoch, record)
            if self._stop:
                break
            if self.sampler.updates_from_embeddings:
                self._update_sampler()
        summary = self._summary(history, baseline)
        self.callbacks.on_train_end(self, summary)
        return summary

    def _realign_schedule(self, state: dict[str, Any]) -> None:
        """A run resumed on another number of ranks (or with another batch count) takes
        another number of steps per epoch; the schedule, which counts steps, would go on from
        the old count (the learning rate jumping back up and never annealing). It continues
        from the same epoch instead, and the change of global batch is said."""
        before = int(state.get("steps_per_epoch") or 0)
        if not before and self.start_epoch > 0 and self.step % self.start_epoch == 0:
            before = self.step // self.start_epoch  # a checkpoint from before it was kept
        if not before or before == self.steps_per_epoch:
            return
        self.step = self.start_epoch * self.steps_per_epoch
        # One scheduler step onto the new count sets every group's learning rate (and the
        # one-cycle momentum) as the schedule gives them there.
        self.scheduler.last_epoch = self.step - 1
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended
            warnings.simplefilter("ignore")
            self.scheduler.step()
        ranks = state.get("world_size")
        now = self.dist.world_size
        moved = f" on {now} rank(s) instead of {ranks}" if ranks and ranks != now else ""
        batch = self.config.train.batch_size * now
        self._warn(
            f"this run resumes{moved} with {self.steps_per_epoch} steps per epoch where it had "
            f"{before}: the global batch is now {batch} samples, and the learning-rate "
            f"schedule continues from epoch {self.start_epoch} (step {self.step})."
        )

    def train_epoch(self, epoch: int) -> EpochResult:
        """One pass over the training batches of `epoch` (0-based)."""
        cfg = self.config.train
        self.sampler.set_epoch(epoch)
        check_batches(self.sampler, len(self.train_set), self.config)
        self.objective.set_epoch(epoch)
        if self._objective_watch is None:  # the state it keeps on itself, from the first epoch
            self._objective_watch = ObjectiveWatch(self.objective, self.classifier, self.config)
        else:
            self._objective_watch.new_epoch()
        self.step_module.train()
        frozen = epoch < cfg.freeze_trunk_epochs
        trunk = self.model.backbone.trunk()
        trunk.requires_grad_(not frozen)
        if frozen:
            trunk.eval()
        loader = self.train_loader(epoch)  # workers persist across epochs, reseeded per epoch
        total_loss, n_samples, n_batches = 0.0, 0, 0
        stats: dict[str, float] = {}
        t0 = time.perf_counter()
        with self._progress() as progress:
            task = progress.add_task(
                f"epoch {epoch + 1}/{cfg.epochs}",
                total=self.steps_per_epoch,
                loss="–",  # no step yet ("nan" read as a diverged loss)
                rate="– samples/s",
            )
            for batch in loader:
                self._note_bad(batch.bad)
                if len(batch) < 2:
                    continue
                loss = self.train_batch(batch)
                total_loss += loss * len(batch)
                n_samples += len(batch)
                n_batches += 1
                for k, v in self.objective.stats.items():
                    stats[k] = stats.get(k, 0.0) + float(v)
                elapsed = time.perf_counter() - t0
                progress.update(
                    task,
                    advance=1,
                    loss=f"{total_loss / n_samples:.4f}",
                    rate=rate_text(n_samples / max(elapsed, 1e-9)),
                )
                self.callbacks.on_step(self, self.step, loss)
                if self._stop:
                    break
        if n_batches == 0 and not self._stop:
            raise MetaembError(self._no_step(epoch))
        seconds = time.perf_counter() - t0
        return EpochResult(
            epoch + 1,
            total_loss / max(n_samples, 1),
            seconds,
            n_samples / max(seconds, 1e-9),
            stats={k: v / max(n_batches, 1) for k, v in stats.items()},
        )

    def train_batch(self, batch: Any) -> float:
        """Forward, backward and one optimizer + scheduler step on a collated batch → its loss."""
        cfg = self.config.train
        x = batch.inputs.to(self.device, non_blocking=True)
        if cfg.channels_last and x.dim() == 4 and self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        lengths = batch.lengths.to(self.device) if batch.lengths is not None else None
        labels = batch.labels.to(self.device)
        first = not self._checked
        if first:  # a plugin's mistake is named by component, once per process
            scorer = None if self.scorer.requires_fit else self.scorer  # fitted: at validation
            check_first_batch(self.model, self.config, x, lengths, scorer)
            self._checked = True
            if lengths is None and isinstance(x, torch.Tensor):  # export compares its examples
                self.input_shape = [int(d) for d in x.shape[1:]]
        if self._objective_watch is not None:
            self._objective_watch.before_step()
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = self.step_module(x, lengths, labels)
        except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
            if not first or isinstance(exc, torch.OutOfMemoryError):  # memory: not a plugin's
                raise
            network = train_mode_failure(self.model, self.config, x, lengths)
            if network:
                raise ConfigError(f"the first training step failed: {network}.") from exc
            raise ConfigError(first_step_failure(self.config, exc)) from exc
        check_loss(loss, self.config)
        if self._objective_watch is not None:
            self._objective_watch.after_step()
        if not torch.isfinite(loss):
            stage = nonfinite_stage(
                self.model, self.config, x, lengths, labels,
                self.augmenter, self.objective, self.classifier,
            )  # fmt: skip
            if stage is not None:
                raise MetaembError(
                    f"training stopped at epoch {self.epoch + 1}: {stage} (samples "
                    f"{row_files(self.train_set.folder, batch.indices, list(range(len(batch))))})."
                )
            raise MetaembError(
                f"training diverged at epoch {self.epoch + 1} (loss {loss.item()}); lower "
                f"train.lr (now {cfg.lr}) or raise train.warmup_epochs."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            shard.clip_grad_norm(self.step_module, cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return float(loss.item())

    def _record(self, result: EpochResult) -> dict[str, Any]:
        return {
            "epoch": result.epoch,
            "loss": result.loss,
            "seconds": round(result.seconds, 2),
            "samples_per_s": round(result.samples_per_s, 3),
            "lr": self.optimizer.param_groups[0]["lr"],
            **result.metrics,
            **{f"train_{k}": v for k, v in result.stats.items()},
        }

    def _no_step(self, epoch: int) -> str:
        """Why an epoch ran no step: batches of one sample, or, over several ranks, fewer
        batches than ranks (each rank takes whole batches of its own)."""
        batch, ranks, n = self.config.train.batch_size, self.dist.world_size, len(self.train_folder)
        if ranks > 1 and ranks * batch > n:
            return (
                f"epoch {epoch + 1} ran no training step: {ranks} ranks × train.batch_size "
                f"{batch} (per rank) = a global batch of {ranks * batch}, more than the {n} "
                f"training samples, so no rank got a whole batch. Lower train.batch_size to at "
                f"most {n // ranks}, or train on fewer ranks."
            )
        return NO_STEP.format(epoch=epoch + 1, batch=batch)

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=not self.dist.main,
        )

    # -- embeddings of the current model -------------------------------------------------
    def embed(self, dataset: PreparedDataset) -> tuple[Any, torch.Tensor]:
        """Embeddings (eval mode) of the samples that could be read, and their indices."""
        self.model.eval()
        out, kept, bad = self._extract(self.model, dataset)
        self._note_bad(bad)
        refuse_nonfinite(out, kept, dataset.folder, self.config, self.epoch)
        return out, kept

    def _extract(self, fn: Any, dataset: PreparedDataset) -> Any:
        """In float32 even under `train.amp`: the validation EER that picks best.pt must be the
        number `evaluate`, `embed` and an export reproduce, and bf16 rounding moves it."""
        return extract(
            fn, dataset, self.device, batch_size=self.config.eval.batch_size, workers=self.workers
        )

    def _baseline(self) -> dict[str, float]:
        """The no-learning baseline EER on the validation trials (cached in the run dir)."""
        path = self.dir / BASELINE
        if not self.dist.main and not path.exists():
            return {}
        return self.validator.baseline(path, self._extract, self.device)

    def _init_head_from_features(self) -> None:
        """The original meta-embedding recipe: start the head from training-set features
        (for the GME head: a PLDA of them), when the head declares it can."""
        head = self.model.head
        problem = head.feature_init_problem()
        if problem:
            raise ConfigError(f"train.init_head_from_plda: {problem}")
        self.console.print("initialising the head from a PLDA fitted on training features …")
        self.model.eval()
        feats, kept, bad = self._extract(
            self.model.pooled, self.parts.dataset(self.train_folder, train=False)
        )
        self._note_bad(bad)
        head.init_from_features(feats.to(self.device), torch.tensor(self.train_folder.labels)[kept])

    def _update_sampler(self) -> None:
        emb, kept = self.embed(self.parts.dataset(self.train_folder, train=False))
        self.sampler.update(emb, indices=kept)

    def _note_bad(self, bad: list[Any]) -> None:
        if not bad or not self.dist.main:
            return
        new = [f"{b.path}\t{b.error}" for b in bad if f"{b.path}\t{b.error}" not in self.skipped]
        if new:
            self.skipped.extend(new)
            self.checkpointer.write_skipped(self.skipped)

    # -- printing ------------------------------------------------------------------------
    def _describe(self) -> None:
        describe_run(self.console, self.config, self.dir, self.parts.root, self.train_folder,
                     self.val_folder, len(self.validator.trials), self.device,
                     self.dist.world_size)  # fmt: skip

    def _print_epoch(self, record: dict[str, Any], improved: bool) -> None:
        print_epoch(self.console, self.config, record, improved)

    def _summary(
        self, history: list[dict], baseline: dict | None = None, complete: bool = False
    ) -> dict[str, Any]:
        """Print (and, after training, write README.md) the run's summary; `complete`: the run
        was finished before this call, whose folder is then left untouched."""
        from metaemb.core.files import read_json

        baseline = baseline or read_json(self.dir / BASELINE)
        if self.dist.main and history:
            print_summary(self.console, self.config, history, baseline, self.skipped,
                          len(self.parts.folder.samples))  # fmt: skip
            if not complete:
                write_summary(self.dir / "README.md", self.config, history, baseline)
        key = self.config.select_key()
        return {
            "run_dir": str(self.dir),
            "complete_before": complete,
            "epochs": len(history),
            "final": history[-1] if history else {},
            "best": min(history, key=lambda r: r.get(key, math.inf)) if history else {},
            "baseline": baseline,
            "skipped": len(self.skipped),
        }


def _what_this_rank_reads(cfg: Config, folder: Any) -> dict[str, str]:
    """The configuration and the data listing, as each rank compares them with rank 0's."""
    import hashlib

    listing = hashlib.sha1()
    for sample in folder.samples:
        listing.update(f"{sample.path}\0{sample.identity}\n".encode("utf-8", "surrogateescape"))
    data = (f"{len(folder.samples)} samples of {len(folder.identities)} identities (listing "
            f"{listing.hexdigest()[:12]})")  # fmt: skip
    seen = {"configuration": f"hash {cfg.hash()}", "data": data}
    # the folder first, as typed (what the hash covers), so a node mounting the data elsewhere
    # is told that; a relative --data resolves under each node's own working folder, which may
    # differ (node-local copies) while the listing agrees. Every rank sends the same keys.
    typed = f"'{cfg.data.root}'" if cfg.data.root else "(none given: the built-in demo data)"
    seen = {"the data folder": typed, **seen}
    return seen
