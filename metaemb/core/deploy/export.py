"""Export the inference network of a checkpoint (features → backbone → head) to ONNX or TorchScript.

Only what inference needs leaves: the classifier / class-weight modules stay behind. The batch
dimension is dynamic (and, for variable-length inputs, their length), and every export is checked
against the PyTorch model on inputs of other batch sizes and lengths than the ones it was traced
with, so a graph that silently froze a shape is refused instead of shipped. Next to the model goes
a JSON sidecar `<out>.json`: input/output names and shapes, the preprocessing to replicate, the
embedding kind and dimension, the metaemb version and the config hash (docs/export.md).

How a model's input becomes a traceable graph depends on its features: an `ExportAdapter`,
registered by the plugin that owns those features (hook `register_export_adapters`) under the
`input_spec()["kind"]` they declare, wraps the model, makes example inputs and describes the
preprocessing a deployment must replicate.
"""

from __future__ import annotations

import abc
import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

import metaemb
from metaemb.core.config import Config
from metaemb.core.deploy.loading import find_checkpoint, load_run
from metaemb.core.errors import MetaembError, first_line, suggest
from metaemb.core.optional import require
from metaemb.core.plugin.manager import registry
from metaemb.core.plugin.options import options_of
from metaemb.core.runs import atomic_write_bytes, atomic_write_text, written_together
from metaemb.core.train.model import EmbeddingModel

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_OPSET = 17
MIN_OPSET = 13  # CumSum, Softmax over one axis and Unsqueeze-with-input semantics
MAX_OPSET = 20  # the highest the TorchScript-based ONNX exporter emits
#: exported vs PyTorch outputs must agree to atol + rtol·max|reference| (float32 reassociation).
ATOL, RTOL = 1e-4, 1e-4
#: the adapter's wrapper vs the model itself, relative to the embeddings' largest value: loose
#: enough for a feature extractor re-expressed as a traceable graph, tight enough to catch a
#: dropped input.
WRAP_RTOL = 1e-3


class ExportError(MetaembError):
    """A model, format or option that cannot be exported (the message says why and what to do)."""


@dataclass
class Exported:
    """What `export` wrote: the model file, its sidecar and the sidecar's content."""

    path: Path
    sidecar: Path
    info: dict[str, Any]


# -- adapters -------------------------------------------------------------------------------------


def outputs_of(out: Any) -> Tensor | tuple[Tensor, Tensor]:
    """A point embedding stays a tensor; a GME becomes (a, b) so graphs return plain tensors."""
    return out if isinstance(out, Tensor) else (out.a, out.b)


class ExportAdapter(abc.ABC):
    """How models whose features declare one input kind are exported (one per kind)."""

    #: the graph's input names, e.g. ["inputs"] or ["waveforms", "lengths"]
    names: ClassVar[list[str]] = []

    @abc.abstractmethod
    def shapes(self, spec: dict[str, Any]) -> list[list[int | str]]:
        """Each input's shape; a str names a dynamic axis ("N", "T")."""

    @abc.abstractmethod
    def wrap(self, model: EmbeddingModel) -> nn.Module:
        """The module to trace: its forward takes the inputs in `names` order and returns the
        embeddings, or (a, b) for a GME head (`outputs_of`)."""

    @abc.abstractmethod
    def example(self, spec: dict[str, Any], batch: int, variant: int) -> tuple[Tensor, ...]:
        """Deterministic inputs of `batch` samples; another `variant` changes every dynamic axis
        but the batch, so traces are checked on shapes they were not traced with."""

    @abc.abstractmethod
    def preprocessing(self, spec: dict[str, Any]) -> list[str]:
        """The steps between the frontend's output and the graph's inputs, in order."""

    def model_inputs(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
        """The `(x, lengths)` the run's model takes for the graph's `inputs`, to check the
        wrapper against it: the first input and the second (lengths) when there is one.
        Override it when the graph's inputs are not the model's (uint8 pixels, say)."""
        return inputs[0], (inputs[1] if len(inputs) > 1 else None)

    def check(
        self, model: EmbeddingModel, module: nn.Module, spec: dict[str, Any]
    ) -> dict[str, float]:
        """Extra verification of the wrapped module against the model (raise ExportError on a
        mismatch); what it returns is added to the sidecar's "verified" entry."""
        return {}


def input_kind(spec: dict[str, Any], features: str = "") -> ExportAdapter:
    """The export adapter registered for the features' input kind."""
    kind = spec.get("kind")
    reg = registry("export_adapters")
    if kind is None and features == "none":
        raise ExportError(
            "this model was trained with features 'none', which pass the folder's samples to "
            "the network as they are, so metaemb does not know the layout an exported graph "
            "should take. Export best.pt's model with torch.onnx or torch.jit yourself, or "
            "train with features whose input_spec() names an export adapter (registered: "
            f"{', '.join(reg.names()) or 'none'})."
        )
    if kind is None:
        raise ExportError(
            "this model's features declare no input kind: their input_spec() has no 'kind' "
            "key, which names the export adapter that makes example inputs and wraps the "
            f"model (known: {', '.join(reg.names()) or 'none'}). Return "
            "{'kind': NAME, ...} from input_spec() and register an adapter of that name "
            "(see register_export_adapters in docs/plugins.md)."
        )
    if kind not in reg:
        known = ", ".join(reg.names()) or "none"
        raise ExportError(
            f"export knows the input kinds {known}; this model's features declare input kind "
            f"'{kind}'. Register an export adapter for it (hook register_export_adapters) or "
            "export the backbone and head yourself from metaemb.core.data.pipeline.build_model."
        )
    return reg.get(kind)()


def _probe(module: Any, kind: ExportAdapter, spec: dict[str, Any]) -> Any:
    """The wrapped model on the adapter's example inputs: a plugin adapter whose examples do
    not fit the model (3 channels for a 1-channel model) is named instead of a traceback."""
    name = spec.get("kind")
    entry = registry("export_adapters").entry(name)
    try:
        example = kind.example(spec, 2, 0)
    except MetaembError:
        raise
    except Exception as exc:
        raise ExportError(
            f"export adapter '{name}' (plugin '{entry.plugin}'): its example() failed: "
            f"{type(exc).__name__}: {first_line(exc)}. It builds the example inputs from the "
            "features' input_spec() (the keys and values it reads are there?)."
        ) from None
    shown = [list(x.shape) for x in example if isinstance(x, Tensor)]
    try:
        with torch.no_grad():
            return module(*example)
    except MetaembError:
        raise
    except Exception as exc:
        raise ExportError(
            f"export adapter '{name}' (plugin '{entry.plugin}'): the model failed on the "
            f"adapter's example inputs ({', '.join(map(str, shown)) or '?'}): "
            f"{type(exc).__name__}: {first_line(exc)}. Check its example() and shapes() "
            "against what the features give the backbone."
        ) from None


def frontend_options(config: Config) -> dict[str, Any]:
    """The training frontend's options, defaults included (crop size, template, VAD settings)."""
    factory = registry("frontends").get(config.model.frontend)
    opts = {k: o.default for k, o in options_of(factory).items()}
    opts.update(config.options("frontend"))
    return opts


def preprocessing(spec: dict[str, Any], config: Config, adapter: ExportAdapter) -> list[str]:
    """The steps a deployment must replicate before calling the exported model, in order."""
    name = config.model.frontend
    if name == "none":
        frontend = "no frontend: samples are used as stored (as in training: pre-aligned/trimmed)"
    else:
        entry = registry("frontends").entry(name)
        frontend = f"the training frontend '{name}' ({entry.description.rstrip('.')}; options: "
        frontend += "frontend_options)"
        if entry.info.get("python"):
            frontend += f"; in Python: {entry.info['python']}"
    return [frontend, *adapter.preprocessing(spec)]


# -- loading, tracing, checking -------------------------------------------------------------------
@dataclass
class Inference:
    """A checkpoint's model, its export wrapper and what the sidecar says about them."""

    model: EmbeddingModel
    module: nn.Module
    kind: ExportAdapter
    config: Config
    state: dict[str, Any]
    spec: dict[str, Any]
    path: Path


def load_inference(checkpoint: Path, blame: dict[str, Any] | None = None) -> Inference:
    """Checkpoint or run dir → the model and its export wrapper, in eval mode on the CPU
    (`blame`, when given, gets the adapter's and the model's names for messages)."""
    import inspect

    run = load_run(Path(checkpoint), "cpu")
    model, config, state = run.model, run.config, run.state
    model.eval().requires_grad_(False)
    spec = state.get("input_spec") or model.features.input_spec()
    kind = input_kind(spec, config.model.features)
    if blame is not None:
        entry = registry("export_adapters").entry(spec.get("kind"))
        m = config.model
        parts = (model.features, model.backbone, model.head)
        blame.update(
            adapter=f"export adapter '{spec.get('kind')}' (plugin '{entry.plugin}')",
            files={inspect.getsourcefile(type(part)) for part in parts},
            model=f"features '{m.features}', backbone '{m.backbone}', head '{m.head}'",
        )
    return Inference(model, kind.wrap(model).eval(), kind, config, state, spec, run.path)


def _as_list(out: Any) -> list[Tensor]:
    return [out] if isinstance(out, Tensor) else list(out)


def _dtype(x: Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")


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
    import warnings

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


def check_wrapper(model: EmbeddingModel, module: nn.Module, kind: ExportAdapter,
                  spec: dict[str, Any]) -> float:  # fmt: skip
    """Largest relative difference of the adapter's wrapper from the run's model, called as in
    training and `embed` (`model(x, lengths)`), on the adapter's examples of batch sizes 1 and
    3 (lengths differing within the batch). The export is then checked against the wrapper,
    so a wrapper that drops `lengths` or changes the model would otherwise go unseen."""
    name = spec.get("kind")
    worst = 0.0
    for batch, variant in ((1, 1), (3, 2)):
        inputs = kind.example(spec, batch, variant)
        with torch.no_grad():
            got = _as_list(module(*inputs))
            try:
                ref = _as_list(outputs_of(model(*kind.model_inputs(inputs))))
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
            "from each recording alone. Add an int64 [N] 'lengths' input to names, shapes() and "
            "example() (lengths differing within a batch) and pass it on in wrap()."
        )


def check_parity(run: Any, module: nn.Module, kind: ExportAdapter, spec: dict[str, Any]) -> float:
    """Largest |exported − PyTorch| over batch sizes 1 and 3 (and other input lengths)."""
    worst = 0.0
    for batch, variant in ((1, 1), (3, 2)):
        inputs = kind.example(spec, batch, variant)
        with torch.no_grad():
            ref = _as_list(module(*inputs))
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


def to_onnx(
    module: nn.Module, kind: ExportAdapter, spec: dict[str, Any], opset: int, out_names: list[str]
) -> bytes:
    """The TorchScript-based exporter (no onnxscript needed) with dynamic N (and T)."""
    onnx = require("onnx", "ONNX export", ExportError)
    axes: dict[str, dict[int, str]] = {}
    for name, shape in zip(kind.names, kind.shapes(spec), strict=True):
        axes[name] = {i: d for i, d in enumerate(shape) if isinstance(d, str)}
    for name in out_names:
        axes[name] = {0: "N"}
    buf = io.BytesIO()
    with warnings.catch_warnings():  # tracer/deprecation warnings: the parity check decides
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            kind.example(spec, 2, 0),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=kind.names,
            output_names=out_names,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    data = buf.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


@contextlib.contextmanager
def _failures_named(blame: dict[str, Any]) -> Iterator[None]:
    """An exception raised in a plugin export adapter's own code (a KeyError in shapes(), a
    TypeError in wrap()) names the adapter and its plugin; one raised by the model or by the
    exporter (an operator ONNX lacks) names the model's components. `blame` is filled in by the
    body as soon as the adapter is known: {"adapter": label, "model": label, "files": the
    model components' source files}."""
    import traceback

    try:
        yield
    except (MetaembError, MemoryError):
        raise
    except Exception as exc:
        why = first_line(exc).rstrip(".")
        frames = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
        outside_torch = [f for f in frames if f"{os.sep}torch{os.sep}" not in f]
        last = outside_torch[-1] if outside_torch else ""
        # the network's own code, or metaemb's exporter with only torch below it (an operator
        # ONNX lacks); anything else outside torch is the adapter's code
        by_model = last in blame.get("files", ()) or last == __file__
        if "model" not in blame or not by_model:
            raise ExportError(
                f"{blame.get('adapter', 'the export adapter')} failed: {type(exc).__name__}: "
                f"{why} (in its names, shapes(), wrap(), example(), preprocessing(), "
                "model_inputs() or check())."
            ) from exc
        raise ExportError(
            f"the model ({blame.get('model', '?')}) could not be exported: "
            f"{type(exc).__name__}: {why}."
        ) from exc


def onnx_runner(data: bytes, names: list[str], adapter: str = "") -> Any:
    """Runs the ONNX graph on the adapter's inputs; an input the graph dropped (the model never
    reads it, e.g. lengths of fixed-size features) is named against the adapter."""
    ort = require("onnxruntime", "checking an ONNX export", ExportError)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    kept = {i.name for i in session.get_inputs()}
    dropped = [n for n in names if n not in kept]
    if dropped:
        raise ExportError(
            f"{adapter or 'the export adapter'} declares the input(s) {', '.join(dropped)}, but "
            "the exported graph does not use them (the model never reads them with these "
            "features), so ONNX left them out. Leave them out of the adapter's names, shapes "
            "and example() when the input spec says so (e.g. no lengths for fixed-size inputs)."
        )

    def run(inputs: tuple[Tensor, ...]) -> list[Tensor]:
        feed = {n: x.numpy() for n, x in zip(names, inputs, strict=True)}
        return [torch.from_numpy(y) for y in session.run(None, feed)]

    return run


def to_torchscript(module: nn.Module, kind: ExportAdapter, spec: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():  # tracer warnings: the parity check decides
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, kind.example(spec, 2, 0), check_trace=False)
        torch.jit.save(traced, buf)
    return buf.getvalue()


def torchscript_runner(data: bytes) -> Any:
    loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(inputs: tuple[Tensor, ...]) -> list[Tensor]:
        with torch.no_grad():
            return _as_list(loaded(*inputs))

    return run


# -- the one entry point --------------------------------------------------------------------------
def default_out(checkpoint: Path, fmt: str) -> Path:
    """best.pt → best.onnx / best.torchscript.pt beside it (a run dir → its best.pt's name)."""
    path = find_checkpoint(Path(checkpoint))
    return path.with_name(path.stem + FORMATS[fmt])


#: the names an export may take: a TorchScript file is a zip usually named .pt, .pth or .ts
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts", ".torchscript")}


def check_out_name(fmt: str, out: Path) -> None:
    """Refuse an output name that does not say what the file is (`--out face.npy` for an ONNX
    graph, `x.onnx` for TorchScript, `settings.toml`): such a file would be replaced by a model, and
    a later reader would take the model for what its name promises. An existing file beside it
    named `<out>.json` must be an export sidecar, which it replaces."""
    import json

    suffix = out.suffix.lower()
    if suffix not in SUFFIXES[fmt]:
        label = {"onnx": "an ONNX", "torchscript": "a TorchScript"}.get(fmt, f"a {fmt}")
        raise ExportError(
            f"--out '{out}': {label} export is named {' or '.join(SUFFIXES[fmt])}, not "
            f"'{suffix or 'no suffix'}' (default: {FORMATS[fmt]} beside the checkpoint)."
        )
    sidecar = out.with_name(out.name + ".json")
    if sidecar.is_file():
        try:
            info = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            info = None
        if not (isinstance(info, dict) and "input_spec" in info and "format" in info):
            raise ExportError(
                f"'{sidecar}' exists and is not the sidecar of a metaemb export, which would "
                "replace it: move it, or choose another --out."
            )


def check_options(fmt: str, opset: int) -> None:
    if fmt not in FORMATS:
        raise ExportError(
            f"unknown export format '{fmt}';{suggest(fmt, FORMATS)} choose one of "
            f"{', '.join(FORMATS)}."
        )
    if fmt == "onnx" and not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}.")


def export(
    checkpoint: Path, fmt: str = "onnx", out: Path | None = None, opset: int = DEFAULT_OPSET
) -> Exported:
    """Export the inference model of `checkpoint` (run dir or .pt) to `out` + `<out>.json`."""
    from metaemb.core.paths import ensure_writable

    check_options(fmt, opset)
    target = Path(out) if out is not None else default_out(checkpoint, fmt)
    ensure_writable(target, "export file")  # before the slow export
    ensure_writable(target.with_name(target.name + ".json"), "export sidecar")
    check_out_name(fmt, target)
    blame: dict[str, Any] = {}
    with _failures_named(blame):
        inf = load_inference(checkpoint, blame)
        module, kind, config, state, spec = inf.module, inf.kind, inf.config, inf.state, inf.spec
        extra_checks = kind.check(inf.model, module, spec)
        probe = _probe(module, kind, spec)
        wrapper_diff = check_wrapper(inf.model, module, kind, spec)
        check_declared_shapes(kind, spec)
        warn_fixed_examples(kind, spec)
        out_names = ["embeddings"] if isinstance(probe, Tensor) else ["a", "b"]
        shapes = [["N", *map(int, y.shape[1:])] for y in _as_list(probe)]
        dim = int(shapes[0][1])
        if fmt == "onnx":
            data = to_onnx(module, kind, spec, opset, out_names)
            worst = check_parity(
                onnx_runner(data, kind.names, blame["adapter"]), module, kind, spec
            )
        else:
            data = to_torchscript(module, kind, spec)
            worst = check_parity(torchscript_runner(data), module, kind, spec)
        out = target
        info = {
            "format": fmt,
            "file": out.name,
            **({"opset": opset} if fmt == "onnx" else {}),
            "metaemb_version": metaemb.__version__,
            "trained_with": state.get("metaemb_version"),
            "config_hash": state.get("config_hash") or config.hash(),
            "checkpoint": str(inf.path),
            "epoch": state.get("epoch"),
            "modality": config.modality,
            "components": {
                "frontend": config.model.frontend,
                "features": config.model.features,
                "backbone": config.model.backbone,
                "head": config.model.head,
                "scorer": config.eval.scorer,
            },
            "frontend_options": frontend_options(config),
            "embedding": {"kind": "point" if out_names == ["embeddings"] else "gme", "dim": dim},
            "inputs": [  # the dtypes the graph was traced with, which it requires
                {"name": n, "shape": s, "dtype": _dtype(x)}
                for n, s, x in zip(
                    kind.names, kind.shapes(spec), kind.example(spec, 2, 0), strict=True
                )
            ],
            "outputs": [
                {"name": n, "shape": s, "dtype": _dtype(y)}
                for n, s, y in zip(out_names, shapes, _as_list(probe), strict=True)
            ],
            "input_spec": spec,
            "preprocessing": preprocessing(spec, config, kind),
            "verified": {
                "batch_sizes": [1, 3],
                "max_abs_diff": worst,
                "wrapper_vs_model_max_rel_diff": wrapper_diff,
                **extra_checks,
            },
        }
    sidecar = out.with_name(out.name + ".json")
    with written_together():  # the model last: a kill never pairs it with another's sidecar
        atomic_write_text(
            sidecar, json.dumps(info, indent=2, default=str, ensure_ascii=False) + "\n"
        )
        atomic_write_bytes(out, data)
    return Exported(out, sidecar, info)
