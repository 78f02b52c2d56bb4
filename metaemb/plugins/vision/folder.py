"""ImageFolder: a root of `<identity>/…/<image>` files (LFW, VGGFace2, CASIA-WebFace, the demo set).

`load` returns a uint8 tensor [3, H, W] (RGB): tensors batch, pin and travel between DataLoader
workers cheaply, and torchvision's v2 functional ops and a torch alignment warp work on them
directly. Grey, palette and alpha images are converted to RGB so every sample has 3 channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from torch import Tensor

from metaemb.core.errors import DataError
from metaemb.core.plugin.interfaces import Sample, SampleFolder
from metaemb.plugins.vision.imageio import read_image
from metaemb.plugins.vision.jpeg import Decode, check_decode, encoded_jpeg, folder_yields

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "read_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".webp", ".tif", ".tiff")


class ImageFolder(SampleFolder):
    """Images under `<root>/<identity>/…/<image>`; samples load as RGB uint8 tensors [3, H, W],
    or with `decode = "device"` as their JPEG bytes, decoded on the training GPU (jpeg.py)."""

    extensions: ClassVar[tuple[str, ...]] = IMAGE_EXTENSIONS
    what: ClassVar[str] = "image"
    yields = staticmethod(folder_yields)  # image: RGB uint8 [3, H, W]; jpeg: bytes [L]
    hash_neutral: ClassVar[dict[str, str]] = {"decode": "cpu"}  # runs from before the option
    decode: str = "cpu"

    def __init__(
        self, root: str | Path, samples: Sequence[Sample] | None = None, decode: Decode = "cpu"
    ) -> None:
        self.decode = check_decode(decode)
        super().__init__(root, samples)

    def load(self, path: Path) -> Tensor:
        if self.decode == "device":
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise DataError(f"image '{path}' cannot be read ({exc}).") from None
            return encoded_jpeg(data, str(path))
        return read_image(path)
