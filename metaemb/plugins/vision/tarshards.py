"""Images in WebDataset-style tar shards (`xyz.jpg` + `xyz.cls`), read without webdataset.

The shard index, selection and reading are the core's (metaemb.core.data.tarshards); this
folder decodes image members exactly as image files are decoded (RGB uint8 [3, H, W], same
modes and pixel cap). Pre-aligned crops (MS1M-style) need no frontend: `model.frontend = "none"`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import Tensor

from metaemb.core.data.tarshards import TarShardFolder
from metaemb.core.plugin.contract import Kind
from metaemb.plugins.vision.imageio import decode_image, read_image


class ImageTarFolder(TarShardFolder):
    """Image samples of tar shards; each needs a label member (.cls, .txt or .json)."""

    extensions: ClassVar[tuple[str, ...]] = (".jpg", ".jpeg", ".png", ".webp", ".ppm", ".bmp")
    what: ClassVar[str] = "image"
    yields = Kind("image")  # RGB uint8 [3, H, W]

    def decode(self, data: bytes, ext: str, where: str) -> Tensor:
        return decode_image(data, where)

    def decode_file(self, path: Path) -> Tensor:
        return read_image(path)
