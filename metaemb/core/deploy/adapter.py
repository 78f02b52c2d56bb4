"""The export adapter contract: how one kind of features' input becomes a traceable graph.

An `ExportAdapter`, registered by the plugin that owns some features (hook
`register_export_adapters`) under the `input_spec()["kind"]` they declare, wraps the model,
makes example inputs, names the graph's inputs and describes the preprocessing a deployment
must replicate. `input_kind` finds the adapter of a model's features.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from metaemb.core.config import Config
from metaemb.core.errors import MetaembError, first_line, suggest
from metaemb.core.plugin.manager import registry
from metaemb.core.plugin.options import options_of
from metaemb.core.train.model import EmbeddingModel


class ExportError(MetaembError):
    """A model, format or option that cannot be exported (the message says why and what to do)."""


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
            f"export knows the input kinds {known}; this model's features"
            f"{f' ({features})' if features else ''} declare input kind '{kind}'"
            f";{suggest(str(kind), reg.names()) or ' no adapter is close.'} Register an export adapter for it (hook "
            "register_export_adapters) or "
            "export the backbone and head yourself from metaemb.core.data.pipeline.build_model."
        )
    return reg.get(kind)()


def example_outputs(module: Any, kind: ExportAdapter, spec: dict[str, Any]) -> Any:
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


def sample_folder_options(config: Config) -> dict[str, Any]:
    """The sample folder's options, defaults included: how files were read before the
    frontend (a rate to resample to, a decode), which a deployment reads files as too."""
    factory = registry("sample_folders").get(config.data.folder)
    opts = {k: o.default for k, o in options_of(factory).items()}
    opts.update(config.options("folder"))
    return opts


def frontend_details(config: Config) -> dict[str, Any]:
    """`{"frontend_details": …}` when the training frontend says what a deployment needs to
    replicate it (an optional static `export_details(options)`: the align frontend's template
    points and warp), else {}."""
    factory = registry("frontends").get(config.model.frontend)
    details = getattr(factory, "export_details", None)
    return {"frontend_details": details(frontend_options(config))} if callable(details) else {}


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
