"""Checks that an exported graph is the run's model: the adapter's declared shapes against its
examples, its wrapper against the model (lengths passed on), and the exported graph against
PyTorch on batch sizes and lengths other than the traced ones."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from metaemb.core.deploy.adapter import ExportAdapter, ExportError, outputs_of
from metaemb.core.errors import MetaembError
from metaemb.core.train.model import EmbeddingModel

#: exported vs PyTorch outputs must agree to atol + rtol·max|reference| (float32 reassociation).
ATOL, RTOL = 1e-4, 1e-4
#: the adapter's wrapper vs the model itself, relative to the embeddings' largest value: loose
#: enough for a feature extractor re-expressed as a traceable graph, tight enough to catch a
#: dropped input.
WRAP_RTOL = 1e-3


def as_list(out: Any) -> list[Tensor]:
    return [out] if isinstance(out, Tensor) else list(out)


def check_declared_shapes(kind: ExportAdapter, spec: dict[str, Any]) -> None:
    """The sidecar describes the graph's inputs from `shapes()`, the graph is traced from
    `example()`: an adapter whose two disagree (3 channels declared, 1 given) would ship a
    sidecar that misdescribes its graph."""
    example, shapes = kind.example(spec, 2, 0), kind.shapes(spec)
    if not len(kind.names) == len(shapes) == len(example):
        raise ExportError(
            f"export adapter '{spec.get('kind')}': names lists {len(kind.names)} input(s) "
            f"({', '.join(kind.names)}), shapes() gives {len(shapes)} and example() returns "
            f"{len(example)}; the three describe the same inputs, in the same order."
        )
    for name, shape, x in zip(kind.names, shapes, example, strict=True):
        fits = len(shape) == x.dim() and all(
            isinstance(d, str) or int(d) == x.shape[i] for i, d in enumerate(shape)
        )
        if not fits:
            raise ExportError(
                f"export adapter '{spec.get('kind')}': shapes() gives input '{name}' as "
                f"{list(shape)} but example() makes it {list(x.shape)}; they must agree (the "
                "sidecar describes the graph's inputs from shapes())."
            )


def warn_fixed_examples(kind: ExportAdapter, spec: dict[str, Any]) -> None:
    """An adapter whose example() ignores `variant` checks the export only on the shape it was
    traced with: a length frozen in the graph would pass. Say so (the export still works)."""
    one, other = kind.example(spec, 1, 1), kind.example(spec, 3, 2)
    for name, shape, a, b in zip(kind.names, kind.shapes(spec), one, other, strict=True):
        axes = [i for i, d in enumerate(shape) if isinstance(d, str) and d != "N"]
        if axes and all(a.shape[i] == b.shape[i] for i in axes):
            warnings.warn(
                f"export adapter '{spec.get('kind')}': example() gives input '{name}' the same "
                f"size on its dynamic axes for variants 1 and 2, so the export is never checked "
                "on a size it was not traced with; make `variant` change every dynamic axis but "
                "the batch.",
                stacklevel=2,
            )


def warn_untrained_shape(kind: ExportAdapter, spec: dict[str, Any], trained: Any) -> None:
    """An adapter whose examples differ in shape from the fixed-size inputs the model trained
    on (a square adapter borrowed for 128×64 crops) traces and checks the graph on inputs
    the model never saw: every parity check passes, and deployed embeddings differ. Say so."""
    if not trained:
        return
    example = kind.example(spec, 2, 0)[0]
    if list(example.shape[1:]) != list(trained):
        shown = ", ".join(map(str, example.shape[1:]))
        warnings.warn(
            f"export adapter '{spec.get('kind')}' traces input '{kind.names[0]}' as "
            f"[N, {shown}], but the model was trained on [N, {', '.join(map(str, trained))}]: "
            "the export is checked on inputs it never saw, and the sidecar's preprocessing is "
            "not the training one. Give the features an input_spec() (and adapter) that make "
            "what they train on.",
            stacklevel=2,
        )


def check_wrapper(model: EmbeddingModel, module: nn.Module, kind: ExportAdapter,
                  spec: dict[str, Any]) -> float:  # fmt: skip
    """Largest relative difference of the adapter's wrapper from the run's model, called as in
    training and `embed` (`model(x, lengths)`), on the adapter's examples of batch sizes 1 and
    3 (lengths differing within the batch). The export is then checked against the wrapper,
    so a wrapper that drops `lengths` or changes the model would otherwise go unseen."""
    name = spec.get("kind")
    worst = 0.0
    cases = [(b, kind.example(spec, b, variant)) for b, variant in ((1, 1), (3, 2))]
    ragged = _ragged(kind, cases[1][1])
    if ragged is not None:  # examples of one length cannot show a wrapper that drops lengths
        cases.append((3, ragged))
    for batch, inputs in cases:
        with torch.no_grad():
            got = as_list(module(*inputs))
            try:
                ref = as_list(outputs_of(model(*kind.model_inputs(inputs))))
            except MetaembError:
                raise
            except Exception as exc:
                raise ExportError(
                    f"export adapter '{name}': the run's model failed on model_inputs() of the "
                    f"adapter's examples ({type(exc).__name__}: {str(exc)[:200]}); when the "
                    "graph's inputs are not the model's (x, lengths), override model_inputs()."
                ) from None
        shapes = [tuple(r.shape) for r in ref], [tuple(g.shape) for g in got]
        if shapes[0] != shapes[1]:
            raise ExportError(
                f"export adapter '{name}': its wrap(model) returns shapes {shapes[1]} where the "
                f"run's model returns {shapes[0]} on the adapter's example inputs (batch {batch})."
            )
        for r, g in zip(ref, got, strict=True):
            scale = max(float(r.abs().max()), 1e-12)
            worst = max(worst, float((g.float() - r.float()).abs().max()) / scale)
    _refuse_a_graph_without_lengths(model, kind, spec)
    if worst > WRAP_RTOL:
        raise ExportError(
            f"export adapter '{name}': its wrap(model) differs from the run's model, called as "
            f"model(x, lengths) in training and embedding, by {worst:.3g} of the embeddings' "
            f"largest value on the adapter's example inputs (tolerance {WRAP_RTOL}). Does the "
            "wrapper pass every input on (lengths above all) and add no step of its own? If "
            "the graph's inputs differ from the model's, override model_inputs()."
        )
    return worst


def _ragged(kind: ExportAdapter, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
    """The adapter's batch example with lengths made to differ within the batch (the padding
    along the last axis zeroed), when its items all fill the batch; None when that cannot be
    built from its inputs (or they differ already)."""
    x, lengths = kind.model_inputs(inputs)
    if not (isinstance(x, Tensor) and isinstance(lengths, Tensor) and x.dim() >= 2
            and len(x) > 1 and bool((lengths == x.shape[-1]).all())):  # fmt: skip
        return None
    at_x = next((i for i, t in enumerate(inputs) if t is x), None)
    at_len = next((i for i, t in enumerate(inputs) if t is lengths), None)
    if at_x is None or at_len is None:
        return None
    steps = x.shape[-1]
    short = torch.tensor([max(1, steps * (len(x) - i) // len(x)) for i in range(len(x))])
    padded = x.clone()
    for i, n in enumerate(short.tolist()):
        padded[i, ..., n:] = 0
    out = list(inputs)
    out[at_x], out[at_len] = padded, short.to(lengths.dtype)
    return tuple(out)


def _refuse_a_graph_without_lengths(
    model: EmbeddingModel, kind: ExportAdapter, spec: dict[str, Any]
) -> None:
    """A run whose features take the lengths of [N, channels, steps] inputs embeds a padded
    batch with them; an adapter whose graph passes none exports a model whose batches leak
    padding, which its own examples (all of one length) cannot show."""
    x, lengths = kind.model_inputs(kind.example(spec, 3, 2))
    if lengths is not None or not isinstance(x, Tensor) or x.dim() != 3:
        return
    try:
        with torch.no_grad():
            _, passed = model.features(x, torch.full((len(x),), x.shape[-1], dtype=torch.long))
    except Exception:  # features that take no lengths: nothing to pass on
        return
    if passed is not None:
        raise ExportError(
            f"export adapter '{spec.get('kind')}': the run's features take the lengths of "
            "their [N, channels, steps] inputs, but the adapter's graph passes none "
            "(model_inputs gives lengths None), so a zero-padded batch would embed differently "
            "from each sample alone. Add an int64 [N] 'lengths' input to names, shapes() and "
            "example() (lengths differing within a batch) and pass it on in wrap()."
        )


def check_parity(run: Any, module: nn.Module, kind: ExportAdapter, spec: dict[str, Any]) -> float:
    """Largest |exported − PyTorch| over batch sizes 1 and 3 (and other input lengths)."""
    worst = 0.0
    for batch, variant in ((1, 1), (3, 2)):
        inputs = kind.example(spec, batch, variant)
        with torch.no_grad():
            ref = as_list(module(*inputs))
        got = run(inputs)
        for r, g in zip(ref, got, strict=True):
            if tuple(g.shape) != tuple(r.shape):
                raise ExportError(
                    f"exported model returned shape {tuple(g.shape)} for batch {batch}, PyTorch "
                    f"{tuple(r.shape)}: a shape was frozen while tracing."
                )
            diff = float((g.float() - r.float()).abs().max())
            if diff > ATOL + RTOL * float(r.abs().max()):
                raise ExportError(
                    f"exported model differs from PyTorch by {diff:.3g} (batch {batch}); the "
                    "graph does not reproduce the model (a data-dependent branch was frozen?)."
                )
            worst = max(worst, diff)
    return worst
