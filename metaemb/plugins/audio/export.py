"""Export adapter of the audio plugin: the Kaldi fbank as a traceable graph (input kind
"kaldi_fbank").

Audio models take raw waveforms: the Kaldi fbank is re-expressed as one strided convolution
(DC removal, pre-emphasis, window and DFT are all linear in a frame, so they fold into a single
[2·bins, 1, frame] kernel) followed by the mel matmul, log and CMN. That graph traces with dynamic
shapes in both formats, needs no FFT operator, and stays within ~1e-4 of KaldiFbank's log-mels;
every export checks that against the model's own features (FBANK_TOL).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from metaemb.core.deploy.export import ExportAdapter, ExportError, outputs_of
from metaemb.core.train.model import EmbeddingModel
from metaemb.plugins.audio.fbank import cmn_mode, normalise

#: the folded-DFT fbank vs KaldiFbank (log-mel, absolute): measured ~1e-4 on speech-like input.
FBANK_TOL = 2e-3


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
        self.cmn = cmn_mode(fbank.cmn)
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
        feats = normalise(feats, flen, valid[..., 0], self.cmn)
        return feats.transpose(1, 2), flen


class AudioInference(nn.Module):
    """waveforms [N, T] + lengths [N] → embeddings, or (a, b); the fbank runs inside the graph."""

    def __init__(self, model: EmbeddingModel) -> None:
        super().__init__()
        self.fbank = TraceableFbank(getattr(model.features, "fbank", model.features))
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, waveforms: Tensor, lengths: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x, frames = self.fbank(waveforms, lengths)
        return outputs_of(self.head(self.backbone(x, frames)))


class FbankExport(ExportAdapter):
    """Waveforms (zero-padded) and their lengths in; the Kaldi fbank + CMN inside the graph."""

    names: ClassVar[list[str]] = ["waveforms", "lengths"]

    def shapes(self, spec: dict[str, Any]) -> list[list[int | str]]:
        return [["N", "T"], ["N"]]

    def wrap(self, model: EmbeddingModel) -> nn.Module:
        return AudioInference(model)

    def example(self, spec: dict[str, Any], batch: int, variant: int) -> tuple[Tensor, ...]:
        """Lengths vary with `variant` (traces are checked on lengths they were not traced
        with) and within a batch (so length masking is traced)."""
        gen = torch.Generator().manual_seed(1234 + 17 * batch + variant)
        sr = int(spec["sample_rate"])
        t = int(sr * (1.0 + 0.37 * variant))
        lengths = torch.tensor([t - (i * t) // (2 * batch) for i in range(batch)])
        waves = 0.1 * torch.randn(batch, t, generator=gen)
        waves = waves * (torch.arange(t)[None, :] < lengths[:, None])
        return waves, lengths

    def preprocessing(self, spec: dict[str, Any]) -> list[str]:
        from metaemb.plugins.audio.io import RESAMPLE_METHOD

        frame = spec.get("frame_length_samples")
        return [
            f"mono float32 waveform in [−1, 1] at {spec['sample_rate']} Hz (no int16 scaling: the "
            "graph multiplies by 32768 itself)"
            if spec.get("int16_scale", True)
            else f"mono float32 waveform at {spec['sample_rate']} Hz on the int16 scale",
            "several channels: their mean (as metaemb reads them); another rate: resampled by "
            + RESAMPLE_METHOD,
            f"recordings shorter than one analysis frame ({frame} samples) are refused, before "
            "any tiling (metaemb refuses them)",
            f"utterances shorter than {spec.get('min_seconds')} s tiled (repeated end to end) to "
            f"it; longer than {spec.get('max_eval_seconds')} s centre-cropped to it",
            "batch: zero-pad to the longest, `lengths` = valid samples per utterance (int64)",
            "the Kaldi fbank (snip_edges) and per-utterance CMN run inside the exported graph",
        ]

    def check(
        self, model: EmbeddingModel, module: nn.Module, spec: dict[str, Any]
    ) -> dict[str, float]:
        """Largest |log-mel difference| of the traceable fbank vs the model's own features."""
        fbank = module.fbank
        worst = 0.0
        for batch, variant in ((1, 1), (3, 2)):
            waves, lengths = self.example(spec, batch, variant)
            with torch.no_grad():
                ref, ref_len = model.features(waves, lengths)
                got, got_len = fbank(waves, lengths)
            if got.shape != ref.shape or not torch.equal(got_len.cpu(), ref_len.cpu()):
                raise ExportError(
                    f"the exportable fbank gives {tuple(got.shape)} features, the model's own "
                    f"{tuple(ref.shape)}: the features module does not follow KaldiFbank framing."
                )
            worst = max(worst, float((got - ref).abs().max()))
        if worst > FBANK_TOL:
            raise ExportError(
                f"the exportable fbank differs from the model's features by {worst:.3g} "
                f"(log-mel); tolerance {FBANK_TOL}."
            )
        return {"fbank_max_abs_diff": worst}
