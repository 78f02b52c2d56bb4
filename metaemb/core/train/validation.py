"""Per-epoch validation on held-out identities: fixed trials, embeddings once per file, metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metaemb.core.errors import DataError
from metaemb.core.eval import metrics
from metaemb.core.plugin.interfaces import Scorer, Trial


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


def score_trials(scorer: Scorer, embeddings: Any, trials: IndexedTrials) -> Tensor:
    """Scores of every trial; embeddings are indexed by trial position (extracted once per file)."""
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
