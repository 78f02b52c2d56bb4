"""Decoding image files to RGB uint8, whatever their bit depth or mode, with a size cap.

PIL's `convert("RGB")` clips 16-bit and 32-bit grey values at 255, so a 16-bit PNG would load
as an all-white image. Modes are therefore mapped explicitly:

  1, L, P, PA, LA, RGB, RGBA, RGBX, CMYK, YCbCr, LAB, HSV   PIL's conversion (alpha dropped)
  16-bit colour (PNG RGB/RGBA at 16 bits)                   PIL keeps the high byte (x >> 8)
  I;16, I;16B, I;16L (16-bit grey)                          x >> 8, the same rule
  I (32-bit integer grey)                                   read as 16-bit: x >> 8; values
                                                            outside 0..65535 are refused
  F (32-bit float grey)                                     read as intensities in [0, 1]:
                                                            round(255·x); others are refused

Images larger than MAX_IMAGE_PIXELS (env METAEMB_MAX_IMAGE_PIXELS) are refused from their header,
before any pixel is decoded (a 12000² PNG takes seconds and gigabytes per read): downscaling
silently would move the face landmarks, which are in the original pixel coordinates.
Every refusal is a DataError naming the file, so `on_bad_sample = "skip"` skips it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # 40 megapixels: 120 MB as RGB uint8


def max_image_pixels() -> int:
    """The pixel cap: $METAEMB_MAX_IMAGE_PIXELS, else DEFAULT_MAX_IMAGE_PIXELS."""
    value = os.environ.get("METAEMB_MAX_IMAGE_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        cap = int(value)
    except ValueError:
        cap = 0
    if cap <= 0:
        raise ConfigError(
            f"METAEMB_MAX_IMAGE_PIXELS must be a positive whole number of pixels, got '{value}'."
        )
    return cap


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


_FEW_LEVELS_WARNED: list[bool] = []


def _warn_few_levels(path: Path, peak: int) -> None:
    """16-bit data of 12 bits or fewer (sensor images stored in a 16-bit PNG) keeps at most 16
    grey levels once read as 8 bits: say so once per process."""
    if _FEW_LEVELS_WARNED:
        return
    _FEW_LEVELS_WARNED.append(True)
    warnings.warn(
        f"16-bit image '{path}' holds values up to {peak} only: read as 8 bits (its high byte) "
        f"it keeps {peak // 256 + 1} grey level(s). Rescale such data to the full 16-bit range, "
        "or read it with a sample folder of your own that scales it. Further images like it "
        "are not reported.",
        stacklevel=3,
    )


def to_rgb8(img: Image.Image, path: Path) -> np.ndarray:
    """[H, W, 3] uint8 RGB of a decoded image, by the mode rules in the module docstring."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img if mode in ("I;16", "I;16B", "I;16L", "I") else img.convert("I"))
        a = a.astype(np.int64)
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise DataError(
                f"image '{path}' is a 32-bit integer image with values in [{int(a.min())}, "
                f"{int(a.max())}], outside the 16-bit range metaemb reads; convert it to 8 or "
                "16 bits per channel."
            )
        if a.size and int(a.max()) < 4096:
            _warn_few_levels(path, int(a.max()))
        return _grey_to_rgb((a >> 8).astype(np.uint8))
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if a.size and (not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0):
            raise DataError(
                f"image '{path}' is a floating-point image with values outside [0, 1] (or not "
                "finite); metaemb reads float images as intensities in [0, 1]. Convert it to an "
                "8-bit image."
            )
        return _grey_to_rgb(np.round(a * 255.0).astype(np.uint8))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_image(path: str | Path, max_pixels: int | None = None) -> Tensor:
    """Decode one image file to an RGB uint8 tensor [3, H, W]; DataError naming the path if it
    is missing, corrupt, empty, too large, or of a mode that cannot be mapped to 8 bits."""
    path = Path(path)
    return _decode(path, path, max_pixels)


def decode_image(data: bytes, where: str, max_pixels: int | None = None) -> Tensor:
    """`read_image` for encoded bytes (a tar member, a record); `where` names them in errors."""
    return _decode(io.BytesIO(data), Path(where), max_pixels)


_ORIENTATION_NOTED: list[str] = []  # once per process: a folder of phone photos warns once


def _note_orientation(img: Image.Image, path: Path) -> None:
    """Pixels are used as stored (as the device JPEG decoder and cached landmarks see them); an
    EXIF rotation tag, which photo viewers apply, is named once so sideways faces are no surprise."""
    if _ORIENTATION_NOTED or img.format not in ("JPEG", "TIFF", "WEBP", "PNG"):
        return
    try:
        orientation = int(img.getexif().get(0x0112, 1))
    except Exception:  # an unreadable EXIF block: nothing to say
        return
    if orientation not in (0, 1):
        _ORIENTATION_NOTED.append(str(path))
        warnings.warn(
            f"image '{path}' carries an EXIF orientation tag ({orientation}: rotated or mirrored "
            "when a viewer shows it); metaemb uses the pixels as stored, so such faces are "
            "sideways. Rotate them upright first (e.g. `mogrify -auto-orient *.jpg`, or PIL's "
            "ImageOps.exif_transpose). Said once per process (so once per data-loader worker) for the first such image.",
            stacklevel=2,
        )


def _decode(source: Path | io.BytesIO, path: Path, max_pixels: int | None) -> Tensor:
    cap = max_image_pixels() if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():
            # Our own cap (below PIL's) decides; PIL's bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w * h > cap:
                    raise DataError(
                        f"image '{path}' is {w}×{h} ({w * h / 1e6:.1f} megapixels), above the "
                        f"limit of {cap / 1e6:g} megapixels; downscale it (and its landmarks), or "
                        "raise the limit with the environment variable METAEMB_MAX_IMAGE_PIXELS."
                    )
                img.load()
                _note_orientation(img, path)
                array = to_rgb8(img, path)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"image '{path}' does not exist.") from None
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"image '{path}' is too large to decode safely ({exc}); downscale it."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, MemoryError) as exc:
        if _empty(path):
            raise DataError(
                f"image '{path}' is empty (0 bytes). Replace or remove the file."
            ) from None
        raise DataError(
            f"image '{path}' is corrupt or not a readable image ({type(exc).__name__}: {exc}). "
            "Replace or remove the file."
        ) from None
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"image '{path}' is empty (shape {array.shape}).")
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _empty(path: object) -> bool:
    """Whether `path` names a file of 0 bytes (an interrupted copy), for a message saying so."""
    import os

    try:
        return os.path.getsize(path) == 0  # type: ignore[arg-type]
    except (OSError, TypeError):
        return False
