"""Embedding extraction: each sample once, in order, batched on the device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from metaemb.core.data.dataset import Bad, PreparedDataset
from metaemb.core.data.loaders import make_loader
from metaemb.core.errors import DataError, MetaembError, first_line


def concat(outputs: list[Any]) -> Any:
    """Concatenate batch outputs: tensors, or any embedding type with a `cat` classmethod (GME)."""
    if isinstance(outputs[0], Tensor):
        return torch.cat(outputs)
    return type(outputs[0]).cat(outputs)


def non_finite_rows(out: Any) -> list[int]:
    """Rows of an embedding batch (a tensor, or a GME's a and b) holding NaN or ±inf."""
    parts = [out] if isinstance(out, Tensor) else [out.a, out.b]
    bad = torch.zeros(len(parts[0]), dtype=torch.bool)
    for t in parts:
        bad |= ~torch.isfinite(t.reshape(len(t), -1)).all(dim=1).cpu()
    return bad.nonzero().flatten().tolist()


def row_files(folder: Any, indices: Any, rows: list[int], shown: int = 3) -> str:
    """ "'a.png', 'b.png' …": the files of some embedding rows (`indices[row]` is the row's
    folder index), for messages."""
    names = ", ".join(f"'{folder.samples[int(indices[r])].path}'" for r in rows[:shown])
    return names + (" …" if len(rows) > shown else "")


def to_device(out: Any, device: torch.device | str) -> Any:
    return out.to(device)


def length_groups(lengths: Tensor) -> list[Tensor]:
    """Indices of a padded batch in groups of similar length, each padded to its own longest:
    one 10-minute recording among 63 short ones padded all 64 to 10 minutes (and ran the
    device out of memory). One group when padding is under half the batch."""
    n, longest = len(lengths), int(lengths.max())
    real = int(lengths.sum())
    if n < 2 or n * longest <= 2 * real:
        return [torch.arange(n)]
    groups, current = [], []
    for i in torch.argsort(lengths).tolist():  # shortest first: each group pads to its last
        size = int(lengths[i])
        if current and (len(current) + 1) * size > real:  # the batch's real size bounds each
            groups.append(torch.tensor(current))
            current = []
        current.append(i)
    groups.append(torch.tensor(current))
    return groups


def run_grouped(
    fn: Callable[[Tensor, Tensor | None], Any], x: Tensor, lengths: Tensor | None
) -> Any:
    """`fn(x, lengths)`, run on groups of similar length when padding dominates the batch,
    with the outputs put back in the batch's order."""
    if lengths is None:
        return fn(x, lengths)
    groups = length_groups(lengths.cpu())
    if len(groups) == 1:
        return fn(x, lengths)
    outs = []
    for g in groups:
        g = g.to(x.device)
        sub = lengths[g]
        outs.append(fn(x[g][..., : int(sub.max())], sub))
    if not isinstance(outs[0], Tensor) and not hasattr(outs[0], "__getitem__"):
        return fn(x, lengths)  # an embedding type that cannot be reordered: as one batch
    order = torch.argsort(torch.cat(groups)).to(x.device)
    return concat(outs)[order]


@torch.no_grad()
def extract(
    fn: Callable[[Tensor, Tensor | None], Any],
    dataset: PreparedDataset,
    device: torch.device | str,
    batch_size: int = 64,
    workers: int = 0,
    autocast: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[Any, Tensor, list[Bad]]:
    """Run `fn(inputs, lengths)` over the dataset in order.

    Returns (outputs as float32 on the CPU, the folder indices they belong to, skipped samples);
    the indices differ from `dataset.indices` only when bad samples were skipped.
    """
    outs: list[Any] = []
    kept: list[Tensor] = []
    bad: list[Bad] = []
    loader = make_loader(dataset, workers, batch_size=batch_size)
    device = torch.device(device)
    for batch in loader:
        bad.extend(batch.bad)
        if len(batch) == 0:
            continue
        x = batch.inputs.to(device, non_blocking=True)
        lengths = batch.lengths.to(device) if batch.lengths is not None else None
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = run_grouped(fn, x, lengths)
        except (MetaembError, MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # a plugin network failing on a batch it did not train on
            why = first_line(exc)
            if "allocate" in why and "memory" in why.lower():  # the CPU allocator's OOM
                raise MetaembError(
                    f"out of memory embedding a batch of {len(batch)} inputs {list(x.shape)} "
                    f"({row_files(dataset.folder, batch.indices, list(range(len(batch))))}): "
                    "lower eval.batch_size, or the longest input the features keep."
                ) from exc
            raise MetaembError(
                f"the network failed embedding a batch of {len(batch)} "
                f"({row_files(dataset.folder, batch.indices, list(range(len(batch))))}, inputs "
                f"{list(x.shape)}): {type(exc).__name__}: {why}. Every component must "
                "take any batch size, a batch of one included, in evaluation mode."
            ) from exc
        kept.append(batch.indices)
        outs.append(
            to_device(out.float() if isinstance(out, Tensor) else out.to(torch.float32), "cpu")
        )
        if on_batch is not None:
            on_batch(len(batch))
    if not outs:
        first = f" First: '{bad[0].path}': {bad[0].error}" if bad else ""
        raise DataError(
            f"none of the {len(dataset)} samples asked for under '{dataset.folder.root}' could "
            f"be read and prepared.{first}"
        )
    return concat(outs), torch.cat(kept), bad
