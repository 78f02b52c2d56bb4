"""ImageFolder: a root of `<identity>/…/<image>` files (LFW, VGGFace2, CASIA-WebFace, the demo set).

`load` returns a uint8 tensor [3, H, W] (RGB): tensors batch, pin and travel between DataLoader
workers cheaply, and torchvision's v2 functional ops and a torch alignment warp work on them
directly. Grey, palette and alpha images are converted to RGB so every sample has 3 channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metaemb.core.errors import DataError
from metaemb.core.plugin.contract import Kind
from metaemb.core.plugin.interfaces import SampleFolder

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".webp", ".tif", ".tiff")


def read_image(path: str | Path) -> Tensor:
    """Decode one image file to an RGB uint8 tensor [3, H, W]; DataError naming the path if bad."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image '{path}' does not exist.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"image '{path}' is corrupt or not a readable image ({type(exc).__name__}: {exc}). "
            "Replace or remove the file."
        ) from None
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"image '{path}' is empty (shape {array.shape}).")
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class ImageFolder(SampleFolder):
    """Images under `<root>/<identity>/…/<image>`; samples load as RGB uint8 tensors [3, H, W]."""

    extensions: ClassVar[tuple[str, ...]] = IMAGE_EXTENSIONS
    what: ClassVar[str] = "image"
    yields = Kind("image")  # RGB uint8 [3, H, W]

    def load(self, path: Path) -> Tensor:
        return read_image(path)
