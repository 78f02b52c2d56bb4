"""One place decides which scorer scores and whether it may (core/scoring/choice.py): the same
refusal reads the same whichever command asks, as one error type (Q1 F1: identify advised
'gme' for a point run, --measure class another wording, neighbours a third)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from metaemb.core.config import resolve
from metaemb.core.deploy.loading import LoadedRun
from metaemb.core.errors import ScorerError
from metaemb.core.scoring.choice import choose_scorer, default_scorer_name


@pytest.fixture
def run() -> LoadedRun:
    """A face run's configuration (cosine, linear head) without weights: enough to choose."""
    return LoadedRun(Path("runs/face/r/best.pt"), resolve("face"), {"model": {}}, None, torch.device("cpu"))  # type: ignore[arg-type]  # fmt: skip


def refusal(*args, **kwargs) -> str:
    with pytest.raises(ScorerError) as caught:
        choose_scorer(*args, **kwargs)
    return " ".join(str(caught.value).split())


def test_a_scorer_without_its_fitted_state_is_refused_in_one_wording(run):
    said = {
        refusal(run, "plda", "measure").split(" (`metaemb evaluate")[0].rstrip("."),
        refusal(run, "plda", "verification").rstrip("."),
        refusal(run, "plda", "search", kind="point", holder="the gallery 'g.pt'").rstrip("."),
    }
    [one] = said
    assert one == (
        "scorer 'plda' must be fitted, and the run 'runs/face/r/best.pt' holds no fitted 'plda' "
        "(its scorer is 'cosine'): pass --scorer euclidean, which needs no fitting, "
        "or leave --scorer out to score with the run's own 'cosine'"
    )
    assert "gme" not in one  # a point run is never advised a GME scorer
    fitted = []
    scorer = choose_scorer(run, "plda", "verification", fit=lambda sc, name: fitted.append(name))
    assert fitted == ["plda"] and scorer.requires_fit  # evaluate fits it instead


def test_the_runs_own_fitted_cosine_is_not_advised_as_needing_no_fitting():
    """A speaker run's cosine (training mean, WCCN) without its fitted state was refused with
    'pass --scorer cosine, which needs no fitting', which names the same scorer (R7 F5)."""
    cfg = resolve("speaker")
    assert cfg.eval.scorer == "cosine" and cfg.options("scorer").get("subtract_mean")
    speaker = LoadedRun(Path("runs/speaker/r/best.pt"), cfg, {"model": {}}, None, torch.device("cpu"))  # type: ignore[arg-type]  # fmt: skip
    for name in (None, "cosine"):
        said = refusal(speaker, name, "verification")
        assert "holds no fitted 'cosine' (with the run's options)" in said
        assert "pass --scorer euclidean, which needs no fitting" in said
        assert "--scorer cosine" not in said


def test_a_scorer_of_the_other_kind_is_refused_in_one_wording(run):
    own = refusal(run, "gme", "measure")
    assert own.startswith("the run 'runs/face/r/best.pt' (head 'linear') yields point embeddings "
                          "and scorer 'gme' accepts gme: score it with cosine, euclidean, …, or "
                          "leave --scorer out (the run's own 'cosine')")  # fmt: skip
    for holder in ("the gallery 'g.pt'", "the collection 'c.pt'"):
        said = refusal(run, "gme", "search", kind="point", holder=holder)
        assert said == own.replace("the run 'runs/face/r/best.pt' (head 'linear') yields",
                                   f"{holder} holds")  # fmt: skip
    said = refusal(None, "cosine", "search", kind="gme", holder="the collection")
    assert said.startswith("the collection holds Gaussian meta-embeddings and scorer 'cosine' "
                           "accepts embedding: score it with gme, or leave --scorer out;")  # fmt: skip
    from metaemb.core.plugin.components import build

    said = refusal(None, build("scorers", "gme", {}), "gallery", kind="point", holder="the gallery")
    assert said.startswith("the gallery holds point embeddings and scorer 'GMEScorer' accepts gme")


def test_unknown_names_and_searches_that_cannot_rank(run):
    assert "unknown scorer 'nope'" in refusal(run, "nope", "measure")
    assert "unknown scorer 'nope'" in refusal(None, "nope", "gallery", kind="point", holder="g")
    assert default_scorer_name("gme") == "gme" and default_scorer_name("point") == "cosine"
    run.config.eval.scorer = "plda"  # its own scorer, but no fitted state saved
    with pytest.warns(UserWarning, match=r"identify ranks with 'cosine' at its defaults, not with "
                      r"the run's scorer 'plda' \(its options and fitted state\): scorer 'plda' "
                      "must be fitted, and the run"):  # fmt: skip
        chosen = choose_scorer(run, None, "search", kind="point", holder="g", command="identify")
    assert type(chosen).__name__ == "CosineScorer"
    run.config.eval.scorer = "cosine"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the run's own scorer ranks: nothing to say
        choose_scorer(run, None, "search", kind="point", holder="g", command="identify")
