"""The abstract components a modality plugin implements, and the small data types they share.

Data flows: SampleFolder.load(path) → Frontend (cached, deterministic) → Features.prepare (CPU,
per sample, in DataLoader workers; augmentation/crops when training) → Features.collate →
Features.forward (batched, on the training device) → Backbone → Head → Objective / Scorer.

Each component declares the kinds of value it accepts and yields (`accepts`, `yields`; see
contract.py), and `resolve` checks the whole chain before any data is read.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from metaemb.core.data.scan import ScanState, scan_identity, warn_same_looking, warn_skipped
from metaemb.core.errors import DataError, PluginError, first_few
from metaemb.core.plugin.contract import ANY, FEATURES, SAME, Kind


@dataclass(frozen=True)
class Sample:
    """One file of a SampleFolder: its path relative to the root, its identity and label index."""

    path: str
    identity: str
    label: int


@dataclass(frozen=True)
class Trial:
    """A verification trial: enrollment sample(s) vs a test sample; label 1 target, 0 non-target."""

    enroll: tuple[str, ...]
    test: str
    label: int | None = None


# ---------------------------------------------------------------------------------------------
class SampleFolder(torch.utils.data.Dataset, abc.ABC):
    """A root of `<identity>/…/<sample>` files; the identity is the first path component.

    Scans deterministically (sorted), reports empty identities and unknown roots by path, and
    splits by identity so train and validation identities are disjoint.
    """

    extensions: ClassVar[tuple[str, ...]] = ()
    what: ClassVar[str] = "sample"  # word used in messages ("picture", "recording")
    # What `load` returns, e.g. Kind("waveform", rate=Opt("sample_rate")); None = undeclared.
    yields: ClassVar[Kind | None] = None
    # Constructor arguments that are not user options (`subset` passes the samples).
    internal: ClassVar[frozenset[str]] = frozenset({"samples"})

    def __init__(self, root: str | Path, samples: Sequence[Sample] | None = None) -> None:
        self.root = Path(root)
        scanned = samples is None
        if samples is None:
            samples = self._scan()
        self.samples: list[Sample] = list(samples)
        self.identities: list[str] = sorted({s.identity for s in self.samples})
        if scanned:
            warn_same_looking(self.identities, self.root)
        index = {name: i for i, name in enumerate(self.identities)}
        # Labels are re-indexed so every subset has labels 0..n_identities-1.
        self.samples = [Sample(s.path, s.identity, index[s.identity]) for s in self.samples]

    # -- scanning ------------------------------------------------------------------------
    def _scan(self) -> list[Sample]:
        root = self.root
        if not root.exists():
            raise DataError(f"data folder '{root}' does not exist.")
        if not root.is_dir():
            raise DataError(
                f"data path '{root}' is not a folder of <identity>/<{self.what}> files."
            )
        exts = {e.lower() for e in self.extensions}
        # A large tree is listed once and reused while its directories are unchanged.
        from metaemb.core.data.manifest import cached_scan

        kind = f"{type(self).__module__}.{type(self).__qualname__}"
        paths = cached_scan(root, kind, exts, lambda: self._walk(root, exts))
        named = ((rel, self._checked_identity(rel)) for rel in paths)
        return [Sample(rel, identity, -1) for rel, identity in named if identity is not None]

    def _checked_identity(self, path: str) -> str | None:
        """`identity_of(path)`, refused unless it is None or a name: an identity of 3, b"u1"
        or "" would be sorted, printed and compared with the others as if it were one."""
        identity = self.identity_of(path)
        if identity is None or (isinstance(identity, str) and identity.strip()):
            return identity
        raise PluginError(
            f"{type(self).__qualname__}.identity_of({path!r}) returned {identity!r:.60}; it must "
            "return the sample's identity as a non-empty str, or None to leave the file out."
        )

    def identity_of(self, path: str) -> str | None:
        """The identity of the sample at relative `path` (its first folder), or None to leave
        the file out. Override it for data whose folders hold other material too: skilled
        forgeries in `u001/forgery/…` become `u001/forgery` (an identity of their own, so a
        genuine-forgery trial is a non-target), or are left out of a training folder."""
        return path.split("/", 1)[0]

    def subject_of(self, identity: str) -> str:
        """The person an identity belongs to: its first path component, so `u001/forgery` is
        u001's. Identities of one subject stay on one side of the train/validation split and
        count as seen in training together; override it when identity names say it otherwise."""
        return identity.split("/", 1)[0]

    def _walk(self, root: Path, exts: set[str]) -> tuple[list[str], list[str]]:
        """(relative sample paths, real paths of the folders listed): the full scan."""
        paths: list[str] = []
        empty: list[str] = []
        identity_dirs = sorted(
            p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not identity_dirs:
            raise DataError(
                f"data folder '{root}' has no identity sub-folders; expected <identity>/<{self.what}> "
                f"files with extensions {', '.join(sorted(exts))}."
            )
        # Symlinks are followed, tracked by real path: no loops, aliases or duplicate files.
        state = ScanState(os.path.realpath(root))
        for ident_dir in identity_dirs:
            found = scan_identity(root, ident_dir, exts, state)
            if found is None:
                continue  # a link back to the root, or an alias of another identity folder
            if not found:
                empty.append(ident_dir.name)
            paths.extend(found)
        warn_skipped(root, state, self.what)
        if empty:
            shown = first_few(root / e for e in empty)
            raise DataError(
                f"{len(empty)} identity folder(s) under '{root}' contain no {self.what} files "
                f"({', '.join(sorted(exts))}): {shown}. Remove them or add {self.what}s."
            )
        return paths, sorted(state.dirs)

    # -- structure -----------------------------------------------------------------------
    @property
    def num_identities(self) -> int:
        return len(self.identities)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def by_identity(self) -> dict[int, list[int]]:
        """label → indices of its samples, in scan order."""
        index: dict[int, list[int]] = {}
        for i, s in enumerate(self.samples):
            index.setdefault(s.label, []).append(i)
        return index

    def subset(self, identities: Sequence[str]) -> SampleFolder:
        """A folder of the same kind restricted to some identities (labels re-indexed)."""
        keep = set(identities)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        SampleFolder.__init__(new, self.root, [s for s in self.samples if s.identity in keep])
        return new

    def split(self, val_fraction: float, seed: int = 0) -> tuple[SampleFolder, SampleFolder]:
        """Split by subject into disjoint (train, validation) folders, deterministically: all
        identities of one subject (`subject_of`) fall on the same side, so a user's forgeries
        never train while the user's genuine samples validate."""
        subjects: dict[str, list[str]] = {}
        for name in self.identities:  # sorted, so subjects come in a fixed order
            subjects.setdefault(self._checked_subject(name), []).append(name)
        groups = list(subjects.values())
        n_val = max(2, round(len(groups) * val_fraction))
        if len(groups) - n_val < 2:
            what = "identities" if len(groups) == self.num_identities else "subjects"
            raise DataError(
                f"data folder '{self.root}' has {len(groups)} {what}: too few to hold out "
                f"{n_val} for validation and train on the rest (need at least {n_val + 2})."
            )
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(groups), generator=g).tolist()
        val = sorted(name for i in order[:n_val] for name in groups[i])
        train = sorted(name for i in order[n_val:] for name in groups[i])
        return self.subset(train), self.subset(val)

    def _checked_subject(self, identity: str) -> str:
        subject = self.subject_of(identity)
        if isinstance(subject, str) and subject.strip():
            return subject
        raise PluginError(
            f"{type(self).__qualname__}.subject_of({identity!r}) returned {subject!r:.60}; it "
            "must return the name of the person the identity belongs to as a non-empty str."
        )

    def abspath(self, sample: Sample | str) -> Path:
        return self.root / (sample.path if isinstance(sample, Sample) else sample)

    # -- loading -------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self, path: Path) -> Any:
        """Read one raw sample; raise DataError naming the path when it is unreadable."""

    @classmethod
    def examples(cls) -> list[Any]:
        """A few synthetic raw samples of the kind `load` returns, of different lengths where
        the kind varies in length; metaemb's conformance test feeds them to the features and
        backbones that take this kind (a new kind of data is otherwise skipped there)."""
        return []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        s = self.samples[i]
        return self.load(self.abspath(s)), s.label


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

    @abc.abstractmethod
    def prepare(self, raw: Any, train: bool) -> Tensor:
        """One sample → tensor (no batch dimension)."""

    def collate(self, items: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """Stack same-shaped samples; variable-length modalities pad and return lengths."""
        return torch.stack(list(items)), None

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        return x, lengths

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
