"""The one train/evaluate engine: every modality, CPU or GPU, single process or torchrun/DDP.

A run is fully described by its resolved Config; its directory is keyed by the config hash. The
engine resumes from last.pt, validates on held-out identities each epoch, keeps best.pt by the
chosen metric, and writes metrics.jsonl and a summary. Only rank 0 writes files or prints.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from metaemb.core.config import Config
from metaemb.core.data.dataset import PreparedDataset, make_loader
from metaemb.core.data.embed import extract
from metaemb.core.data.pipeline import Components, data_root
from metaemb.core.errors import ConfigError, MetaembError
from metaemb.core.eval.trials import make_trials
from metaemb.core.plugin.components import build
from metaemb.core.runs import (
    append_jsonl,
    atomic_write_text,
    load_checkpoint,
    read_json,
    run_dir,
    save_checkpoint,
    trim_jsonl,
)
from metaemb.core.train import validation
from metaemb.core.train.device import Distributed, pick_device
from metaemb.core.train.model import Teacher, TrainStep
from metaemb.core.train.optim import build_optimizer, build_scheduler


@dataclass
class EpochResult:
    epoch: int
    loss: float
    seconds: float
    samples_per_s: float
    metrics: dict[str, float] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
class Trainer:
    """Trains one run. `run()` resumes from last.pt unless `fresh`."""

    def __init__(
        self,
        config: Config,
        runs_root: str | Path = "runs",
        device: str = "auto",
        fresh: bool = False,
        console: Console | None = None,
        workers: int | None = None,
    ) -> None:
        self.config = config
        self.dist = Distributed.from_env()
        self.device = pick_device(device)
        self.fresh = fresh
        self.console = console or Console()
        if not self.dist.main:
            self.console = Console(quiet=True)
        self.dir = run_dir(runs_root, config)
        self.workers = config.data.workers if workers is None else workers
        self.skipped: list[str] = []

    # -- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        self.dist.init(self.device)
        torch.manual_seed(cfg.train.seed)
        root = data_root(cfg, self.console if self.dist.main else None)
        self.parts = Components.build(cfg, root)
        self.train_folder, self.val_folder = self.parts.folder.split(
            cfg.data.val_fraction, seed=cfg.train.seed
        )
        self.model = self.parts.model.to(self.device)
        head_output = getattr(self.model.head, "output", "point")
        self.objective = build("objectives", cfg.train.objective, cfg.options("objective"))
        needs = getattr(self.objective, "needs", "point")
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
        self.classifier = self.objective.build_classifier(cfg.model.dim, self.num_classes)
        if self.classifier is not None:
            self.classifier = self.classifier.to(self.device)
        teacher = self._teacher()
        self.step_module: nn.Module = TrainStep(
            self.model, self.classifier, self.objective, teacher, self.augmenter
        )
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
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
        self.steps_per_epoch = max(1, len(self.sampler))
        self.optimizer = build_optimizer(self.model, self.classifier, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, self.steps_per_epoch)
        self.scorer = build("scorers", cfg.eval.scorer, cfg.options("scorer"))
        self._validation_trials()
        self.amp = cfg.train.amp and self.device.type == "cuda"
        if cfg.train.channels_last and self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            self.model.backbone = torch.compile(self.model.backbone)

    def _teacher(self) -> Teacher | None:
        """The frozen teacher of `train.teacher` (objective distill), on the training device."""
        cfg = self.config
        wants = hasattr(self.objective, "teacher_outputs")
        if not cfg.train.teacher:
            if wants:
                raise ConfigError(
                    f"objective '{cfg.train.objective}' distils from a teacher: set "
                    "train.teacher=RUN_DIR_OR_CHECKPOINT (or use `metaemb distill --teacher`)."
                )
            return None
        if not wants:
            raise ConfigError(
                f"train.teacher is set but objective '{cfg.train.objective}' does not use a "
                "teacher; use train.objective=distill."
            )
        from metaemb.core.eval.evaluate import Loaded

        loaded = Loaded.from_path(Path(cfg.train.teacher), Path(self.parts.root), str(self.device))
        tcfg = loaded.config
        if (tcfg.model.features, tcfg.options("features")) != (
            cfg.model.features,
            cfg.options("features"),
        ):
            raise ConfigError(
                f"teacher '{cfg.train.teacher}' was trained on features '{tcfg.model.features}' "
                f"{tcfg.options('features')}; the student uses '{cfg.model.features}' "
                f"{cfg.options('features')}. Distillation needs the same input pipeline."
            )
        classifier = None
        if loaded.state.get("classifier"):
            obj = build("objectives", tcfg.train.objective, tcfg.options("objective"))
            classifier = obj.build_classifier(tcfg.model.dim, loaded.state["num_classes"])
            if classifier is not None:
                classifier.load_state_dict(loaded.state["classifier"])
                classifier = classifier.to(self.device)
        return Teacher(loaded.parts.model, classifier).to(self.device)

    def _validation_trials(self) -> None:
        cfg = self.config
        trials = make_trials(
            self.val_folder,
            n_target=cfg.eval.max_targets,
            n_nontarget=cfg.eval.nontargets,
            seed=cfg.train.seed,
        )
        self.val_set = self.parts.dataset(self.val_folder, train=False)
        paths = [s.path for s in self.val_folder.samples]
        self.val_trials = validation.index_trials(trials, paths)

    # -- checkpoints ---------------------------------------------------------------------
    def _state(self, epoch: int, step: int, best: float, history: list[dict]) -> dict[str, Any]:
        cfg = self.config
        return {
            "model": self.model.state_dict(),
            "classifier": self.classifier.state_dict() if self.classifier is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scorer": self.scorer.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "epoch": epoch,
            "step": step,
            "best": best,
            "history": history,
            "config": cfg.to_dict(),
            "config_hash": cfg.hash(),
            "components": {
                "sample_folder": cfg.data.folder,
                "frontend": cfg.model.frontend,
                "features": cfg.model.features,
                "backbone": cfg.model.backbone,
                "head": cfg.model.head,
                "objective": cfg.train.objective,
                "scorer": cfg.eval.scorer,
            },
            "input_spec": self.model.features.input_spec(),
            "num_classes": self.num_classes,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.classifier is not None:
            self.classifier.load_state_dict(state["classifier"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scorer.load_state_dict(state.get("scorer", {}))
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.config
        self.setup()
        last = self.dir / "last.pt"
        start_epoch, step, best, history = 0, 0, math.inf, []
        if self.dist.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.fresh:
                for name in ("last.pt", "best.pt", "metrics.jsonl", "skipped.txt"):
                    (self.dir / name).unlink(missing_ok=True)
            atomic_write_text(self.dir / "config.toml", cfg.to_toml())
        self.dist.barrier()
        if last.exists() and not self.fresh:
            state = load_checkpoint(last, expect_hash=cfg.hash())
            self._restore(state)
            start_epoch, step, best = state["epoch"], state["step"], state["best"]
            history = list(state.get("history", []))
            if self.dist.main:
                self._trim_metrics(start_epoch)
            if start_epoch >= cfg.train.epochs:
                self.console.print(
                    f"[bold]Run {self.dir} is complete[/] ({start_epoch}/{cfg.train.epochs} epochs); "
                    "use --fresh to train it again."
                )
                return self._summary(history, complete=True)
            self.console.print(f"Resuming {self.dir} from epoch {start_epoch}/{cfg.train.epochs}.")
        else:
            self._describe()
            if cfg.train.init_head_from_plda:
                self._init_head_from_plda()
        baseline = self._baseline()
        for epoch in range(start_epoch, cfg.train.epochs):
            result = self._train_epoch(epoch, step)
            step += self.steps_per_epoch
            if self.dist.main:
                result.metrics = self._validate()
                record = {
                    "epoch": epoch + 1,
                    "loss": result.loss,
                    "seconds": round(result.seconds, 2),
                    "samples_per_s": round(result.samples_per_s, 1),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    **result.metrics,
                    **{f"train_{k}": v for k, v in result.stats.items()},
                }
                history.append(record)
                metric = result.metrics.get(cfg.select_key(), math.inf)
                improved = metric < best
                best = min(best, metric)
                append_jsonl(self.dir / "metrics.jsonl", record)
                state = self._state(epoch + 1, step, best, history)
                save_checkpoint(last, state)
                if improved:
                    save_checkpoint(self.dir / "best.pt", state)
                self._print_epoch(record, improved, baseline)
                for warning in self.objective.end_epoch():
                    self.console.print(f"[yellow]warning:[/] {warning}")
            self.dist.barrier()
            if hasattr(self.sampler, "update"):
                self._update_sampler()
        return self._summary(history, complete=True, baseline=baseline)

    def _train_epoch(self, epoch: int, step: int) -> EpochResult:
        cfg = self.config.train
        self.sampler.set_epoch(epoch)
        self.objective.set_epoch(epoch)
        self.step_module.train()
        frozen = epoch < cfg.freeze_trunk_epochs
        trunk = self.model.backbone.trunk()
        trunk.requires_grad_(not frozen)
        if frozen:
            trunk.eval()
        loader = make_loader(
            self.train_set,
            self.workers,
            batch_sampler=self.sampler,
            pin_memory=self.device.type == "cuda",
        )
        total_loss, n_samples, n_batches = 0.0, 0, 0
        stats: dict[str, float] = {}
        t0 = time.perf_counter()
        with self._progress() as progress:
            task = progress.add_task(
                f"epoch {epoch + 1}/{cfg.epochs}",
                total=self.steps_per_epoch,
                loss=float("nan"),
                rate=0.0,
            )
            for batch in loader:
                self._note_bad(batch.bad)
                if len(batch) < 2:
                    continue
                x = batch.inputs.to(self.device, non_blocking=True)
                if cfg.channels_last and x.dim() == 4 and self.device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                lengths = batch.lengths.to(self.device) if batch.lengths is not None else None
                labels = batch.labels.to(self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    loss = self.step_module(x, lengths, labels)
                if not torch.isfinite(loss):
                    raise MetaembError(
                        f"training diverged at epoch {epoch + 1} (loss {loss.item()}); lower train.lr "
                        f"(now {cfg.lr}) or raise train.warmup_epochs."
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.step_module.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                total_loss += loss.item() * len(batch)
                n_samples += len(batch)
                n_batches += 1
                for k, v in self.objective.stats.items():
                    stats[k] = stats.get(k, 0.0) + float(v)
                elapsed = time.perf_counter() - t0
                progress.update(
                    task,
                    advance=1,
                    loss=total_loss / n_samples,
                    rate=n_samples / max(elapsed, 1e-9),
                )
        seconds = time.perf_counter() - t0
        return EpochResult(
            epoch + 1,
            total_loss / max(n_samples, 1),
            seconds,
            n_samples / max(seconds, 1e-9),
            stats={k: v / max(n_batches, 1) for k, v in stats.items()},
        )

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[rate]:.0f} samples/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=not self.dist.main,
        )

    # -- validation ----------------------------------------------------------------------
    def embed(self, dataset: PreparedDataset) -> tuple[Any, torch.Tensor]:
        self.model.eval()
        out, kept, bad = extract(
            self.model,
            dataset,
            self.device,
            batch_size=self.config.eval.batch_size,
            workers=self.workers,
            autocast=self.amp,
        )
        self._note_bad(bad)
        return out, kept

    def _validate(self) -> dict[str, float]:
        cfg = self.config
        emb, kept = self.embed(self.val_set)
        trials = self._trials_for(kept)
        if getattr(self.scorer, "requires_fit", False):
            train_emb, kept_train = self.embed(self.parts.dataset(self.train_folder, train=False))
            labels = torch.tensor(self.train_folder.labels)[kept_train]
            self.scorer.fit(train_emb, labels)
        scores = validation.score_trials(self.scorer, self._table(emb, kept), trials)
        return validation.report(scores, trials.labels, cfg.eval.p_targets)

    def _table(self, emb: Any, kept: torch.Tensor) -> Any:
        """Embeddings addressable by folder index (identity when nothing was skipped)."""
        if len(kept) == len(self.val_folder):
            return emb
        pos = torch.full((len(self.val_folder),), -1, dtype=torch.long)
        pos[kept] = torch.arange(len(kept))
        return _Reindexed(emb, pos)

    def _trials_for(self, kept: torch.Tensor) -> validation.IndexedTrials:
        if len(kept) == len(self.val_folder):
            return self.val_trials
        ok = torch.zeros(len(self.val_folder), dtype=torch.bool)
        ok[kept] = True
        return validation.restrict(self.val_trials, lambda idx: ok[idx])

    def _baseline(self) -> dict[str, float]:
        """The no-learning baseline EER on the same validation trials (cached in the run dir)."""
        path = self.dir / "baseline.json"
        if path.exists():
            return read_json(path)
        if not self.dist.main:
            return {}
        feats = self.parts.model.features
        out, kept, _ = extract(
            feats.baseline_embedding,
            self.val_set,
            self.device,
            batch_size=self.config.eval.batch_size,
            workers=self.workers,
        )
        trials = self._trials_for(kept)
        table = self._table(out, kept)
        scores = validation.cosine_scores(table[torch.arange(len(self.val_folder))], trials)
        rep = validation.report(scores, trials.labels, self.config.eval.p_targets)
        result = {"name": self.config.modality_obj().baseline_name, **rep}
        atomic_write_text(path, json.dumps(result, indent=2, sort_keys=True))
        return result

    def _init_head_from_plda(self) -> None:
        """The original meta-embedding recipe: start the GME head from a PLDA of the features."""
        head = self.model.head
        if not hasattr(head, "init_from_features"):
            raise ConfigError(
                f"train.init_head_from_plda needs a head that supports it (e.g. gme); "
                f"'{self.config.model.head}' does not."
            )
        if getattr(head, "normalization", "batch") != "batch":
            raise ConfigError(
                "train.init_head_from_plda needs head.normalization=batch (the PLDA map is folded "
                f"into the head's BatchNorm); got head.normalization={head.normalization}"
            )
        self.console.print("initialising the head from a PLDA fitted on training features …")
        self.model.eval()
        feats, kept, bad = extract(
            self.model.pooled,
            self.parts.dataset(self.train_folder, train=False),
            self.device,
            batch_size=self.config.eval.batch_size,
            workers=self.workers,
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
            atomic_write_text(self.dir / "skipped.txt", "\n".join(self.skipped) + "\n")

    # -- printing ------------------------------------------------------------------------
    def _describe(self) -> None:
        from metaemb.core.eval.summary import describe_run

        describe_run(self.console, self.config, self.dir, self.parts.root, self.train_folder,
                     self.val_folder, len(self.val_trials), self.device)  # fmt: skip

    def _print_epoch(self, record: dict[str, Any], improved: bool, baseline: dict) -> None:
        from metaemb.core.eval.summary import print_epoch

        print_epoch(self.console, self.config, record, improved)

    def _summary(
        self, history: list[dict], complete: bool, baseline: dict | None = None
    ) -> dict[str, Any]:
        baseline = baseline or read_json(self.dir / "baseline.json")
        if self.dist.main and history:
            from metaemb.core.eval.summary import print_summary, write_summary

            print_summary(self.console, self.config, history, baseline, self.skipped)
            write_summary(self.dir / "README.md", self.config, history, baseline)
        key = self.config.select_key()
        return {
            "run_dir": str(self.dir),
            "epochs": len(history),
            "final": history[-1] if history else {},
            "best": min(history, key=lambda r: r.get(key, math.inf)) if history else {},
            "baseline": baseline,
            "skipped": len(self.skipped),
        }

    def _trim_metrics(self, epoch: int) -> None:
        trim_jsonl(self.dir / "metrics.jsonl", epoch)


class _Reindexed:
    """Embeddings of a subset addressed by full-folder index (when bad samples were skipped)."""

    def __init__(self, emb: Any, pos: torch.Tensor) -> None:
        self.emb, self.pos = emb, pos

    def __getitem__(self, idx: torch.Tensor) -> Any:
        return self.emb[self.pos[idx]]
