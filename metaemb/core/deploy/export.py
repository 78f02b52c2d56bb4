"""Export the inference network of a checkpoint (features → backbone → head) to ONNX or TorchScript.

Only what inference needs leaves: the classifier / class-weight modules stay behind. The batch
dimension is dynamic (and, for variable-length inputs, their length), and every export is checked
against the PyTorch model on inputs of other batch sizes and lengths than the ones it was traced
with, so a graph that silently froze a shape is refused instead of shipped. Next to the model goes
a JSON sidecar `<out>.json`: input/output names and shapes, the preprocessing to replicate, the
embedding kind and dimension, the metaemb version and the config hash (docs/export.md).

How a model's input becomes a traceable graph depends on its features: their `ExportAdapter`
(deploy/adapter.py, re-exported here for plugins); the checks live in deploy/export_checks.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import metaemb
from metaemb.core.config import Config
from metaemb.core.deploy.adapter import (
    ExportAdapter,
    ExportError,
    example_outputs,
    frontend_details,
    frontend_options,
    input_kind,
    outputs_of,
    preprocessing,
    sample_folder_options,
)
from metaemb.core.deploy.export_checks import (
    as_list,
    check_declared_shapes,
    check_parity,
    check_wrapper,
    warn_fixed_examples,
    warn_untrained_shape,
)
from metaemb.core.deploy.loading import find_checkpoint, load_run
from metaemb.core.deploy.stamp import embedding_digest, model_digest, test_options_in_effect
from metaemb.core.errors import MetaembError, first_line, suggest
from metaemb.core.files import (
    atomic_write_bytes,
    atomic_write_text,
    remove_with_set,
    written_together,
)
from metaemb.core.optional import require
from metaemb.core.plugin.manager import registry
from metaemb.core.train.model import EmbeddingModel

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_OPSET = 17
MIN_OPSET = 13  # CumSum, Softmax over one axis and Unsqueeze-with-input semantics
MAX_OPSET = 20  # the highest the TorchScript-based ONNX exporter emits
# what plugins and scripts import from here
__all__ = [
    "ExportAdapter", "ExportError", "Exported", "export", "frontend_options", "input_kind",
    "load_inference", "outputs_of", "preprocessing",
]  # fmt: skip


@dataclass
class Exported:
    """What `export` wrote: the model file, its sidecar and the sidecar's content."""

    path: Path
    sidecar: Path
    info: dict[str, Any]


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


def _features_set(features: Any) -> dict[str, Any]:
    """The features' test options in effect where they are not the class's defaults (a flip
    test in the graph, from --features-set or from the run's training configuration), under
    the key metrics.json and embeddings files use (`test_options`), and the command's
    --features-set beside it when it gave one (`features_set`)."""
    from metaemb.core.data.pipeline import features_set_used

    in_effect = test_options_in_effect(features)
    given = {k: v for k, v in in_effect.items() if k in features_set_used()}
    return {
        **({"test_options": in_effect} if in_effect else {}),
        **({"features_set": given} if given else {}),
    }


def _dtype(x: Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")


def load_inference(checkpoint: Path, blame: dict[str, Any] | None = None) -> Inference:
    """Checkpoint or run dir → the model and its export wrapper, in eval mode on the CPU
    (`blame`, when given, gets the adapter's and the model's names for messages)."""
    import inspect

    run = load_run(Path(checkpoint), "cpu")
    model, config, state = run.model, run.config, run.state
    model.eval().requires_grad_(False)
    spec = state.get("input_spec") or model.features.input_spec()
    from metaemb.core.data.pipeline import features_set_used

    changed = features_set_used()  # --features-set: what the deployer does differs too
    spec = {**spec, **{k: v for k, v in model.features.input_spec().items() if k in changed}}
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
        hint = ""
        newer = re.search(r"added in version (\d+)", str(exc))
        if newer:  # an operator of a later opset: say the opset, not another format
            hint = f" Give --opset {newer.group(1)} (metaemb exports opsets 13–20)."
        elif type(exc).__name__ == "UnsupportedOperatorError" or "is not supported" in why:
            hint = (
                " ONNX has no form of that operator at any opset (nn.TransformerEncoder's fused "
                "inference path, aten::_transformer_encoder_layer_fwd, is one): --format "
                "torchscript exports the same model."
            )
        raise ExportError(
            f"the model ({blame.get('model', '?')}) could not be exported: "
            f"{type(exc).__name__}: {why}.{hint}"
        ) from exc


def onnx_runner(data: bytes, names: list[str], adapter: str = "", traced: Shapes = None) -> Any:
    """Runs the ONNX graph on the adapter's inputs; an input the graph dropped (the model never
    reads it, e.g. lengths of fixed-size features) is named against the adapter."""
    ort = require("onnxruntime", "checking an ONNX export", ExportError)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    kept = {i.name for i in session.get_inputs()}
    dropped = [n for n in names if n not in kept]
    if dropped:
        raise ExportError(
            f"{adapter or 'the export adapter'} declares the input(s) {', '.join(dropped)}, but "
            "the exported graph does not use them, so ONNX left them out: either the wrapper "
            "does not pass them on to the model (pass lengths in wrap()), or the model never "
            "reads them with these features (leave them out of the adapter's names, shapes and "
            "example(), e.g. no lengths for fixed-size inputs)."
        )

    def run(inputs: tuple[Tensor, ...]) -> list[Tensor]:
        feed = {n: x.numpy() for n, x in zip(names, inputs, strict=True)}
        with _frozen_sizes_named(inputs, traced):
            return [torch.from_numpy(y) for y in session.run(None, feed)]

    return run


#: the shapes of the inputs a graph was traced with, when known
Shapes = tuple[tuple[int, ...], ...] | None


@contextlib.contextmanager
def _frozen_sizes_named(inputs: tuple[Tensor, ...], traced: Shapes = None) -> Iterator[None]:
    """The exported graph failing on inputs of other sizes than it was traced with: a size was
    frozen while tracing. Said so, naming the graph's node (in the backbone, say), where the
    adapter was blamed or torch's first line said nothing usable; a failure at the traced
    sizes themselves is the graph's own, said as such."""
    try:
        yield
    except (MetaembError, MemoryError):
        raise
    except Exception as exc:
        text = str(exc)
        node = re.search(r"/model/([A-Za-z_]+)[^\s']*", text)
        where = f" (node {node.group(0)}: in the model's {node.group(1)})" if node else ""
        shapes = ", ".join(str(list(x.shape)) for x in inputs)
        said = f"The exporter said: {first_line(exc)[:300]}"
        if traced is not None and tuple(tuple(x.shape) for x in inputs) == tuple(traced):
            raise ExportError(
                f"the exported graph failed on the inputs it was traced with ({shapes}){where}: "
                f"the model fails in the exported runtime, not because of a size. {said}"
            ) from exc
        raise ExportError(
            f"the exported graph failed on inputs of other sizes than it was traced with "
            f"({shapes}){where}: a size was frozen while tracing. A Python number taken from a "
            "tensor's shape (int(x.shape[-1]), x.size(2) in arithmetic or a loop) becomes a "
            "constant of the graph; keep sizes as tensors (masks from lengths, "
            f"torch.arange(x.shape[-1], device=x.device)). {said}"
        ) from exc


def to_torchscript(module: nn.Module, kind: ExportAdapter, spec: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():  # tracer warnings: the parity check decides
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, kind.example(spec, 2, 0), check_trace=False)
        torch.jit.save(traced, buf)
    return buf.getvalue()


def torchscript_runner(data: bytes, traced: Shapes = None) -> Any:
    loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(inputs: tuple[Tensor, ...]) -> list[Tensor]:
        with torch.no_grad(), _frozen_sizes_named(inputs, traced):
            return as_list(loaded(*inputs))

    return run


# -- the one entry point --------------------------------------------------------------------------
def default_out(checkpoint: Path, fmt: str) -> Path:
    """best.pt → best.onnx / best.torchscript.pt beside it (a run dir → its best.pt's name);
    with a --features-set, best-features-<hash>.onnx: another graph, beside the plain one, as
    evaluate writes beside the plain evaluation."""
    import hashlib

    from metaemb.core.data.pipeline import features_set_used

    path = find_checkpoint(Path(checkpoint))
    given = features_set_used()
    if given:  # typed, and without the run's own values (test_flip=yes is =true; =false a no-op)
        from metaemb.core.checkpoints import load_checkpoint
        from metaemb.core.deploy.loading import _run_config

        given = features_set_used(_run_config(load_checkpoint(path), path))
    tag = ""
    if given:
        text = json.dumps(given, sort_keys=True, default=str)
        tag = "-features-" + hashlib.sha1(text.encode()).hexdigest()[:6]
    return path.with_name(path.stem + tag + FORMATS[fmt])


#: the names an export may take: a TorchScript file is a zip usually named .pt, .pth or .ts
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts", ".torchscript")}


def check_out_name(fmt: str, out: Path) -> None:
    """Refuse an output name that does not say what the file is (`--out face.npy` for an ONNX
    graph, `x.onnx` for TorchScript, `settings.toml`): such a file would be replaced by a model, and
    a later reader would take the model for what its name promises. An existing `out` must be an
    earlier export (its sidecar `<out>.json` beside it), which it replaces."""
    import json

    suffix = out.suffix.lower()
    if suffix not in SUFFIXES[fmt]:
        label = {"onnx": "an ONNX", "torchscript": "a TorchScript"}.get(fmt, f"a {fmt}")
        raise ExportError(
            f"--out '{out}': {label} export is named {' or '.join(SUFFIXES[fmt])}, not "
            f"'{suffix or 'no suffix'}' (default: {FORMATS[fmt]} beside the checkpoint)."
        )
    sidecar = out.with_name(out.name + ".json")
    if out.is_file() and not sidecar.is_file():  # an export always has its sidecar
        if _carries_record(out):  # copied alone: it says what it is, which may be all there is
            raise ExportError(
                f"'{out}' is a metaemb export whose sidecar '{sidecar.name}' is missing (the "
                "file carries the same record): it may be the only copy of that model, so it "
                "is not replaced; move it, or choose another --out."
            )
        raise ExportError(
            f"'{out}' exists and is not a metaemb export (no '{sidecar.name}' beside it), which "
            "this export would replace: move it, or choose another --out."
        )
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
    """Export the inference model of `checkpoint` (run dir or .pt) to `out` + `<out>.json`,
    under a lock on `out`: two exports to one name at once left one run's model beside the
    other's sidecar."""
    from metaemb.core.locks import FileLock

    check_options(fmt, opset)
    target = Path(out) if out is not None else default_out(checkpoint, fmt)
    from metaemb.core.paths import ensure_writable

    ensure_writable(target, "export file")  # names the export, not its lock, when it cannot be
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target, "export"):
        return _export(checkpoint, fmt, target, opset)


def _export(checkpoint: Path, fmt: str, target: Path, opset: int) -> Exported:
    from metaemb.core.paths import ensure_writable

    # before the slow export; a run's checkpoint or a gallery at --out is said before a name
    # that does not fit the format
    ensure_writable(target, "export file")
    ensure_writable(target.with_name(target.name + ".json"), "export sidecar")
    ensure_writable(target.with_name(target.name + SCORER_SUFFIX), "export's scorer state")
    check_out_name(fmt, target)
    earlier = _exported_from(target)
    blame: dict[str, Any] = {}
    with _failures_named(blame):
        inf = load_inference(checkpoint, blame)
        module, kind, config, state, spec = inf.module, inf.kind, inf.config, inf.state, inf.spec
        extra_checks = kind.check(inf.model, module, spec)
        probe = example_outputs(module, kind, spec)
        wrapper_diff = check_wrapper(inf.model, module, kind, spec)
        check_declared_shapes(kind, spec)
        warn_fixed_examples(kind, spec)
        warn_untrained_shape(kind, spec, state.get("input_shape"))
        out_names = ["embeddings"] if isinstance(probe, Tensor) else ["a", "b"]
        shapes = [["N", *map(int, y.shape[1:])] for y in as_list(probe)]
        dim = int(shapes[0][1])
        traced = tuple(tuple(x.shape) for x in kind.example(spec, 2, 0))  # what is traced
        if fmt == "onnx":
            data = to_onnx(module, kind, spec, opset, out_names)
            worst = check_parity(
                onnx_runner(data, kind.names, blame["adapter"], traced), module, kind, spec
            )
        else:
            data = to_torchscript(module, kind, spec)
            worst = check_parity(torchscript_runner(data, traced), module, kind, spec)
        out = target
        digest = embedding_digest(model_digest(state["model"]), inf.model.features)
        scorer_state = fitted_scorer_state(state, config.eval.scorer, digest)
        info = {
            "format": fmt,
            "file": out.name,
            **({"opset": opset} if fmt == "onnx" else {}),
            "metaemb_version": metaemb.__version__,
            "trained_with": state.get("metaemb_version"),
            "config_hash": state.get("config_hash") or config.hash(),
            "checkpoint": str(Path(inf.path).resolve()),
            "model_digest": digest,  # what galleries record
            "epoch": state.get("epoch"),
            "modality": config.modality,
            "components": {
                "sample_folder": config.data.folder,
                "frontend": config.model.frontend,
                "features": config.model.features,
                "backbone": config.model.backbone,
                "head": config.model.head,
                "scorer": config.eval.scorer,
            },
            "scorer": scorer_entry(config, out, scorer_state),
            "sample_folder_options": sample_folder_options(config),
            "frontend_options": frontend_options(config),
            **frontend_details(config),
            **_features_set(inf.model.features),
            "embedding": {"kind": "point" if out_names == ["embeddings"] else "gme", "dim": dim},
            "inputs": [  # the dtypes the graph was traced with, which it requires
                {"name": n, "shape": s, "dtype": _dtype(x)}
                for n, s, x in zip(
                    kind.names, kind.shapes(spec), kind.example(spec, 2, 0), strict=True
                )
            ],
            "outputs": [
                {"name": n, "shape": s, "dtype": _dtype(y)}
                for n, s, y in zip(out_names, shapes, as_list(probe), strict=True)
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
    data = with_metadata(fmt, data, info)
    sidecar = out.with_name(out.name + ".json")
    with written_together():  # the model last: a kill never pairs it with another's sidecar
        atomic_write_text(
            sidecar, json.dumps(info, indent=2, default=str, ensure_ascii=False) + "\n"
        )
        scorer_file = out.with_name(out.name + SCORER_SUFFIX)
        if scorer_state is not None:
            atomic_write_bytes(scorer_file, scorer_state)
        elif scorer_file.is_file():  # an earlier export's: it belongs to another model
            remove_with_set(scorer_file)
        atomic_write_bytes(out, data)
    if earlier and os.path.realpath(earlier) != info["checkpoint"]:  # as embed says it
        # (sidecars before the absolute path named it as typed, from the same folder mostly)
        import warnings

        warnings.warn(
            f"'{out}' held the export of another checkpoint ('{earlier}'), now replaced.",
            stacklevel=2,
        )
    return Exported(out, sidecar, info)


def _carries_record(path: Path) -> bool:
    """Whether `path` is an export carrying metaemb's record (`with_metadata`): a TorchScript
    archive's `metaemb.json`, or ONNX metadata keyed `metaemb`."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/extra/metaemb.json") for n in z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        pass
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 2**20)  # metadata_props follow the graph; small models only
    except OSError:
        return False
    return b"\n\x07metaemb\x12" in head or b"\n\x0fmetaemb_version\x12" in head


def with_metadata(fmt: str, data: bytes, info: dict[str, Any]) -> bytes:
    """The exported file carrying the sidecar too (ONNX `metadata_props`, a TorchScript extra
    file `metaemb.json`), so a model copied alone into a model store still says what it is."""
    text = json.dumps(info, default=str, ensure_ascii=False)
    if fmt == "onnx":
        onnx = require("onnx", "ONNX export", ExportError)
        model = onnx.load_from_string(data)
        fields = {"metaemb": text, "metaemb_version": info["metaemb_version"],
                  "config_hash": str(info["config_hash"]), "modality": info["modality"],
                  "embedding_kind": info["embedding"]["kind"],
                  "embedding_dim": str(info["embedding"]["dim"])}  # fmt: skip
        for key, value in fields.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model.SerializeToString()
    module = torch.jit.load(io.BytesIO(data))
    buf = io.BytesIO()
    torch.jit.save(module, buf, _extra_files={"metaemb.json": text})
    return buf.getvalue()


SCORER_SUFFIX = ".scorer.npz"


def fitted_scorer_state(state: dict[str, Any], scorer: str, digest: str = "") -> bytes | None:
    """The run's fitted scorer state (a speaker run's training mean, WCCN and spread; PLDA's
    matrices) as an .npz of float64 arrays, None when its scorer has none (plain cosine, GME):
    without it a service scores exported embeddings with plain cosine, far worse."""
    import numpy as np

    from metaemb.core.scoring.state import tensor_state

    kept = tensor_state(state.get("scorer") or {}, scorer)  # a run saved before they were made
    fitted = {k: v for k, v in kept.items() if v is not None}  # None: nothing fitted there
    if not fitted:
        return None
    arrays = {k: v.detach().cpu().double().numpy() for k, v in fitted.items()}
    # which model it belongs to, as the sidecar says: a stale .npz beside a newer model (same
    # dimension) would score with another training mean and WCCN without a word
    arrays["model_digest"] = np.array(digest or model_digest(state["model"]))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def scorer_entry(config: Config, out: Path, scorer_state: bytes | None) -> dict[str, Any]:
    """The sidecar's `scorer`: the run's scorer, every option and the file holding its fitted
    state (null when it has none), which docs/export.md shows how to score with."""
    from metaemb.core.plugin.components import full_options

    return {
        "name": config.eval.scorer,
        "options": full_options("scorers", config.eval.scorer, config.options("scorer")),
        "state": out.name + SCORER_SUFFIX if scorer_state is not None else None,
    }


def _exported_from(out: Path) -> str:
    """The checkpoint an earlier export at `out` was made from ("" when none or unknown)."""
    import json

    try:
        info = json.loads(out.with_name(out.name + ".json").read_text())
    except (OSError, ValueError):
        return ""
    return str(info.get("checkpoint", "")) if isinstance(info, dict) else ""
