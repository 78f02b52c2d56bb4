"""The frozen teacher of knowledge distillation (`train.teacher`), loaded like any trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metaemb.core.config import Config
from metaemb.core.errors import ConfigError
from metaemb.core.train.model import Teacher


def build_teacher(
    config: Config, objective: Any, device: torch.device, classes: str | None = None
) -> Teacher | None:
    """The frozen teacher of `train.teacher` on `device`, when the objective learns from one
    (`classes`: the student's class fingerprint, which a logit teacher must share)."""
    wants = objective.teacher_kind() is not None
    if not config.train.teacher:
        if wants:
            raise ConfigError(
                f"objective '{config.train.objective}' distils from a teacher: set "
                "train.teacher=RUN_DIR_OR_CHECKPOINT (or use `metaemb distill --teacher`)."
            )
        return None
    if not wants:
        raise ConfigError(
            f"train.teacher is set but objective '{config.train.objective}' does not use a "
            "teacher; use train.objective=distill."
        )
    from metaemb.core.deploy.loading import load_run
    from metaemb.core.train.pretrained import is_pretrained_name, pretrained_teacher

    if is_pretrained_name(config.train.teacher):  # a registered pretrained backbone, by name
        return pretrained_teacher(config, device)
    loaded = load_run(Path(config.train.teacher), device=str(device))
    tcfg = loaded.config
    if (tcfg.model.features, tcfg.options("features")) != (
        config.model.features,
        config.options("features"),
    ):
        raise ConfigError(
            f"teacher '{config.train.teacher}' was trained on features '{tcfg.model.features}' "
            f"{tcfg.options('features')}; the student uses '{config.model.features}' "
            f"{config.options('features')}. Distillation needs the same input pipeline."
        )
    if (tcfg.model.frontend, tcfg.options("frontend")) != (
        config.model.frontend,
        config.options("frontend"),
    ):
        sets = " ".join(
            [f"--set model.frontend={tcfg.model.frontend}"]
            + [f"--set frontend.{k}={v}" for k, v in sorted(tcfg.options("frontend").items())]
        )
        raise ConfigError(
            f"teacher '{config.train.teacher}' was trained on inputs of frontend "
            f"'{tcfg.model.frontend}' {tcfg.options('frontend')}; the student uses "
            f"'{config.model.frontend}' {config.options('frontend')}, so the teacher would see "
            f"inputs it never learned from. Give the student the teacher's frontend ({sets})."
        )
    if loaded.model.head.output != "point":
        raise ConfigError(
            f"teacher '{config.train.teacher}' gives Gaussian meta-embeddings (head "
            f"'{tcfg.model.head}'); distillation learns from point embeddings or class logits, "
            "so take a teacher trained with model.head=linear."
        )
    wanted = getattr(objective, "teacher_dim", 0) or config.model.dim  # what the student matches
    if objective.teacher_kind() == "embedding" and tcfg.model.dim != wanted:
        raise ConfigError(  # before the first epoch, not inside it
            f"teacher '{config.train.teacher}' gives {tcfg.model.dim}-dimensional embeddings and "
            f"the student {config.model.dim}; set objective.teacher_dim={tcfg.model.dim} so a "
            "projection from the student's embedding is learned (`metaemb distill` sets it)."
        )
    classifier = loaded.classifier()
    if objective.teacher_kind() == "logits" and classifier is None:
        raise ConfigError(
            f"teacher '{config.train.teacher}' was trained with objective "
            f"'{tcfg.train.objective}', which has no class logits; kd='logits' needs a "
            "classifier teacher (softmax, arcface, …), or use kd='embedding'."
        )
    saved = loaded.state.get("class_fingerprint")
    if objective.teacher_kind() == "logits" and classes and saved and saved != classes:
        raise ConfigError(
            f"teacher '{config.train.teacher}' was trained on other classes than the student's "
            f"({loaded.state.get('num_classes')} classes; other identities, or the same ones in "
            "another order or with other augmentation), so its logits do not name the student's "
            "classes. Train the student on the teacher's data, or use kd='embedding'."
        )
    return Teacher(loaded.model, classifier).to(device)
