"""Registered pretrained backbones as distillation teachers and reference models.

A backbone whose class declares `pretrained = True` (a plugin can add more) is usable by name
where a run is expected: `train.teacher = NAME` (`metaemb distill --teacher NAME`) runs the
student's input features through it, frozen; `metaemb evaluate --reference NAME --data DIR`
scores a dataset with it as the embedding, so a trained model can be compared against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metaemb.core.config import Config
from metaemb.core.errors import ConfigError


def is_pretrained_name(name: str) -> bool:
    """True when `name` is not a file or folder and names a registered pretrained backbone."""
    from metaemb.core.plugin.manager import registry

    if not name or Path(name).exists() or name not in registry("backbones"):
        return False
    return bool(getattr(registry("backbones").get(name), "pretrained", False))


class PretrainedModel(nn.Module):
    """Features → a frozen pretrained backbone; the backbone's output is the embedding."""

    def __init__(self, features: nn.Module, backbone: nn.Module) -> None:
        super().__init__()
        self.features, self.backbone = features, backbone
        self.head = _PointHead(backbone.feature_dim)
        self.requires_grad_(False)

    @torch.no_grad()
    def pooled(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        x, lengths = self.features(x, lengths)
        return self.backbone(x, lengths)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.pooled(x, lengths)


class _PointHead(nn.Identity):
    output = "point"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim


def build_pretrained(name: str, config: Config) -> PretrainedModel:
    """Backbone `name` on the input features of `config` (frozen, eval mode)."""
    from metaemb.core.plugin.components import build

    factory_ok = is_pretrained_name(name)
    if not factory_ok:
        raise ConfigError(
            f"'{name}' is neither a run directory, a checkpoint nor a registered pretrained "
            "backbone (`metaemb list backbones`)."
        )
    features = build("features", config.model.features, config.options("features"))
    backbone = build("backbones", name, {}, in_channels=features.out_channels)
    return PretrainedModel(features, backbone).eval()


def pretrained_teacher(config: Config, device: torch.device) -> Any:
    """The frozen teacher of `train.teacher = NAME` for a pretrained backbone NAME."""
    from metaemb.core.train.model import Teacher

    return Teacher(build_pretrained(config.train.teacher, config)).to(device)  # type: ignore[arg-type]


def reference_run(name: str, modality: str, data: Path, device: str = "auto") -> Any:
    """A LoadedRun-like reference model for `evaluate --reference NAME --data DIR`: the
    modality's pipeline with the options the backbone declares for its input
    (`input_options`, e.g. the input size it was trained at)."""
    from metaemb.core.config import resolve
    from metaemb.core.data.pipeline import Components
    from metaemb.core.deploy.loading import LoadedRun
    from metaemb.core.plugin.components import build
    from metaemb.core.plugin.manager import registry
    from metaemb.core.train.device import pick_device

    if not is_pretrained_name(name):
        build_pretrained(name, resolve(modality))  # raises the clear error
    sets = [f'data.root="{Path(data)}"', f'name="reference-{name}"']
    factory = registry("backbones").get(name)
    own = getattr(factory, "input_options", {}) or {}
    sets += [f"{k}={json.dumps(v)}" for k, v in own.items()]  # its own preprocessing
    note = getattr(factory, "reference_note", "")
    if isinstance(note, str) and note:  # what its inputs must already be (e.g. aligned)
        import warnings

        warnings.warn(f"reference '{name}': {note}", stacklevel=2)
    cfg = resolve(modality, None, sets)
    model = build_pretrained(name, cfg)
    dev = pick_device(device)
    model.to(dev)
    folder = build("sample_folders", cfg.data.folder, cfg.options("folder"), root=Path(data))
    frontend = build("frontends", cfg.model.frontend, cfg.options("frontend"), root=Path(data),
                     cache_dir=None)  # fmt: skip
    parts = Components(cfg, Path(data), folder, frontend, model.features, model)  # type: ignore[arg-type]
    saved = cfg.to_dict()
    saved["data"]["root"] = ""  # trained on none of our folders: evaluate uses all identities
    state = {"model": {}, "config": saved, "config_hash": cfg.hash(), "scorer": {}}
    return LoadedRun(Path(f"reference-{name}"), cfg, state, model, dev, parts)  # type: ignore[arg-type]
