"""Images in WebDataset-style tar shards (`xyz.jpg` + `xyz.cls`), read without webdataset.

The shard index, selection and reading are the core's (metaemb.core.data.tarshards); this
folder decodes image members exactly as image files are decoded (RGB uint8 [3, H, W], same
modes and pixel cap). Pre-aligned crops (MS1M-style) need no frontend: `model.frontend = "none"`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from torch import Tensor

from metaemb.core.data.tarshards import TarShardFolder
from metaemb.core.plugin.interfaces import Sample
from metaemb.plugins.vision.imageio import decode_image, read_image
from metaemb.plugins.vision.jpeg import Decode, check_decode, encoded_jpeg, folder_yields


class ImageTarFolder(TarShardFolder):
    """Image samples of tar shards; each needs a label member (.cls, .txt or .json). With
    `decode = "device"` samples travel as JPEG bytes, decoded on the training GPU (jpeg.py)."""

    extensions: ClassVar[tuple[str, ...]] = (".jpg", ".jpeg", ".png", ".webp", ".ppm", ".bmp")
    plain: ClassVar[str] = "image"  # loose files and plain folders, after training
    what: ClassVar[str] = "image"
    yields = staticmethod(folder_yields)  # image: RGB uint8 [3, H, W]; jpeg: bytes [L]

    def __init__(
        self,
        root: str | Path,
        shards: str = "*.tar",
        label: str = "cls,txt,json",
        json_key: str = "identity",
        decode: Decode = "cpu",
        cache_dir: Path | None = None,
        samples: Sequence[Sample] | None = None,
    ) -> None:
        self.on_device = check_decode(decode) == "device"
        super().__init__(root, shards, label, json_key, cache_dir, samples)

    def decode(self, data: bytes, ext: str, where: str) -> Tensor:
        if self.on_device:
            return encoded_jpeg(data, where)
        return decode_image(data, where)

    def decode_file(self, path: Path) -> Tensor:
        return self.decode(path.read_bytes(), "", str(path)) if self.on_device else read_image(path)
