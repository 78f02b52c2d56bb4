"""Optimizer parameter groups and the learning-rate schedule of the engine.

Three groups, each with its own LR multiplier: the trunk ("model": features + backbone), the
embedding head ("head", `train.head_lr_mult`) and the objective's class weights ("classifier",
`train.classifier_lr_mult`; never exported). A head may ask for further multipliers on named
parameters (`Head.calibration_parameters`, e.g. a GME head's precision scale); each gets a group
"head.<name>" without weight decay whose LR stays at its peak after warm-up.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import torch
from torch import nn

from metaemb.core.config import TrainConfig
from metaemb.core.errors import ConfigError
from metaemb.core.train.model import EmbeddingModel


def param_groups(
    model: EmbeddingModel, classifier: nn.Module | None, cfg: TrainConfig
) -> list[dict]:
    """The named parameter groups; every parameter is in exactly one, empty groups are left out."""
    mults = getattr(model.head, "calibration_parameters", dict)()  # plugin heads may lack it
    named = dict(model.head.named_parameters())
    unknown = sorted(set(mults) - set(named))
    if unknown:
        raise ConfigError(
            f"head {type(model.head).__name__}: calibration_parameters names unknown parameter(s) "
            f"{', '.join(unknown)}; it has {', '.join(named)}"
        )
    in_head = {id(p) for p in named.values()}
    head_lr = cfg.lr * cfg.head_lr_mult
    groups = [
        {
            "params": [p for p in model.parameters() if id(p) not in in_head],
            "lr": cfg.lr,
            "name": "model",
        },
        {
            "params": [p for n, p in named.items() if n not in mults],
            "lr": head_lr,
            "name": "head",
        },
    ]
    groups += [
        {
            "params": [named[n]],
            "lr": head_lr * m,
            "weight_decay": 0.0,
            "schedule": "constant",
            "name": f"head.{n}",
        }
        for n, m in mults.items()
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
    """SGD (Nesterov momentum) or AdamW over `param_groups`; weight decay where a group sets none."""
    groups = param_groups(model, classifier, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Linear warm-up over `warmup_epochs`, then constant or cosine down to 1 % of the peak
    (`onecycle`: core/train/onecycle.py)."""
    if cfg.schedule == "onecycle":
        from metaemb.core.train.onecycle import onecycle_factor

        return onecycle_factor(step, cfg, steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1.0, total - warm))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_factor` for every group; groups marked schedule="constant" only warm up."""
    constant = replace(cfg, schedule="constant")
    factors = [
        partial(
            lr_factor,
            cfg=constant if g.get("schedule") == "constant" else cfg,
            steps_per_epoch=steps_per_epoch,
        )
        for g in optimizer.param_groups
    ]
    if cfg.schedule == "onecycle":
        from metaemb.core.train.onecycle import CosineMomentumLR

        return CosineMomentumLR(optimizer, factors, cfg, steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
