"""The sample pipeline shared by training, evaluation and enrollment: load → frontend → prepare.

Bad samples either stop the run with the file named (`data.on_bad_sample = "error"`) or are
skipped, counted and listed (`"skip"`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from metaemb.core.errors import DataError
from metaemb.core.plugin.contract import name_file
from metaemb.core.plugin.interfaces import Features, Frontend, SampleFolder


@dataclass
class Bad:
    """Marker for a sample that failed to load (only with on_bad_sample='skip')."""

    index: int
    path: str
    error: str


class PreparedDataset(Dataset):
    """Items are (tensor, label, index) for the samples of `folder` (optionally a subset)."""

    def __init__(
        self,
        folder: SampleFolder,
        frontend: Frontend,
        features: Features,
        train: bool,
        on_bad_sample: str = "error",
        indices: Sequence[int] | None = None,
    ) -> None:
        self.folder = folder
        self.frontend = frontend
        # A private CPU copy: the model's own Features may move to the GPU.
        self.features = copy.deepcopy(features).cpu()
        self.train = train
        self.on_bad_sample = on_bad_sample
        self.indices = list(range(len(folder))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int] | Bad:
        index = self.indices[i]
        sample = self.folder.samples[index]
        try:
            raw = self.folder.load(self.folder.abspath(sample))
            raw = self.frontend(raw, sample.path, self.folder.root)
            with torch.no_grad():
                x = self.features.prepare(raw, self.train)
        except DataError as exc:
            exc = name_file(exc, sample.path)  # components need not know which file they got
            if self.on_bad_sample == "skip":
                return Bad(index, sample.path, str(exc))
            raise exc from None
        return x, sample.label, index


@dataclass
class Batch:
    inputs: Tensor
    lengths: Tensor | None
    labels: Tensor
    indices: Tensor
    bad: list[Bad] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


class Collate:
    """Picklable collate function: batches prepared tensors with the Features' own collate."""

    def __init__(self, features: Features) -> None:
        self.features = features

    def __call__(self, items: list[Any]) -> Batch:
        bad = [it for it in items if isinstance(it, Bad)]
        good = [it for it in items if not isinstance(it, Bad)]
        if not good:
            return Batch(
                torch.zeros(0), None, torch.zeros(0, dtype=torch.long), torch.zeros(0), bad
            )
        inputs, lengths = self.features.collate([g[0] for g in good])
        labels = torch.tensor([g[1] for g in good], dtype=torch.long)
        indices = torch.tensor([g[2] for g in good], dtype=torch.long)
        return Batch(inputs, lengths, labels, indices, bad)


def make_loader(
    dataset: PreparedDataset,
    workers: int,
    batch_size: int | None = None,
    batch_sampler: Any = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over `dataset` (ordered batches for evaluation, or a batch sampler)."""
    kwargs: dict[str, Any] = dict(
        num_workers=workers,
        collate_fn=Collate(dataset.features),
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    if workers > 0:
        kwargs["prefetch_factor"] = 4
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)
