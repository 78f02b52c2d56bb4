"""The speaker recipes under examples/configs/ train a few steps on tiny demo voices, with their
objective, scorer and augmentations as written (only data size, epochs and crop are shrunk;
the scorers' LDA size and s-norm top_n, meant for thousands of speakers, fall back to what the
tiny data allow, with a note)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from rich.console import Console

from metaemb.core.config import resolve
from metaemb.core.plugin.components import build
from metaemb.core.train.engine import Trainer

RECIPES = sorted((Path(__file__).parents[1] / "examples" / "configs").glob("speaker-*.toml"))


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "voices"
    options = {"speakers": 10, "utterances_per_speaker": 4, "seconds": 1.0}
    return build("demo_data", "speaker", options, out=out)


def test_the_field_recipes_are_there():
    names = {p.stem for p in RECIPES}
    assert {"speaker-xvector-plda", "speaker-ecapa-aam", "speaker-gme"} <= names


def slow_if_ecapa(path: Path):
    """ECAPA-TDNN (6 M parameters at its fixed width) is too slow for the default suite on CPU."""
    marks = [pytest.mark.slow] if "ecapa" in path.stem else []
    return pytest.param(path, id=path.stem, marks=marks)


def test_ecapa_recipe_is_the_field_recipe():
    cfg = resolve("speaker", config_file=RECIPES[0].parent / "speaker-ecapa-aam.toml")
    assert cfg.model.backbone.startswith("ecapa") and cfg.train.objective == "arcface"
    assert cfg.options("objective")["margin"] == 0.2
    assert 30 <= cfg.options("objective")["scale"] <= 32
    assert cfg.eval.scorer == "asnorm" and cfg.train.augment[0] == "speed"
    # WeSpeaker and SpeechBrain crop raw recordings: no VAD, where the speaker default has one
    # (S5 F3); Kaldi's x-vector recipe keeps its energy VAD
    assert cfg.model.frontend == "none"
    kaldi = resolve("speaker", config_file=RECIPES[0].parent / "speaker-xvector-plda.toml")
    assert kaldi.model.frontend == "energy"


@pytest.mark.parametrize("path", [slow_if_ecapa(p) for p in RECIPES])
def test_recipe_trains_a_few_steps(path: Path, voices: Path, tmp_path: Path):
    small = [f'data.root="{voices}"', "train.epochs=1", "train.batch_size=8",
             "train.warmup_epochs=0", "features.crop_seconds=0.5", "eval.max_targets=30",
             "eval.nontargets=30", "data.val_fraction=0.3"]  # fmt: skip
    full = resolve("speaker", config_file=path)
    if full.model.backbone == "xvector":  # narrower, same layer table
        small += ["backbone.channels=48", "backbone.pool_channels=96", "backbone.embedding_dim=48"]
    cfg = resolve("speaker", config_file=path, sets=small)
    assert cfg.train.objective == full.train.objective and cfg.eval.scorer == full.eval.scorer
    assert cfg.train.augment == full.train.augment
    trainer = Trainer(cfg, runs_root=tmp_path, device="cpu", workers=0,
                      console=Console(quiet=True))  # fmt: skip
    result = trainer.run()
    assert result["epochs"] == 1
    assert math.isfinite(result["final"]["loss"]) and 0.0 <= result["final"]["eer"] <= 1.0
    if "speed" in cfg.train.augment:
        assert trainer.num_classes == 3 * trainer.train_folder.num_identities
