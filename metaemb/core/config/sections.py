"""The configuration's schema: the core sections (data, model, train, eval) as dataclasses, and
the tables that say which sections choose components and which keys leave a run's hash alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    root: str = ""  # "" = the modality's built-in demo dataset
    folder: str = ""  # sample-folder component; "" = the modality's default
    val_fraction: float = 0.25  # identities held out for validation
    # which identities are held out, and the validation trials: -1 follows train.seed; fix it
    # (e.g. 0) for a seed study whose runs should all validate on the same identities
    split_seed: int = -1
    workers: int = 2  # DataLoader worker processes (runtime only: not part of the run hash)
    on_bad_sample: Literal["error", "skip"] = "error"
    cache_dir: str = ""  # "" = $METAEMB_CACHE or ~/.cache/metaemb (runtime only)
    # Where a relative `root` pointed when the run was trained, so the run evaluates from any
    # working directory (runtime only: not part of the run hash).
    root_absolute: str = ""


@dataclass
class ModelConfig:
    frontend: str = ""  # "" = the modality's default
    features: str = ""
    backbone: str = ""
    head: str = "linear"  # "linear" (point embedding) or "gme" (Gaussian meta-embedding)
    dim: int = 128


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9  # SGD only
    warmup_epochs: float = 1.0
    schedule: Literal["cosine", "constant", "onecycle"] = "cosine"  # onecycle: cosine momentum
    grad_clip: float = 5.0  # max gradient norm; 0 disables
    objective: str = "softmax"
    sampler: str = ""  # "" = the batch structure the objective asks for
    classifier_lr_mult: float = 1.0  # LR multiplier of the class-weight module
    head_lr_mult: float = 1.0  # LR multiplier of the embedding head (e.g. GME precisions)
    freeze_trunk_epochs: int = 0
    init_head_from_plda: bool = False  # GME head: fit PLDA on training features before epoch 1
    teacher: str = ""  # run dir or checkpoint of a frozen teacher (objective "distill")
    init_from: str = ""  # warm start: a run dir or checkpoint whose weights start this run
    init_parts: Literal["backbone", "backbone+head", "all"] = "backbone+head"  # init_from loads
    init_distill: float = 0.0  # continual learning: λ of an embedding-KD term to the init model
    rehearsal: int = 0  # continual learning: old samples per old identity mixed into training
    snapshot_every: int = 0  # also keep snapshot-epochNNN.pt every N epochs (0: none)
    tensorboard: bool = False  # log to RUN/tensorboard (the tensorboard extra)
    augment: list[str] = field(default_factory=list)  # augmentations, in order ([augment.<name>])
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA
    compile: bool = False
    channels_last: bool = True


@dataclass
class EvalConfig:
    scorer: str = ""  # "" = cosine for point embeddings, gme for meta-embeddings
    max_targets: int = 4000  # validation target trials (all pairs when fewer)
    nontargets: int = 4000  # validation non-target trials
    p_targets: list[float] = field(default_factory=lambda: [0.01, 0.05])
    select: Literal["eer", "min_dcf", "cllr"] = "eer"  # best-checkpoint criterion (lower wins)
    batch_size: int = 64
    # evaluate: re-estimate the network's BatchNorm statistics on the scored files (AdaBN), a
    # label-free adaptation to their domain; `evaluate --no-adapt` turns it off.
    adapt_batchnorm: bool = False


CORE_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig}
# component section -> (registry kind, how to find the chosen name)
COMPONENT_SECTIONS = {
    "folder": "sample_folders",
    "frontend": "frontends",
    "features": "features",
    "backbone": "backbones",
    "head": "heads",
    "objective": "objectives",
    "sampler": "samplers",
    "scorer": "scorers",
    "demo": "demo_data",
}
# component section -> the core field that chooses its component
CHOICE_FIELDS = {
    "folder": ("data", "folder"),
    "frontend": ("model", "frontend"),
    "features": ("model", "features"),
    "backbone": ("model", "backbone"),
    "head": ("model", "head"),
    "objective": ("train", "objective"),
    "sampler": ("train", "sampler"),
    "scorer": ("eval", "scorer"),
}
TOP_LEVEL = {"name": str, "modality": str}
RUNTIME_KEYS = {
    ("data", "workers"),
    ("data", "cache_dir"),
    ("data", "root_absolute"),
    ("train", "snapshot_every"),
    ("train", "tensorboard"),
}
# Core fields added after run hashes were first published: left out of the hash at these values,
# so configurations that do not use them keep their run folders.
HASH_NEUTRAL = {
    ("data", "split_seed"): -1,
    ("train", "augment"): [],
    ("train", "init_from"): "",
    ("train", "init_parts"): "backbone+head",
    ("train", "init_distill"): 0.0,
    ("train", "rehearsal"): 0,
    ("eval", "adapt_batchnorm"): False,
}
