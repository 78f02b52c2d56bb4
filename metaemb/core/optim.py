"""Optimizer parameter groups and the learning-rate schedule of the engine.

Three groups, each with its own LR multiplier: the trunk ("model": features + backbone), the
embedding head ("head", `train.head_lr_mult`; e.g. a GME head's precisions) and the objective's
class weights ("classifier", `train.classifier_lr_mult`; never exported).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metaemb.core.config import TrainConfig
from metaemb.core.model import EmbeddingModel


def param_groups(
    model: EmbeddingModel, classifier: nn.Module | None, cfg: TrainConfig
) -> list[dict]:
    """The named parameter groups; every parameter is in exactly one, empty groups are left out."""
    head = list(model.head.parameters())
    in_head = {id(p) for p in head}
    groups = [
        {
            "params": [p for p in model.parameters() if id(p) not in in_head],
            "lr": cfg.lr,
            "name": "model",
        },
        {"params": head, "lr": cfg.lr * cfg.head_lr_mult, "name": "head"},
    ]
    if classifier is not None:
        groups.append(
            {
                "params": list(classifier.parameters()),
                "lr": cfg.lr * cfg.classifier_lr_mult,
                "name": "classifier",
            }
        )
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: EmbeddingModel, classifier: nn.Module | None, cfg: TrainConfig
) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW over `param_groups`, weight decay on every group."""
    groups = param_groups(model, classifier, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Linear warm-up over `warmup_epochs`, then constant or cosine down to 1 % of the peak."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1.0, total - warm))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))
