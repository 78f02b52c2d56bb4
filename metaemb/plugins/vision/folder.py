"""ImageFolder: a root of `<identity>/…/<image>` files (LFW, VGGFace2, CASIA-WebFace, the demo set).

`load` returns a uint8 tensor [3, H, W] (RGB): tensors batch, pin and travel between DataLoader
workers cheaply, and torchvision's v2 functional ops and a torch alignment warp work on them
directly. Grey, palette and alpha images are converted to RGB so every sample has 3 channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import Tensor

from metaemb.core.plugin.contract import Kind
from metaemb.core.plugin.interfaces import SampleFolder
from metaemb.plugins.vision.imageio import read_image

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "read_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".webp", ".tif", ".tiff")


class ImageFolder(SampleFolder):
    """Images under `<root>/<identity>/…/<image>`; samples load as RGB uint8 tensors [3, H, W]."""

    extensions: ClassVar[tuple[str, ...]] = IMAGE_EXTENSIONS
    what: ClassVar[str] = "image"
    yields = Kind("image")  # RGB uint8 [3, H, W]

    def load(self, path: Path) -> Tensor:
        return read_image(path)
