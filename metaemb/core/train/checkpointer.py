"""The files of one run directory during training: lock, checkpoints, metrics.jsonl, skipped.txt.

Invariants, whatever moment a training is killed at:
- one trainer at a time holds the directory (`RunLock`; a dead owner's lock is taken over);
- a checkpoint is written to a temp file and renamed, and temp files an interrupted write left
  behind are deleted before the next training starts;
- metrics.jsonl never holds an epoch that last.pt does not: on resume it is trimmed to the
  checkpoint's epoch, and a restart with no checkpoint clears it (and any best.pt / skipped.txt);
- best.pt is written before last.pt, so a resumed run never lacks the best epoch's weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from metaemb.core.checkpoints import load_checkpoint, save_checkpoint
from metaemb.core.config import Config
from metaemb.core.config.trained_options import trained_options
from metaemb.core.errors import MetaembError, first_few
from metaemb.core.files import append_jsonl, atomic_write_text
from metaemb.core.locks import RunLock
from metaemb.core.runs import (
    epoch_records,
    record_epoch,
    remove_stale_tmp,
    trained_root,
    trim_jsonl,
)
from metaemb.core.scoring.state import tensor_state
from metaemb.core.train.random_state import host_rng_state, restore_rng

LAST, BEST, METRICS, SKIPPED, BASELINE = (
    "last.pt",
    "best.pt",
    "metrics.jsonl",
    "skipped.txt",
    "baseline.json",
)
RESUME_ONLY = ("optimizer", "scheduler")  # entries of last.pt that best.pt leaves out


class Checkpointer:
    """Saves and restores the training state of one run directory (rank 0 writes)."""

    def __init__(self, folder: Path, config_hash: str, main: bool = True) -> None:
        self.dir = Path(folder)
        self.config_hash = config_hash
        self.main = main

    @property
    def last(self) -> Path:
        return self.dir / LAST

    @property
    def best(self) -> Path:
        return self.dir / BEST

    @property
    def metrics(self) -> Path:
        return self.dir / METRICS

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run directory's lock (rank 0 only; other DDP ranks share rank 0's)."""
        if not self.main:
            yield
            return
        with RunLock(self.dir):
            yield

    def prepare(self, fresh: bool) -> None:
        """Create the directory, drop temp files of interrupted writes, and with `fresh` every
        file of an earlier training (the config and any evaluation folders stay)."""
        if not self.main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(self.dir)
        if fresh:
            earlier = self.made_from_earlier_weights() if self.best.is_file() else []
            for name in (LAST, BEST, METRICS, SKIPPED, BASELINE):
                (self.dir / name).unlink(missing_ok=True)
            if earlier:
                warnings.warn(
                    f"--fresh keeps what was made from the earlier training in '{self.dir}' "
                    f"({first_few(earlier, 3)}): it belongs to the earlier weights, not to the "
                    "model this training makes. Export or enroll again when it is done.",
                    stacklevel=2,
                )

    def made_from_earlier_weights(self) -> list[str]:
        """Exports (a sidecar `<name>.json` beside them) and galleries in the run folder: made
        from its best.pt, which `--fresh` replaces by another model."""
        from metaemb.core.paths import existing_kind

        made = []
        for p in sorted(self.dir.iterdir()):
            if not p.is_file() or p.name in (LAST, BEST):
                continue
            if (p.parent / (p.name + ".json")).is_file():
                made.append(f"{p.name} (an export)")
            elif p.suffix in (".pt", ".pth") and (existing_kind(p) or ("",))[0] == "gallery":
                made.append(f"{p.name} (a gallery)")
        return made

    def finished_without_last(self, epochs: int) -> list[dict[str, Any]] | None:
        """The epoch records of a run that trained all `epochs` and whose last.pt was removed
        afterwards (it holds the optimizer too: a finished run's is often deleted to save
        space), or None: such a run is complete, not a run to resume or start over."""
        if self.last.exists() or not self.best.exists():
            return None
        records = epoch_records(self.metrics)
        if sorted(r["epoch"] for r in records) != list(range(1, epochs + 1)):
            return None
        return records

    def resume(self) -> dict[str, Any] | None:
        """The state of last.pt (metrics.jsonl trimmed to its epoch), or None to start over (then
        what an attempt that died before its first checkpoint wrote is cleared)."""
        if self.last.exists():
            state = load_checkpoint(self.last, expect_hash=self.config_hash)
            if self.main:
                trim_jsonl(self.metrics, int(state["epoch"]), state.get("history"))
            return state
        if self.main:
            self._refuse_lost_last()
            left = [n for n in (BEST, METRICS) if (self.dir / n).exists()]
            if any(record_epoch(ln) is not None for ln in _lines(self.metrics)):
                warnings.warn(  # an epoch of a large model is hours: say it is recomputed
                    f"{self.dir}: epoch 1 was trained but its last.pt is missing (an attempt "
                    f"stopped while saving its first checkpoint); its {' and '.join(left)} "
                    "are removed and training starts over.",
                    stacklevel=2,
                )
            for name in (METRICS, BEST, SKIPPED):
                (self.dir / name).unlink(missing_ok=True)
        return None

    def _refuse_lost_last(self) -> None:
        """A run with epochs behind it but no last.pt lost it (deleted, moved): starting over
        would replace its best.pt and cut its metrics to one epoch without a word. (An attempt
        killed before its first checkpoint leaves at most epoch 1's line and best.pt.)"""
        epochs = [e for ln in _lines(self.metrics) if (e := record_epoch(ln)) is not None]
        best_epoch = 0
        if self.best.exists():
            with contextlib.suppress(Exception):  # an unreadable best.pt is a leftover too
                best_epoch = int(load_checkpoint(self.best).get("epoch", 0))
        trained = max([best_epoch, *epochs])
        if trained >= 2:
            raise MetaembError(
                f"cannot resume {self.dir}: it holds {trained} trained epochs (best.pt, "
                f"{METRICS}) but no {LAST}, which a resume needs (deleted or moved?). Put "
                f"{LAST} back to resume, or train it again from the start with --fresh (which "
                f"deletes {BEST} and {METRICS})."
            )

    def save(self, record: dict[str, Any], state: dict[str, Any], improved: bool) -> None:
        """One finished epoch: its metrics line, then best.pt (if improved), then last.pt.

        best.pt is for using the model (evaluate, enroll, export, init_from, a teacher), so it
        leaves out the optimizer and scheduler states, which only a resume from last.pt needs:
        with momentum that halves its size."""
        if not self.main:
            return
        append_jsonl(self.metrics, record)
        if improved:
            save_checkpoint(self.best, {k: v for k, v in state.items() if k not in RESUME_ONLY})
        save_checkpoint(self.last, state)

    def skipped(self) -> list[str]:
        """Lines of skipped.txt (samples skipped by earlier attempts of this run)."""
        path = self.dir / SKIPPED
        return path.read_text().splitlines() if path.exists() else []

    def write_skipped(self, lines: list[str]) -> None:
        if self.main:
            atomic_write_text(self.dir / SKIPPED, "".join(line + "\n" for line in lines))


#: the registry kind of each component a checkpoint names
_KINDS = {
    "modality": "modalities", "sample_folder": "sample_folders", "frontend": "frontends",
    "features": "features", "backbone": "backbones", "head": "heads",
    "objective": "objectives", "scorer": "scorers",
}  # fmt: skip


def component_plugins(cfg: Config) -> dict[str, str]:
    """{"backbone": "gait 0.1.0", …}: the plugin (and version) behind each named component,
    so a machine without that plugin can say what to install instead of 'unknown features'."""
    from metaemb.core.plugin.manager import registry, state

    names = {
        "modality": cfg.modality, "sample_folder": cfg.data.folder,
        "frontend": cfg.model.frontend, "features": cfg.model.features,
        "backbone": cfg.model.backbone, "head": cfg.model.head,
        "objective": cfg.train.objective, "scorer": cfg.eval.scorer,
    }  # fmt: skip
    versions = state().versions
    out = {}
    for key, name in names.items():
        try:
            plugin = registry(_KINDS[key]).entry(name).plugin
        except Exception:
            continue
        out[key] = f"{plugin} {versions.get(plugin, '?')}"
    return out


def training_state(trainer: Any, epoch: int, step: int, best: float, history: list[dict]) -> dict:
    """Everything a resume needs from a set-up Trainer: weights, optimizer, scheduler, scorer,
    random streams, progress, and what evaluation needs to rebuild the model."""
    cfg = trainer.config
    return {
        "model": trainer.model.state_dict(),
        "classifier": trainer.classifier.state_dict() if trainer.classifier is not None else {},
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scorer": tensor_state(trainer.scorer.state_dict(), cfg.eval.scorer),
        "rng": torch.get_rng_state(),
        "host_rng": host_rng_state(),  # numpy's and random's: augmentations may draw there
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "epoch": epoch,
        "step": step,
        "steps_per_epoch": trainer.steps_per_epoch,  # a resume on other ranks realigns to it
        "world_size": trainer.dist.world_size,
        "best": best,
        "history": history,
        "config": cfg.to_dict(),
        "config_hash": cfg.hash(),
        "trained_options": trained_options(cfg),  # defaults too: a plugin may change them
        "components": {
            "sample_folder": cfg.data.folder,
            "frontend": cfg.model.frontend,
            "features": cfg.model.features,
            "backbone": cfg.model.backbone,
            "head": cfg.model.head,
            "objective": cfg.train.objective,
            "scorer": cfg.eval.scorer,
        },
        "plugins": component_plugins(cfg),  # who to install to open the run elsewhere
        "input_spec": trainer.model.features.input_spec(),
        "input_shape": getattr(trainer, "input_shape", None),  # fixed-size inputs: [C, H, W]
        "num_classes": trainer.num_classes,
        "training_identities": list(trainer.train_folder.identities),  # kept out of evaluation
        "workers": trainer.workers,  # its crops follow the worker ids: a resume says if it differs
        **trainer.fingerprints,  # computed once per run: the data does not change during it
    }


def fingerprints(folder: Any, train_folder: Any, num_classes: int) -> dict[str, str]:
    """The checkpoint's record of what the run trains on and what its classifier rows are."""
    return {
        "data_fingerprint": data_fingerprint(folder),
        "files_fingerprint": files_fingerprint(folder),
        "class_fingerprint": class_fingerprint(train_folder.identities, num_classes),
    }


def class_fingerprint(identities: Any, num_classes: int) -> str:
    """Which classes the classifier's rows are, in 16 hex digits: the training identities in
    label order and the class count (speed perturbation multiplies it). A logit teacher must
    have the student's."""
    h = hashlib.sha256(f"{num_classes}\n".encode())
    for name in identities:
        h.update(f"{name}\0".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def data_fingerprint(folder: Any) -> str:
    """What the run trains on, in 16 hex digits: every sample's path and identity, in order."""
    h = hashlib.sha256()
    for sample in folder.samples:
        h.update(f"{sample.identity}\0{sample.path}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def files_fingerprint(folder: Any) -> str:
    """The sample paths alone, in 16 hex digits: beside `data_fingerprint`, it tells files that
    changed from the same files named as other identities."""
    h = hashlib.sha256()
    for path in sorted(s.path for s in folder.samples):
        h.update(f"{path}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def data_change(state: dict[str, Any], folder: Any) -> str:
    """How the data folder differs from what the run trained on ("" when it does not, or the
    checkpoint predates fingerprints): its files, or only the identities its folder names them
    by (a sample folder whose identity_of is not deterministic: a set's order, hash())."""
    saved = state.get("data_fingerprint")
    if saved is None or saved == data_fingerprint(folder):
        return ""
    counts = f"now {len(folder)} samples of {folder.num_identities} identities"
    if state.get("files_fingerprint") == files_fingerprint(folder):
        from metaemb.core.plugin.components import described

        return (
            f"holds the same files, but {described(folder, 'sample folder')} now names other "
            f"identities for them ({counts}): is its identity_of deterministic (no set order, "
            "no hash())?"
        )
    return f"changed since the run trained on it ({counts}; files were added, removed or renamed)"


def _lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def check_same_data(trainer: Any, state: dict[str, Any]) -> None:
    """Refuse to resume on another data folder, or on one that changed since the run started:
    the resumed run would mix two datasets (and its labels) under one configuration hash. Run
    folders are named by the configuration as typed, so `--data data` from two project folders
    names the same run: the saved absolute folder tells them apart."""
    before = trained_root(state.get("config") or {})
    now = trained_root(trainer.config.to_dict()) if before else ""
    if before and now and Path(before).resolve() != Path(now).resolve():
        raise MetaembError(
            f"cannot resume {trainer.dir}: it was trained on '{before}', and --data now names "
            f"'{now}' (run folders are named by the configuration as typed, so the same "
            "relative --data from another folder names the same run). Train into another "
            "--runs folder or with --set name=NEW; if you moved the data, move it back; or "
            "train this run again from the start with --fresh."
        )
    change = data_change(state, trainer.parts.folder)
    if change:
        raise MetaembError(
            f"cannot resume {trainer.dir}: the data folder '{trainer.parts.folder.root}' "
            f"{change}. Restore the data, or train again with --fresh."
        )


def config_edited_warning(path: Path, config: Any) -> str | None:
    """config.toml is rewritten from the command's settings on every start; an edit by hand
    (which changes the run's hash) would vanish without a word, so say so, and keep the edited
    file beside it as config.toml.edited. A file that no longer reads as a configuration (an
    unknown key, a plugin's section) counts as edited too."""
    from metaemb.core.config import from_dict
    from metaemb.core.config.toml_io import load_toml

    if not path.exists():
        return None
    why = "was edited by hand"
    try:
        if from_dict(load_toml(path)).hash() == config.hash():
            return None
    except Exception as exc:
        if path.read_text(errors="replace") == config.to_toml():
            return None
        why = f"no longer reads as a configuration ({type(exc).__name__}: {exc})"
    kept = path.with_name(path.name + ".edited")
    atomic_write_text(kept, path.read_text(errors="replace"))
    return (
        f"{path} {why}; a run's settings come from the command that trains it, so it is "
        f"rewritten from them (the edited file is kept as {kept.name}). To train with the "
        "edited settings, start a new run: metaemb train --config FILE (a copy of the edited "
        "file)."
    )


def other_workers_warning(run: Path, state: dict[str, Any], workers: int) -> str | None:
    """The training crops and augmentations a worker draws follow its worker id, so a run
    resumed with another --workers count draws other ones than it would have: it trains on,
    but its weights match neither uninterrupted run. Say so."""
    before = state.get("workers")  # absent from checkpoints written before it was kept
    if not isinstance(before, int) or before == workers:
        return None
    return (
        f"{run} trained with {before} data-loader worker(s) and resumes with {workers}: the "
        "random crops and augmentations of the remaining epochs differ from an uninterrupted "
        "run's, so its weights will not be reproducible (resume with --workers "
        f"{before} to keep them so)."
    )


def restore(trainer: Any, state: dict[str, Any]) -> None:
    """Load a state written by `training_state` into a set-up Trainer."""
    from metaemb.core.train.shard import slice_states

    try:
        state = slice_states(state, trainer.classifier, trainer.optimizer)  # own rows
        trainer.model.load_state_dict(state["model"])
        if trainer.classifier is not None:
            trainer.classifier.load_state_dict(state["classifier"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.scorer.load_state_dict(state.get("scorer", {}))
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise MetaembError(
            f"cannot resume {trainer.dir}: its last.pt does not fit this run's model "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}). Nothing was "
            "changed; --fresh trains the run again from scratch."
        ) from None
    restore_rng(state, trainer.dist.rank, trainer.dist.world_size)
