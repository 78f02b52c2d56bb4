"""The abstract components a modality plugin implements, and the small data types they share.

Data flows: SampleFolder.load(path) → Frontend (cached, deterministic) → Features.prepare (CPU,
per sample, in DataLoader workers; augmentation/crops when training) → Features.collate →
Features.forward (batched, on the training device) → Backbone → Head → Objective / Scorer.

Each component declares the kinds of value it accepts and yields (`accepts`, `yields`; see
contract.py), and `resolve` checks the whole chain before any data is read.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from metaemb.core.plugin.contract import ANY, FEATURES, SAME, Kind
from metaemb.core.plugin.sample_folder import Sample, SampleFolder, Trial

__all__ = [
    "Augmentation",
    "Backbone",
    "BatchSampler",
    "Features",
    "Frontend",
    "Head",
    "IdentityFrontend",
    "Objective",
    "Sample",
    "SampleFolder",
    "Scorer",
    "Trial",
]


# ---------------------------------------------------------------------------------------------
class Frontend(abc.ABC):
    """Raw sample → normalised raw sample (face alignment, speech activity detection).

    Deterministic, so its results can be cached per sample (real file location + size + mtime + key()).
    Declares `accepts` (a Kind or tuple of Kinds) and `yields` (a Kind, or SAME to pass the
    input's kind through); given a value it cannot use, `__call__` raises DataError.
    """

    accepts: ClassVar[Kind | tuple[Kind, ...] | None] = None
    yields: ClassVar[Kind | None] = None

    def key(self) -> str:
        """Identity of this frontend's configuration, used in cache keys."""
        return type(self).__name__

    @abc.abstractmethod
    def __call__(self, raw: Any, path: str, root: Path) -> Any:
        """Process `raw`, read from `root / path`."""


class IdentityFrontend(Frontend):
    """Leaves samples as they are."""

    accepts = ANY
    yields = SAME

    def __call__(self, raw: Any, path: str, root: Path) -> Any:
        return raw


# ---------------------------------------------------------------------------------------------
class Features(nn.Module):
    """Normalised raw → network input.

    `prepare` runs per sample on the CPU (in DataLoader workers): decoding to a tensor, training
    crops and augmentation. `collate` batches (padding variable lengths). `forward` runs batched on
    the training device (e.g. a speech filterbank on the GPU). `out_channels` tells backbones the
    input width (3 for RGB, 80 for an 80-band filterbank). Declares `accepts` and `yields`
    (Kinds); `prepare` raises DataError when given a value it cannot use.
    """

    accepts: ClassVar[Kind | tuple[Kind, ...] | None] = None
    yields: ClassVar[Kind | None] = None
    out_channels: int = 1
    # options that only change `test_views` (not training): the commands that use a trained
    # run let `--features-set` change them (e.g. a flip test on a run trained without it)
    test_options: ClassVar[tuple[str, ...]] = ()
    # those of them that change the views embedded, which are part of the model's digest;
    # None: every test option (list fewer only for options that are no view, such as a crop)
    view_options: ClassVar[tuple[str, ...] | None] = None

    @abc.abstractmethod
    def prepare(self, raw: Any, train: bool) -> Tensor:
        """One sample → tensor (no batch dimension)."""

    def collate(self, items: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """Stack same-shaped samples; variable-length modalities pad and return lengths."""
        return torch.stack(list(items)), None

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        return x, lengths

    def test_views(self, x: Tensor) -> list[Tensor]:
        """Test-time augmentation: the views of a batch of network input (forward's output)
        that evaluation embeds and averages, e.g. a picture and its mirror. Used only outside
        training, by every command and the export; a view keeps x's shape and lengths. The
        default is the input alone."""
        return [x]

    def baseline_embedding(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The no-learning baseline that shows a task is real: the network input itself,
        flattened, for fixed-size inputs (raw pixels); for sequences [N, C, T] with lengths,
        each channel's mean and standard deviation over the valid time steps (statistics
        pooling; the mean alone is ~0 for inputs standardised per sample). Override it for a
        better-known baseline of the modality, and name it with `Modality.baseline_name`."""
        out = self.forward(x, lengths)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Tensor)):
            raise TypeError(
                f"forward must return (tensor, lengths or None); it returned {type(out).__name__}"
            )
        x, lengths = out
        if lengths is None:
            return x.flatten(1).float()
        x = x.float()
        mask = (torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]).float()
        n = lengths[:, None].clamp(min=1).float()
        mean = (x * mask[:, None, :]).sum(-1) / n
        var = (((x - mean[..., None]) ** 2) * mask[:, None, :]).sum(-1) / n
        return torch.cat([mean, var.sqrt()], dim=1)

    def input_spec(self) -> dict[str, Any]:
        """What travels with checkpoints so evaluation prepares inputs exactly as training did."""
        return {}


# ---------------------------------------------------------------------------------------------
class Augmentation(nn.Module):
    """Training-batch augmentation, run batched on the training device (never at evaluation).

    `stage` says where it acts: "input" — the collated batch before `Features.forward` (e.g.
    waveforms); "features" — the network input after it (e.g. a filterbank). `accepts` names the
    data kind it can augment (a `Kind`, checked against the kind the features accept or yield
    when they declare it). `forward(x, lengths, labels)` returns the augmented (x, lengths, labels): it may
    change lengths, and may map labels to new identities when `num_classes` says so.
    """

    stage: ClassVar[str] = "input"  # or "features"
    accepts: ClassVar[Any] = None  # a contract Kind: the features' input or output kind

    def setup(self, input_spec: dict[str, Any]) -> None:
        """Called once with the features' `input_spec()` (e.g. to learn the sample rate)."""

    def num_classes(self, num_identities: int) -> int:
        """Classes the classifier needs once this augmentation has run (more if it makes new
        identities, as speed perturbation does)."""
        return num_identities

    @abc.abstractmethod
    def forward(
        self, x: Tensor, lengths: Tensor | None, labels: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor]: ...


# ---------------------------------------------------------------------------------------------
class Backbone(nn.Module):
    """Input batch → pooled features [N, feature_dim]. `trunk()` is what freezing freezes.

    `accepts` names the Features output it takes (e.g. Kind("feature-matrix")); a factory
    function declares it with `register(name, fn, accepts=Kind(...))`."""

    accepts: ClassVar[Kind | tuple[Kind, ...] | None] = None
    yields: ClassVar[Kind] = FEATURES
    feature_dim: int = 0
    # Ships trained weights (a distillation teacher or reference model by name), and is never
    # trained (no gradient). A pretrained backbone may set `input_size` for its own preprocessing.
    pretrained: ClassVar[bool] = False
    frozen: ClassVar[bool] = False

    @abc.abstractmethod
    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor: ...

    def trunk(self) -> nn.Module:
        return self


class Head(nn.Module):
    """Pooled features → embedding: a point [N, d] or a Gaussian meta-embedding (a, b)."""

    accepts: ClassVar[Kind] = FEATURES
    output: ClassVar[str] = "point"  # or "gme": yields EMBEDDING or GME (contract.py)
    dim: int = 0

    def calibration_parameters(self) -> dict[str, float]:
        """Parameters that set the score scale (name → LR multiplier), e.g. a GME head's precision
        biases. They must keep tracking the representation until the last step, so the engine
        gives each its own optimizer group without weight decay and without LR decay after
        warm-up. None by default."""
        return {}

    # Optional capability: starting from training-set features (train.init_head_from_plda).
    def feature_init_problem(self) -> str | None:
        """None when `init_from_features` can initialise this head as configured; else why not
        (the engine refuses the option with this reason before any work)."""
        return f"head '{type(self).__name__}' cannot initialise from features (try model.head=gme)"

    def init_from_features(self, features: Tensor, labels: Tensor) -> Any:
        """Initialise from pooled training features [N, in_features] and their labels [N]."""
        raise NotImplementedError(self.feature_init_problem())


# ---------------------------------------------------------------------------------------------
class Objective(abc.ABC):
    """(embeddings or GMEs, labels) → loss.

    `batch` names the sampler it needs ("random", "pk", "pairs", "subject", "mixed"); `needs`
    says whether it wants point embeddings or GMEs. Class weights live in the module returned
    by `build_classifier` (own parameter group and checkpoint key), never inside the loss.
    `needs` is its `accepts` in the data contract ("point" → EMBEDDING, "gme" → GME, "any"); a
    composite declares `accepts` as a callable of its options instead.
    """

    batch: ClassVar[str] = "random"
    needs: ClassVar[str] = "point"

    def __init__(self) -> None:
        self.epoch = 0
        self.stats: dict[str, float] = {}

    def build_classifier(self, dim: int, num_classes: int) -> nn.Module | None:
        return None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def end_epoch(self) -> list[str]:
        """Warnings to report after an epoch (e.g. a collapsed triplet loss)."""
        return []

    # Optional capability: learning from a frozen teacher (train.teacher). When `teacher_kind()`
    # is "embedding" or "logits", the engine runs the teacher on each batch and sets
    # `teacher_outputs` (its embeddings or logits) just before calling the objective.
    teacher_outputs: Tensor | None = None

    def teacher_kind(self) -> str | None:
        """What the objective wants from a teacher: None (no teacher), "embedding" or "logits"."""
        return None

    @abc.abstractmethod
    def __call__(self, embeddings: Any, labels: Tensor, classifier: nn.Module | None) -> Tensor: ...


# ---------------------------------------------------------------------------------------------
class BatchSampler(abc.ABC):
    """Yields lists of dataset indices; deterministic given (seed, epoch); rank r of w gets a
    disjoint share of the batches."""

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.labels = list(labels)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # Optional capability: re-mining batches from the current model. When true, the engine calls
    # `update` after every epoch (and on resume) with the embeddings of the training samples.
    updates_from_embeddings: ClassVar[bool] = False

    def update(self, embeddings: Any, indices: Tensor | None = None) -> None:
        """Embeddings of the training samples in dataset order (or of those at `indices`, when
        some could not be read)."""
        return None

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    @abc.abstractmethod
    def all_batches(self) -> list[list[int]]:
        """Every batch of this epoch, for all ranks (the same on every rank)."""

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.all_batches()
        usable = (
            len(batches) - len(batches) % self.world_size if self.world_size > 1 else len(batches)
        )
        yield from batches[self.rank : usable : self.world_size]

    def __len__(self) -> int:
        n = len(self.all_batches())
        return n // self.world_size if self.world_size > 1 else n


# ---------------------------------------------------------------------------------------------
class Scorer(abc.ABC):
    """Scores pairs of embeddings (or GMEs): higher = more likely the same identity.

    `fit` is optional (PLDA, calibration, training-mean). `score_matrix` is chunked so memory stays
    bounded. State is a dict of tensors (saved with the run, no pickle).
    """

    needs: ClassVar[str] = "point"  # "point", "gme" or "any": its `accepts` (contract.py)
    requires_fit: ClassVar[bool] = False

    def fit(self, embeddings: Any, labels: Tensor) -> None:
        return None

    def check_fit_data(self, labels: Tensor) -> None:
        """Called before training with the labels `fit` will get (one per training sample),
        so a scorer that cannot fit on so few samples or identities says so before the first
        epoch instead of after it. Default: nothing."""
        return None

    def adapt(self, embeddings: Any) -> bool:
        """Label-free adaptation to the data about to be scored (all of its embeddings, e.g.
        every file a trial list names), called before scoring it; True when it adapted.
        Default: nothing."""
        return False

    @abc.abstractmethod
    def score_matrix(self, enroll: Any, test: Any) -> Tensor:
        """All-vs-all scores [N_enroll, N_test]."""

    def score(self, enroll: Any, test: Any) -> Tensor:
        """Scores of aligned pairs (enroll[i], test[i]) → [N]."""
        n = len(enroll)
        out = [self.score_matrix(enroll[i : i + 1], test[i : i + 1])[0, 0] for i in range(n)]
        return torch.stack(out) if out else torch.zeros(0)

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        return None
