"""Export adapter of the vision plugin: image models (input kind "image") take resized,
normalised NCHW float32 images."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from metaemb.core.deploy.export import ExportAdapter, outputs_of
from metaemb.core.train.model import EmbeddingModel


class ImageInference(nn.Module):
    """images [N, 3, S, S], already resized and normalised → embeddings, or (a, b) for GME heads."""

    def __init__(self, model: EmbeddingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return outputs_of(self.model(images))


class ImageExport(ExportAdapter):
    """One input, `images` [N, C, S, S]."""

    names: ClassVar[list[str]] = ["images"]

    def shapes(self, spec: dict[str, Any]) -> list[list[int | str]]:
        s = int(spec["image_size"])
        return [["N", int(spec.get("channels", 3)), s, s]]

    def wrap(self, model: EmbeddingModel) -> nn.Module:
        return ImageInference(model)

    def example(self, spec: dict[str, Any], batch: int, variant: int) -> tuple[Tensor, ...]:
        gen = torch.Generator().manual_seed(1234 + 17 * batch + variant)
        s = int(spec["image_size"])
        return (torch.randn(batch, 3, s, s, generator=gen).clamp_(-1, 1),)

    def preprocessing(self, spec: dict[str, Any]) -> list[str]:
        s = spec["image_size"]
        return [
            "RGB uint8 of the stored pixels (no EXIF rotation): PIL's convert('RGB'), except "
            "16-bit data keeps its high byte (value >> 8) and float grey in [0, 1] becomes "
            f"round(255 x); if not square, centre-crop to a square of the shorter side; then "
            f"resize the uint8 image to {s} × {s} with torchvision.transforms.v2.functional."
            "resize(antialias=True) (v1 or PIL resizing rounds differently)",
            "float32 pixels x / 255 in [0, 1]",
            f"per channel (x − mean) / std with mean {spec['mean']} and std {spec['std']}",
            f"layout [N, 3, {s}, {s}] (NCHW), float32",
        ]
