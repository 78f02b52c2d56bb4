"""Export adapter for the vectors modality: models whose features declare input kind "vector"
take a batch of vectors [N, size] (`metaemb export RUN --format onnx|torchscript`)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from metaemb.core.deploy.export import ExportAdapter, outputs_of


class VectorInference(nn.Module):
    """vectors [N, size] → embeddings, or (a, b) for a GME head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, vectors: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return outputs_of(self.model(vectors))


class VectorExport(ExportAdapter):
    """One input, `vectors` [N, size]; the length normalisation (if any) is inside the graph."""

    names: ClassVar[list[str]] = ["vectors"]

    def shapes(self, spec: dict[str, Any]) -> list[list[int | str]]:
        return [["N", int(spec["size"])]]

    def wrap(self, model: nn.Module) -> nn.Module:
        return VectorInference(model)

    def example(self, spec: dict[str, Any], batch: int, variant: int) -> tuple[Tensor, ...]:
        gen = torch.Generator().manual_seed(4321 + 17 * batch + variant)
        return (torch.randn(batch, int(spec["size"]), generator=gen),)

    def preprocessing(self, spec: dict[str, Any]) -> list[str]:
        steps = [f"float32 vectors of {spec['size']} values, as stored in the .npy files"]
        if spec.get("length_norm"):
            steps.append("(length normalisation happens inside the graph)")
        return [*steps, f"layout [N, {spec['size']}]"]
