"""JPEG decoding on the training device (nvJPEG through `torchvision.io.decode_jpeg`).

With `[folder] decode = "device"` (image folders and tar shards) a sample travels through the
DataLoader as its encoded JPEG bytes — a uint8 tensor [L], the data kind `jpeg` — instead of
decoded pixels: workers only read files and check headers, the collate pads the bytes to
[N, L_max] with their lengths, and the image features decode the batch where the model runs
(`decode_jpeg(..., device="cuda")`, batched), then resize, augment and normalise it there.
This moves the most expensive CPU step of an image pipeline (decoding; a 112 × 112 JPEG costs
~0.4 ms of a core) onto the GPU, and shrinks what workers pass between processes.

Without CUDA the batch is decoded by torchvision on the CPU in the main process (a notice says
so once): results are the same, only slower than decoding in the workers, so evaluation and
embedding of such a run work on any machine. Only JPEG files qualify: another format is a
DataError naming the file (use `decode = "cpu"`, the default, for mixed folders). Header
problems (not a JPEG, too many pixels) are found in the workers, with the file named; a JPEG
whose data is damaged fails at decoding, where the batch is known but not the file.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.plugin.contract import Kind
from metaemb.plugins.vision.imageio import max_image_pixels

JPEG = Kind("jpeg")  # encoded JPEG bytes, uint8 [L]
Decode = Literal["cpu", "device"]  # the folders' `decode` option
DECODE = ("cpu", "device")
_noticed = False


def check_decode(decode: str) -> str:
    """Validate a folder's `decode` option (ConfigError naming the allowed values)."""
    if decode not in DECODE:
        raise ConfigError(
            f"folder.decode must be 'cpu' (decode in the DataLoader workers) or 'device' (pass "
            f"JPEG bytes and decode on the training GPU); got '{decode}'."
        )
    return decode


def folder_yields(options: Mapping[str, Any]) -> Kind:
    """An image folder's data kind: decoded images, or JPEG bytes with decode = "device"."""
    return JPEG if options.get("decode", "cpu") == "device" else Kind("image")


def encoded_jpeg(data: bytes, where: str) -> Tensor:
    """The bytes of one JPEG as uint8 [L], after checking its header (format, pixel cap)
    without decoding it; DataError naming `where` otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"image '{where}' is corrupt or not a readable image ({exc}).") from None
    if fmt != "JPEG":
        raise DataError(
            f"image '{where}' is {fmt}, not JPEG: folder.decode = 'device' decodes JPEG only. "
            "Convert it, or use folder.decode = 'cpu'."
        )
    cap = max_image_pixels()
    if w * h > cap:
        raise DataError(
            f"image '{where}' is {w}×{h} ({w * h / 1e6:.1f} megapixels), above the limit of "
            f"{cap / 1e6:g} megapixels; downscale it, or raise METAEMB_MAX_IMAGE_PIXELS."
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def is_encoded(x: Any) -> bool:
    """Whether `x` is JPEG bytes: one sample [L] or a padded batch [N, L] of uint8."""
    return isinstance(x, Tensor) and x.dtype == torch.uint8 and x.dim() in (1, 2)


def pad(items: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Encoded samples → ([N, L_max] zero-padded bytes, [N] lengths)."""
    lengths = torch.tensor([len(b) for b in items], dtype=torch.long)
    out = torch.zeros(len(items), int(lengths.max()) if len(items) else 0, dtype=torch.uint8)
    for i, b in enumerate(items):
        out[i, : len(b)] = b
    return out, lengths


def decode_batch(x: Tensor, lengths: Tensor | None) -> list[Tensor]:
    """Padded JPEG bytes [N, L] (on any device) → RGB uint8 images [3, H, W] on x's device:
    nvJPEG when x is on CUDA, else torchvision's CPU decoder (with a one-time notice)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    global _noticed
    device = x.device
    n = x.shape[0]
    sizes = lengths.tolist() if lengths is not None else [x.shape[1]] * n
    host = x.cpu()  # decode_jpeg takes its input on the CPU whatever the device
    blobs = [host[i, : int(sizes[i])] for i in range(n)]
    if device.type != "cuda" and not _noticed:
        _noticed = True
        warnings.warn(
            f"folder.decode = 'device' but the model runs on {device.type}: JPEG batches are "
            "decoded on the CPU in the main process (slower than decoding in the DataLoader "
            "workers; folder.decode = 'cpu' does that).",
            stacklevel=3,
        )
    target = device if device.type == "cuda" else torch.device("cpu")
    try:
        images = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=target)
    except RuntimeError as exc:
        raise DataError(
            f"a JPEG in this batch of {n} could not be decoded on {target} ({exc}); find it "
            "with folder.decode = 'cpu', which names the file."
        ) from None
    return [img.to(device) for img in images]
