"""Embedding extraction: each sample once, in order, batched on the device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from metaemb.core.data.dataset import Bad, PreparedDataset, make_loader
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
                out = fn(x, lengths)
        except (MetaembError, MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # a plugin network failing on a batch it did not train on
            why = first_line(exc)
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
