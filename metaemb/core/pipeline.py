"""Everything a Config builds before training or evaluation: data root, sample folder,
frontend, features and the embedding model (shared by train, evaluate and embed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from metaemb.core.components import build
from metaemb.core.config import Config
from metaemb.core.data import PreparedDataset
from metaemb.core.interfaces import SampleFolder
from metaemb.core.model import EmbeddingModel


def cache_dir(config: Config) -> Path:
    if config.data.cache_dir:
        return Path(config.data.cache_dir)
    return Path(os.environ.get("METAEMB_CACHE", Path.home() / ".cache" / "metaemb"))


def data_root(config: Config, console: Console | None = None) -> Path:
    """The data folder: --data, or the modality's demo dataset generated once into the cache."""
    if config.data.root:
        return Path(config.data.root)
    mod = config.modality_obj()
    opts = config.options("demo")
    key = "-".join(f"{k}={v}" for k, v in sorted(opts.items())) or "default"
    out = cache_dir(config) / "demo" / f"{mod.demo_data}-{key}"
    if not (out / ".complete").exists():
        if console is not None:
            console.print(f"Generating the built-in {mod.name} demo dataset into {out} (once) …")
        build("demo_data", mod.demo_data, opts, out=out)
        (out / ".complete").touch()
    return out


@dataclass
class Components:
    """Everything built from a Config: data, pipeline and network (what evaluate also needs)."""

    config: Config
    root: Path
    folder: SampleFolder
    frontend: Any
    features: Any
    model: EmbeddingModel

    @classmethod
    def build(cls, config: Config, root: Path) -> Components:
        folder = build("sample_folders", config.data.folder, config.options("folder"), root=root)
        frontend = build(
            "frontends",
            config.model.frontend,
            config.options("frontend"),
            root=root,
            cache_dir=cache_dir(config),
        )
        features = build("features", config.model.features, config.options("features"))
        backbone = build(
            "backbones",
            config.model.backbone,
            config.options("backbone"),
            in_channels=features.out_channels,
        )
        head = build(
            "heads",
            config.model.head,
            config.options("head"),
            in_features=backbone.feature_dim,
            dim=config.model.dim,
        )
        return cls(
            config, root, folder, frontend, features, EmbeddingModel(features, backbone, head)
        )

    def dataset(self, folder: SampleFolder, train: bool) -> PreparedDataset:
        return PreparedDataset(
            folder, self.frontend, self.features, train, self.config.data.on_bad_sample
        )
