"""A calibration fitted on a held-out trial list for an evaluation, and what makes it
untrustworthy (too few trials, separable classes, a reversed order, shared identities)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from metaemb.core.eval.embedded import Embedded
from metaemb.core.eval.trial_set import TrialSet
from metaemb.core.plugin.interfaces import SampleFolder
from metaemb.core.scoring.calibration import LinearCalibration

MIN_CALIBRATION_TRIALS = 30  # per class: fewer pin a two-parameter map down poorly


def calibration_problems(model: Any, scores: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """What makes a fitted calibration untrustworthy: too few trials of a class, classes that
    separate completely (logistic regression then has no finite optimum: the weight is where
    the iterations stopped), or a negative weight (the calibrated order is reversed)."""
    tar, non = scores[labels == 1], scores[labels == 0]
    out = []
    if min(len(tar), len(non)) < MIN_CALIBRATION_TRIALS:
        out.append(
            f"only {len(tar)} target and {len(non)} non-target calibration trials; a calibration "
            f"wants at least {MIN_CALIBRATION_TRIALS} of each, so the fitted map is unreliable."
        )
    if len(tar) and len(non) and (tar.min() > non.max() or tar.max() < non.min()):
        out.append(
            f"every target scores {'above' if tar.min() > non.max() else 'below'} every "
            "non-target, so the logistic fit has no finite optimum: the weight "
            f"({model.weight:.3g}) is where the iterations stopped and the calibrated LLRs are "
            "arbitrarily overconfident. Calibrate on more held-out trials whose scores overlap."
        )
    if model.weight <= 0:
        out.append(
            f"the calibration weight is {model.weight:.3g}: non-targets score higher than "
            "targets, so the calibrated LLRs reverse the score order (is the model trained?), "
            "and the calibrated EER and minDCF are those of the reversed scores."
        )
    return out


@dataclass
class Calibration:
    """A fitted linear calibration and what it was fitted on (reported in metrics.json)."""

    model: LinearCalibration
    source: str
    labels: torch.Tensor
    shared_identities: int

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return self.model(scores)

    @property
    def summary(self) -> dict[str, Any]:
        return {
            "trials": self.source,
            "weight": self.model.weight,
            "bias": self.model.bias,
            "prior": self.model.prior,
            "n_target": int((self.labels == 1).sum()),
            "n_nontarget": int((self.labels == 0).sum()),
            "shared_identities": self.shared_identities,
        }


def warn_overlap(cal: Any, evals: Any) -> None:
    """Calibration is fitted on held-out trials: say so when they are test trials too."""
    tested = {(frozenset(t.enroll), t.test) for t in evals.trials}
    shared = sum((frozenset(t.enroll), t.test) in tested for t in cal.trials)
    if shared:
        warnings.warn(
            f"{shared} of the {len(cal.trials)} calibration trials ({cal.source}) are also "
            f"evaluation trials ({evals.name}); the calibrated metrics are then not measured on "
            "held-out trials. Calibrate on another list.",
            stacklevel=2,
        )


def fit_calibration(
    embedded: Embedded,
    scorer: Any,
    cal: TrialSet,
    evals: TrialSet,
    folder: SampleFolder,
    console: Console,
) -> Calibration:
    """A linear calibration fitted on the scores of the held-out list `cal`, its problems and
    the identities it shares with the evaluation trials printed as warnings."""
    cal_labels = cal.labels()
    cal_scores = embedded.score(scorer, cal.trials)
    model = LinearCalibration().fit(cal_scores, cal_labels)
    for problem in calibration_problems(model, cal_scores, cal_labels):
        console.print(f"[yellow]warning:[/] {escape(cal.source)}: {escape(problem)}")
    identity = {s.path: s.identity for s in folder.samples}
    ids = [{identity[p] for t in ts.trials for p in (*t.enroll, t.test)} for ts in (cal, evals)]
    shared = len(ids[0] & ids[1])
    if shared:
        console.print(
            f"[yellow]warning:[/] the calibration trials ({escape(cal.source)}) share {shared} "
            "identities with the evaluation trials; calibrate on held-out identities for an "
            "honest estimate."
        )
    return Calibration(model, cal.source, cal_labels, shared)
