"""Export the inference network of a checkpoint (features → backbone → head) to ONNX or TorchScript.

Only what inference needs leaves: the classifier / class-weight modules stay behind. The batch
dimension is dynamic (and, for audio, the number of samples), and every export is checked against
the PyTorch model on inputs of other batch sizes and lengths than the ones it was traced with,
so a graph that silently froze a shape is refused instead of shipped. Next to the model goes a
JSON sidecar `<out>.json`: input/output names and shapes, the preprocessing to replicate, the
embedding kind and dimension, the metaemb version and the config hash (docs/export.md).

Audio models take raw waveforms: the Kaldi fbank is re-expressed as one strided convolution
(DC removal, pre-emphasis, window and DFT are all linear in a frame, so they fold into a single
[2·bins, 1, frame] kernel) followed by the mel matmul, log and CMN. That graph traces with dynamic
shapes in both formats, needs no FFT operator, and stays within ~1e-4 of KaldiFbank's log-mels.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import metaemb
from metaemb.core.config import Config
from metaemb.core.deploy.loading import find_checkpoint, load_run
from metaemb.core.errors import MetaembError, suggest
from metaemb.core.optional import require
from metaemb.core.plugin.components import options_of
from metaemb.core.plugin.manager import registry
from metaemb.core.runs import atomic_write_bytes, atomic_write_text
from metaemb.core.train.model import EmbeddingModel

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_OPSET = 17
MIN_OPSET = 13  # CumSum, Softmax over one axis and Unsqueeze-with-input semantics
MAX_OPSET = 20  # the highest the TorchScript-based ONNX exporter emits
#: exported vs PyTorch outputs must agree to atol + rtol·max|reference| (float32 reassociation).
ATOL, RTOL = 1e-4, 1e-4
#: the folded-DFT fbank vs KaldiFbank (log-mel, absolute): measured ~1e-4 on speech-like input.
FBANK_TOL = 2e-3


class ExportError(MetaembError):
    """A model, format or option that cannot be exported (the message says why and what to do)."""


@dataclass
class Exported:
    """What `export` wrote: the model file, its sidecar and the sidecar's content."""

    path: Path
    sidecar: Path
    info: dict[str, Any]


# -- the inference graph --------------------------------------------------------------------------


def fbank_kernel(fbank: nn.Module) -> Tensor:
    """KaldiFbank's per-frame chain up to the DFT as one conv kernel [2·bins, 1, size] (cos ‖ −sin).

    frame → (x − mean) → pre-emphasis (first sample replicated) → window·32768 → DFT over the frame
    zero-padded to n_fft; composed in float64, then rounded once to float32.
    """
    size, n_fft = int(fbank.size), int(fbank.n_fft)
    chain = torch.eye(size, dtype=torch.float64)
    if fbank.remove_dc_offset:
        chain = chain - 1.0 / size
    if fbank.preemphasis:
        p = float(fbank.preemphasis)
        pre = torch.eye(size, dtype=torch.float64)
        idx = torch.arange(1, size)
        pre[idx, idx - 1] = -p
        pre[0, 0] = 1.0 - p
        chain = pre @ chain
    scale = 32768.0 if fbank.int16_scale else 1.0
    chain = fbank.window.double()[:, None] * scale * chain
    j = torch.arange(size, dtype=torch.float64)[:, None]
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[None, :]
    angle = 2.0 * math.pi * j * k / n_fft
    dft = torch.cat([torch.cos(angle), -torch.sin(angle)], dim=1)  # [size, 2·bins]
    return (chain.T @ dft).T.float().unsqueeze(1).contiguous()


class TraceableFbank(nn.Module):
    """The Kaldi fbank + CMN of a `kaldi_fbank` Features, as a graph with dynamic N and T.

    waveforms [N, T] (zero-padded), lengths [N] in samples → ([N, n_mels, F], frame lengths) with
    F = 1 + (T − size) // shift (snip_edges); frames past an utterance's end are zero, as in
    KaldiFbank. Dither is not exported (it is training-only).
    """

    def __init__(self, fbank: nn.Module) -> None:
        super().__init__()
        needed = ("size", "shift", "n_fft", "window", "banks", "preemphasis", "cmn")
        missing = [a for a in needed if not hasattr(fbank, a)]
        if missing:
            raise ExportError(
                f"features of kind 'kaldi_fbank' must carry a KaldiFbank as `.fbank`; it lacks "
                f"{', '.join(missing)}."
            )
        self.size, self.shift = int(fbank.size), int(fbank.shift)
        self.bins = int(fbank.n_fft) // 2 + 1
        self.cmn = bool(fbank.cmn)
        self.register_buffer("kernel", fbank_kernel(fbank))
        self.register_buffer("banks", fbank.banks.detach().float().clone())  # [bins, mels]

    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        spec = nn.functional.conv1d(waveforms.float().unsqueeze(1), self.kernel, stride=self.shift)
        re, im = spec[:, : self.bins], spec[:, self.bins :]
        power = (re * re + im * im).transpose(1, 2)  # [N, F, bins]
        eps = torch.finfo(torch.float32).eps
        feats = torch.matmul(power, self.banks).clamp_min(eps).log()  # [N, F, mels]
        lengths = lengths.long()
        flen = torch.where(
            lengths >= self.size,
            torch.div(lengths - self.size, self.shift, rounding_mode="floor") + 1,
            torch.zeros_like(lengths),
        )
        # Frame indices from a cumulative sum, not arange(F): a traced arange freezes F.
        steps = torch.cumsum(torch.ones_like(feats[:, :, 0]), dim=1) - 1.0
        valid = (steps < flen.unsqueeze(1).to(steps.dtype)).to(feats.dtype).unsqueeze(2)
        feats = feats * valid
        if self.cmn:
            mean = feats.sum(dim=1, keepdim=True) / flen.clamp(min=1).to(feats.dtype)[:, None, None]
            feats = (feats - mean) * valid
        return feats.transpose(1, 2), flen


def _outputs(out: Any) -> Tensor | tuple[Tensor, Tensor]:
    """A point embedding stays a tensor; a GME becomes (a, b) so graphs return plain tensors."""
    return out if isinstance(out, Tensor) else (out.a, out.b)


class ImageInference(nn.Module):
    """images [N, 3, S, S], already resized and normalised → embeddings, or (a, b) for GME heads."""

    def __init__(self, model: EmbeddingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return _outputs(self.model(images))


class AudioInference(nn.Module):
    """waveforms [N, T] + lengths [N] → embeddings, or (a, b); the fbank runs inside the graph."""

    def __init__(self, model: EmbeddingModel) -> None:
        super().__init__()
        self.fbank = TraceableFbank(getattr(model.features, "fbank", model.features))
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, waveforms: Tensor, lengths: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x, frames = self.fbank(waveforms, lengths)
        return _outputs(self.head(self.backbone(x, frames)))


# -- inputs ---------------------------------------------------------------------------------------
@dataclass
class InputKind:
    """How one kind of `input_spec` is fed to the exported graph."""

    wrapper: type[nn.Module]
    names: list[str]
    shapes: list[list[int | str]]

    def example(self, spec: dict[str, Any], batch: int, variant: int) -> tuple[Tensor, ...]:
        """Deterministic inputs; `variant` changes the audio length so traces are checked on
        lengths they were not traced with. Audio batches mix lengths (so length masking is traced)."""
        gen = torch.Generator().manual_seed(1234 + 17 * batch + variant)
        if self.wrapper is ImageInference:
            s = int(spec["image_size"])
            return (torch.randn(batch, 3, s, s, generator=gen).clamp_(-1, 1),)
        sr = int(spec["sample_rate"])
        t = int(sr * (1.0 + 0.37 * variant))
        lengths = torch.tensor([t - (i * t) // (2 * batch) for i in range(batch)])
        waves = 0.1 * torch.randn(batch, t, generator=gen)
        waves = waves * (torch.arange(t)[None, :] < lengths[:, None])
        return waves, lengths


def input_kind(spec: dict[str, Any]) -> InputKind:
    kind = spec.get("kind")
    if kind == "image":
        s = int(spec["image_size"])
        return InputKind(ImageInference, ["images"], [["N", int(spec.get("channels", 3)), s, s]])
    if kind == "kaldi_fbank":
        return InputKind(AudioInference, ["waveforms", "lengths"], [["N", "T"], ["N"]])
    raise ExportError(
        f"export knows image and kaldi_fbank inputs; this model's features declare input kind "
        f"'{kind}'. Export the backbone and head yourself from metaemb.core.data.pipeline.build_model."
    )


def frontend_options(config: Config) -> dict[str, Any]:
    """The training frontend's options, defaults included (crop size, template, VAD settings)."""
    factory = registry("frontends").get(config.model.frontend)
    opts = {k: o.default for k, o in options_of(factory).items()}
    opts.update(config.options("frontend"))
    return opts


def preprocessing(spec: dict[str, Any], config: Config) -> list[str]:
    """The steps a deployment must replicate before calling the exported model, in order."""
    name = config.model.frontend
    if name == "none":
        frontend = "no frontend: samples are used as stored (as in training: pre-aligned/trimmed)"
    else:
        about = registry("frontends").entry(name).description.rstrip(".")
        frontend = f"the training frontend '{name}' ({about}; options: frontend_options)"
        if name == "align":
            frontend += "; in Python: metaemb.plugins.vision.align.align_faces"
    if spec.get("kind") == "image":
        s = spec["image_size"]
        return [
            frontend,
            f"RGB, {spec.get('resize', 'resize')} (S = {s}), antialiased",
            "float32 pixels x / 255 in [0, 1]",
            f"per channel (x − mean) / std with mean {spec['mean']} and std {spec['std']}",
            f"layout [N, 3, {s}, {s}] (NCHW), float32",
        ]
    return [
        frontend,
        f"mono float32 waveform in [−1, 1] at {spec['sample_rate']} Hz (no int16 scaling: the "
        "graph multiplies by 32768 itself)"
        if spec.get("int16_scale", True)
        else f"mono float32 waveform at {spec['sample_rate']} Hz on the int16 scale",
        f"utterances shorter than {spec.get('min_seconds')} s tiled (repeated end to end) to it; "
        f"longer than {spec.get('max_eval_seconds')} s centre-cropped to it",
        "batch: zero-pad to the longest, `lengths` = valid samples per utterance (int64)",
        "the Kaldi fbank (snip_edges) and per-utterance CMN run inside the exported graph",
    ]


# -- loading, tracing, checking -------------------------------------------------------------------
@dataclass
class Inference:
    """A checkpoint's model, its export wrapper and what the sidecar says about them."""

    model: EmbeddingModel
    module: nn.Module
    kind: InputKind
    config: Config
    state: dict[str, Any]
    spec: dict[str, Any]
    path: Path


def load_inference(checkpoint: Path) -> Inference:
    """Checkpoint or run dir → the model and its export wrapper, in eval mode on the CPU."""
    run = load_run(Path(checkpoint), "cpu")
    model, config, state = run.model, run.config, run.state
    model.eval().requires_grad_(False)
    spec = state.get("input_spec") or model.features.input_spec()
    kind = input_kind(spec)
    return Inference(model, kind.wrapper(model).eval(), kind, config, state, spec, run.path)


def check_features(inf: Inference) -> float | None:
    """Largest |log-mel difference| of the traceable fbank vs the model's own features (audio)."""
    fbank = getattr(inf.module, "fbank", None)
    if not isinstance(fbank, TraceableFbank):
        return None
    worst = 0.0
    for batch, variant in ((1, 1), (3, 2)):
        waves, lengths = inf.kind.example(inf.spec, batch, variant)
        with torch.no_grad():
            ref, ref_len = inf.model.features(waves, lengths)
            got, got_len = fbank(waves, lengths)
        if got.shape != ref.shape or not torch.equal(got_len.cpu(), ref_len.cpu()):
            raise ExportError(
                f"the exportable fbank gives {tuple(got.shape)} features, the model's own "
                f"{tuple(ref.shape)}: the features module does not follow KaldiFbank framing."
            )
        worst = max(worst, float((got - ref).abs().max()))
    if worst > FBANK_TOL:
        raise ExportError(
            f"the exportable fbank differs from the model's features by {worst:.3g} (log-mel); "
            f"tolerance {FBANK_TOL}."
        )
    return worst


def _as_list(out: Any) -> list[Tensor]:
    return [out] if isinstance(out, Tensor) else list(out)


def check_parity(run: Any, module: nn.Module, kind: InputKind, spec: dict[str, Any]) -> float:
    """Largest |exported − PyTorch| over batch sizes 1 and 3 (and other audio lengths)."""
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
    module: nn.Module, kind: InputKind, spec: dict[str, Any], opset: int, out_names: list[str]
) -> bytes:
    """The TorchScript-based exporter (no onnxscript needed) with dynamic N (and T)."""
    onnx = require("onnx", "ONNX export", ExportError)
    axes: dict[str, dict[int, str]] = {}
    for name, shape in zip(kind.names, kind.shapes, strict=True):
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


def onnx_runner(data: bytes, names: list[str]) -> Any:
    ort = require("onnxruntime", "checking an ONNX export", ExportError)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(inputs: tuple[Tensor, ...]) -> list[Tensor]:
        feed = {n: x.numpy() for n, x in zip(names, inputs, strict=True)}
        return [torch.from_numpy(y) for y in session.run(None, feed)]

    return run


def to_torchscript(module: nn.Module, kind: InputKind, spec: dict[str, Any]) -> bytes:
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
    inf = load_inference(checkpoint)
    module, kind, config, state, spec = inf.module, inf.kind, inf.config, inf.state, inf.spec
    fbank_diff = check_features(inf)
    with torch.no_grad():
        probe = module(*kind.example(spec, 2, 0))
    out_names = ["embeddings"] if isinstance(probe, Tensor) else ["a", "b"]
    shapes = [["N", *map(int, y.shape[1:])] for y in _as_list(probe)]
    dim = int(shapes[0][1])
    if fmt == "onnx":
        data = to_onnx(module, kind, spec, opset, out_names)
        worst = check_parity(onnx_runner(data, kind.names), module, kind, spec)
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
        "inputs": [
            {"name": n, "shape": s, "dtype": "int64" if n == "lengths" else "float32"}
            for n, s in zip(kind.names, kind.shapes, strict=True)
        ],
        "outputs": [
            {"name": n, "shape": s, "dtype": "float32"}
            for n, s in zip(out_names, shapes, strict=True)
        ],
        "input_spec": spec,
        "preprocessing": preprocessing(spec, config),
        "verified": {
            "batch_sizes": [1, 3],
            "max_abs_diff": worst,
            **({"fbank_max_abs_diff": fbank_diff} if fbank_diff is not None else {}),
        },
    }
    atomic_write_bytes(out, data)
    sidecar = out.with_name(out.name + ".json")
    atomic_write_text(sidecar, json.dumps(info, indent=2, default=str, ensure_ascii=False) + "\n")
    return Exported(out, sidecar, info)
