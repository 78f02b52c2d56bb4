"""Per-epoch validation on held-out identities: fixed trials, embeddings once per file, metrics.

`split` and `validation_trials` are the one definition of a run's held-out identities and trials:
the engine validates on them and `metaemb evaluate RUN` (no trial list) regenerates them, so the
numbers match. `Validator` scores them every epoch and computes the no-learning baseline.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metaemb.core.config import Config
from metaemb.core.data.embed import non_finite_rows, row_files
from metaemb.core.errors import ConfigError, DataError, MetaembError, first_line
from metaemb.core.eval import metrics
from metaemb.core.eval.trial_generation import make_trials
from metaemb.core.files import atomic_write_text, read_json
from metaemb.core.plugin.interfaces import SampleFolder, Scorer, Trial
from metaemb.core.scoring.scorers import check_consistent
from metaemb.core.train.checks.naming import component


def split_seed(config: Config) -> int:
    """The seed of the held-out identities and validation trials: data.split_seed, or
    train.seed when it is -1 (the default, as before the option existed)."""
    return config.train.seed if config.data.split_seed == -1 else config.data.split_seed


def split(folder: SampleFolder, config: Config) -> tuple[SampleFolder, SampleFolder]:
    """(training, validation) folders of a run: disjoint identities, seeded by `split_seed`."""
    return folder.split(config.data.val_fraction, seed=split_seed(config))


def validation_trials(val_folder: SampleFolder, config: Config) -> list[Trial]:
    """The run's validation trials over its held-out identities (same config, same list)."""
    return make_trials(
        val_folder,
        n_target=config.eval.max_targets,
        n_nontarget=config.eval.nontargets,
        seed=split_seed(config),
    )


@dataclass
class IndexedTrials:
    """Trials as positions into an embedding table (single-sample enrollment)."""

    enroll: Tensor
    test: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)


def index_trials(trials: list[Trial], paths: list[str]) -> IndexedTrials:
    """Map trial paths to positions in `paths` (enrollment of several samples is not indexed here)."""
    where = {p: i for i, p in enumerate(paths)}
    enroll, test, labels = [], [], []
    for t in trials:
        if len(t.enroll) != 1:
            raise DataError("validation trials must enroll a single sample each")
        try:
            enroll.append(where[t.enroll[0]])
            test.append(where[t.test])
        except KeyError as exc:
            raise DataError(f"trial refers to '{exc.args[0]}', which is not in the data") from None
        labels.append(int(t.label if t.label is not None else -1))
    return IndexedTrials(torch.tensor(enroll), torch.tensor(test), torch.tensor(labels))


def score_indexed_trials(scorer: Scorer, embeddings: Any, trials: IndexedTrials) -> Tensor:
    """Scores of single-enrollment trials indexed into `embeddings` (each file extracted once);
    `scoring.scorers.score_trials` scores trials whose enrollment pools several embeddings."""
    return scorer.score(embeddings[trials.enroll], embeddings[trials.test]).double().cpu()


def report(scores: Tensor, labels: Tensor, p_targets: list[float]) -> dict[str, float]:
    tar = scores[labels == 1].numpy()
    non = scores[labels == 0].numpy()
    return metrics.verification_report(tar, non, p_targets=tuple(p_targets))


def cosine_scores(x: Tensor, trials: IndexedTrials) -> Tensor:
    """Plain cosine, used for the no-learning baselines (independent of registered scorers)."""
    x = torch.nn.functional.normalize(x.double(), dim=1)
    return (x[trials.enroll] * x[trials.test]).sum(1)


def restrict(trials: IndexedTrials, keep: Callable[[Tensor], Tensor]) -> IndexedTrials:
    mask = keep(trials.enroll) & keep(trials.test)
    return IndexedTrials(trials.enroll[mask], trials.test[mask], trials.labels[mask])


@contextlib.contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Run side computations (the baseline) without consuming the training random streams, so a
    run gives the same weights whether or not its baseline was already cached."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


Embed = Callable[[Any], tuple[Any, Tensor]]  # PreparedDataset → (embeddings, kept indices)


class Validator:
    """Validation of one run: fixed trials on held-out identities, scored each epoch.

    `embed(dataset)` returns the embeddings of the samples that could be read and their folder
    indices; trials touching a skipped sample are left out rather than scored on garbage.
    """

    def __init__(
        self,
        config: Config,
        parts: Any,
        train_folder: SampleFolder,
        val_folder: SampleFolder,
        scorer: Scorer,
        embed: Embed,
    ) -> None:
        self.config, self.parts, self.scorer, self.embed = config, parts, scorer, embed
        self.train_folder, self.val_folder = train_folder, val_folder
        self.val_set = parts.dataset(val_folder, train=False)
        paths = [s.path for s in val_folder.samples]
        self.trials = index_trials(validation_trials(val_folder, config), paths)
        self._warned_collapse = False
        self._checked_scorer = False
        self._checked_polarity = False

    def _fit(self, embeddings: Tensor, labels: Tensor) -> None:
        """The scorer's fit, its failure named with the scorer and its plugin (a plugin's
        RuntimeError from an eigendecomposition was a bare traceback)."""
        named = component(self.config, "scorer")
        try:
            self.scorer.fit(embeddings, labels)
        except MetaembError as exc:
            if "scorer" in str(exc):
                raise
            raise type(exc)(f"{named}, fitted on {len(labels)} training embeddings: {exc}") from exc
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise MetaembError(
                f"{named} failed fitting {len(labels)} training embeddings of "
                f"{int(labels.unique().numel())} identities: {type(exc).__name__}: "
                f"{first_line(exc)}"
            ) from exc

    def validate(self) -> dict[str, float]:
        """Fit the scorer on the training samples when it needs it, then score the trials."""
        emb, kept = self.embed(self.val_set)
        if not self._warned_collapse:  # once a run: later epochs say it by their EER
            self._warned_collapse = warn_if_collapsed(emb)
        trials = self._trials_for(kept)
        if self.scorer.requires_fit:
            train_emb, kept_train = self.embed(self.parts.dataset(self.train_folder, train=False))
            labels = torch.tensor(self.train_folder.labels)[kept_train]
            self._fit(train_emb, labels)
        self.scorer.adapt(emb)  # as `evaluate` does on the files it scores
        if not self._checked_scorer:  # once a run: a plugin's scorer named up front
            check_consistent(self.scorer, emb, component(self.config, "scorer"))
            self._checked_scorer = True
        scores = score_indexed_trials(self.scorer, self._table(emb, kept), trials)
        bad = int((~torch.isfinite(scores)).sum())
        if bad:  # the embeddings are finite (checked first): the scorer made them
            raise MetaembError(
                f"{component(self.config, 'scorer')} gave NaN or inf scores for {bad} of "
                f"{len(scores)} validation trials from finite embeddings."
            )
        if not self._checked_polarity:  # once a run, as `evaluate` warns on every list
            self._checked_polarity = True
            label = component(self.config, "scorer")
            metrics.warn_if_reversed(
                label, scores.cpu().numpy(), trials.labels, "the validation's "
            )
        return report(scores, trials.labels, self.config.eval.p_targets)

    def baseline(self, path: Path, extract: Callable[..., Any], device: torch.device) -> dict:
        """The no-learning baseline on the same trials, cached in `path`; it never touches the
        training random streams (see `isolated_rng`)."""
        if path.exists():
            return read_json(path)
        feats = self.parts.model.features
        name = component(self.config, "features")

        padded = []  # whether the default baseline pooled sequences (its name says which)

        def baseline_embedding(x: Any, lengths: Any = None) -> Any:
            padded.append(lengths is not None)
            try:
                out = feats.baseline_embedding(x, lengths)
            except (TypeError, ValueError, RuntimeError, IndexError) as exc:
                raise ConfigError(
                    f"{name} failed computing the no-learning baseline (its baseline_embedding, "
                    f"which calls forward): {type(exc).__name__}: {exc}."
                ) from exc
            if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != len(x):
                shown = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ConfigError(
                    f"{name}: its baseline_embedding gave {shown} for a batch of "
                    f"{list(x.shape)}; it must give one vector per sample, [N, d]. The default "
                    "pools [N, C, T] inputs over their last axis; for other layouts override "
                    "baseline_embedding (docs/plugins.md, the no-learning baseline)."
                )
            return out

        with isolated_rng(device):
            out, kept, _ = extract(baseline_embedding, self.val_set)
        rows = non_finite_rows(out)
        if rows:
            raise MetaembError(
                f"{component(self.config, 'features')} gives NaN or inf values for "
                f"{len(rows)} validation sample(s) ({row_files(self.val_folder, kept, rows)}) "
                "in its forward or baseline_embedding, from finite prepared input."
            )
        trials = self._trials_for(kept)
        table = self._table(out, kept)
        scores = cosine_scores(table[torch.arange(len(self.val_folder))], trials)
        rep = report(scores, trials.labels, self.config.eval.p_targets)
        default = "input mean+std over time" if any(padded) else "raw input"
        result = {"name": self._baseline_name(feats) or default, **rep}
        atomic_write_text(path, json.dumps(result, indent=2, sort_keys=True))
        return result

    def _baseline_name(self, feats: Any) -> str:
        """The features' own `baseline_name`, else the modality's when these are its default
        features (another plugin's features in the modality compute another baseline), else ""."""
        own = getattr(feats, "baseline_name", "")
        if isinstance(own, str) and own:
            return own
        modality = self.config.modality_obj()
        return modality.baseline_name if self.config.model.features == modality.features else ""

    def _table(self, emb: Any, kept: Tensor) -> Any:
        """Embeddings addressable by folder index (identity when nothing was skipped)."""
        if len(kept) == len(self.val_folder):
            return emb
        pos = torch.full((len(self.val_folder),), -1, dtype=torch.long)
        pos[kept] = torch.arange(len(kept))
        return _Reindexed(emb, pos)

    def _trials_for(self, kept: Tensor) -> IndexedTrials:
        if len(kept) == len(self.val_folder):
            return self.trials
        ok = torch.zeros(len(self.val_folder), dtype=torch.bool)
        ok[kept] = True
        return restrict(self.trials, lambda idx: ok[idx])


def warn_if_collapsed(emb: Any, what: str = "validation") -> bool:
    """Warn when every `what` sample gets (nearly) the same embedding: the EER is then chance
    whatever the loss says, most often because BatchNorm's running statistics, used in
    evaluation mode, have seen too few training steps."""
    if not isinstance(emb, Tensor) or emb.dim() != 2 or emb.shape[0] < 2:
        return False
    x = emb.detach().double()
    spread, scale = float(x.std(0).max()), float(x.abs().max())
    collapsed = spread <= 1e-5 * max(scale, 1e-30)
    if collapsed:
        warnings.warn(
            f"the {what} embeddings are nearly identical for all {x.shape[0]} samples "
            f"(largest spread {spread:.2g} against values up to {scale:.2g}): the model "
            "collapsed in evaluation mode, so its EER is chance. BatchNorm layers whose running "
            "statistics have seen too few training steps do this (a short run, or a small "
            "momentum): train for more steps (more epochs or a smaller train.batch_size).",
            stacklevel=2,
        )
    return collapsed


class _Reindexed:
    """Embeddings of a subset addressed by full-folder index (when bad samples were skipped)."""

    def __init__(self, emb: Any, pos: Tensor) -> None:
        self.emb, self.pos = emb, pos

    def __getitem__(self, idx: Tensor) -> Any:
        return self.emb[self.pos[idx]]
