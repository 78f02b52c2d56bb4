"""Image features: RGB image → normalised float tensor [3, S, S], with training-side augmentation.

Geometry: the shorter side is resized to S (antialiased) and the centre S×S is kept, so aspect is
preserved. Normalisation is the face-recognition convention (x/255 − 0.5)/0.5 → [−1, 1] (docs/reference/face.md);
`input_spec()` records both so checkpoints carry them. Augmentation runs only when `train=True`
and draws from torch's global RNG, so it is reproducible given the seed (the engine seeds workers).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as tvf

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.plugin.components import described
from metaemb.core.plugin.contract import Kind
from metaemb.core.plugin.interfaces import Features
from metaemb.plugins.vision import jpeg

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


#: what an `image` sample folder hands the image features, for the messages below
IMAGE_KIND = (
    "an `image` sample folder gives uint8 pixels as a tensor [3, H, W] (or [1, H, W] / [H, W], "
    "repeated to 3 channels), a PIL image or an [H, W(, 3)] uint8 array"
)


def to_uint8_chw(raw: Any) -> Tensor:
    """Accept a uint8 tensor [3, H, W] (grey: [1, H, W] or [H, W]), a PIL image or an HWC uint8
    array; return [3, H, W] uint8."""
    if isinstance(raw, Image.Image):
        raw = np.asarray(raw.convert("RGB"))
    if isinstance(raw, np.ndarray):
        if raw.dtype != np.uint8:
            raise DataError(
                f"image features expect uint8 pixels; got a {raw.dtype} array: {IMAGE_KIND}"
            )
        if raw.ndim == 2:
            raw = np.repeat(raw[:, :, None], 3, axis=2)
        if raw.ndim != 3:
            raise DataError(f"image features got an array of shape {raw.shape}: {IMAGE_KIND}")
        raw = torch.from_numpy(np.array(raw, copy=True)).permute(2, 0, 1)
    if isinstance(raw, Tensor) and raw.ndim == 2:
        raw = raw.unsqueeze(0)
    if not isinstance(raw, Tensor) or raw.ndim != 3:
        shown = f"shape {tuple(raw.shape)}" if isinstance(raw, Tensor) else type(raw).__name__
        raise DataError(f"image features got {shown}: {IMAGE_KIND}")
    if raw.shape[0] == 1:
        raw = raw.expand(3, -1, -1)
    if raw.shape[0] != 3:
        raise DataError(
            f"image features expect 3 channels first; got a tensor of shape {tuple(raw.shape)}: "
            f"{IMAGE_KIND}"
        )
    if raw.dtype != torch.uint8:
        raise DataError(
            f"image features expect uint8 pixels; got {raw.dtype}: {IMAGE_KIND}. A folder that "
            "loads other values (floats, 16-bit scans) converts them to uint8, or declares its "
            "own Kind for features that take them (docs/plugins.md)."
        )
    return raw


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


#: the share of a picture the centre crop may drop before `image` features say so
CROP_WARN = 0.2


class ImageFeatures(Features):
    """Resize + normalise images; optional flips, shifts, colour jitter, blur, noise, occlusion.

    Options (all augmentation applies only when training):
      image_size   side S of the square network input.
      flip         random horizontal flip with probability 0.5.
      shift        max translation as a fraction of S (edge-replicated border).
      color_jitter brightness/contrast/saturation factors drawn from [1 − j, 1 + j].
      blur         probability of a Gaussian blur with σ ∈ [0.3, blur_sigma] pixels.
      noise        standard deviation of additive Gaussian noise, in [0, 1] pixel units.
      occlusion    probability of one random grey rectangle covering 5–25 % of the image.
      test_flip    outside training, embed each image and its horizontal mirror and average
                   the two (the flip test of face verification protocols).
    """

    out_channels = 3
    # jpeg: encoded bytes from a folder with decode = "device", decoded in `forward` (jpeg.py)
    accepts = (Kind("image"), Kind("aligned-image"), jpeg.JPEG)
    yields = Kind("image-tensor")  # normalised float [3, S, S]
    hash_neutral: ClassVar[dict[str, bool]] = {"test_flip": False}  # runs from before it
    test_options: ClassVar[tuple[str, ...]] = ("test_flip",)  # --features-set after training

    def __init__(
        self,
        image_size: int = 64,
        flip: bool = True,
        shift: float = 0.05,
        color_jitter: float = 0.0,
        blur: float = 0.0,
        blur_sigma: float = 1.2,
        noise: float = 0.0,
        occlusion: float = 0.0,
        test_flip: bool = False,
    ) -> None:
        super().__init__()
        checks = {
            "features.image_size": 8 <= image_size <= 4096,
            "features.shift": 0.0 <= shift < 0.5,
            "features.color_jitter": 0.0 <= color_jitter < 1.0,
            "features.blur": 0.0 <= blur <= 1.0,
            "features.blur_sigma": blur_sigma >= 0.3,
            "features.noise": noise >= 0.0,
            "features.occlusion": 0.0 <= occlusion <= 1.0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"config key '{bad[0]}' is out of range (8 ≤ image_size ≤ 4096; 0 ≤ shift < 0.5; "
                "0 ≤ color_jitter < 1; blur and occlusion are probabilities in [0, 1]; "
                "blur_sigma ≥ 0.3; noise ≥ 0)."
            )
        self.image_size = image_size
        self.flip = flip
        self.shift = shift
        self.color_jitter = color_jitter
        self.blur = blur
        self.blur_sigma = blur_sigma
        self.noise = noise
        self.occlusion = occlusion
        self.test_flip = test_flip

    # -- per sample (CPU, DataLoader workers) -----------------------------------------------
    def resize(self, img: Tensor) -> Tensor:
        """uint8 [3, H, W] → uint8 [3, S, S]: shorter side to S (antialiased), centre crop."""
        s = self.image_size
        h, w = img.shape[-2:]
        if (h, w) == (s, s):
            return img
        if h != w:
            short = min(h, w)
            self._warn_crop(int(h), int(w))
            img = tvf.center_crop(img, [short, short])
        return tvf.resize(img, [s, s], antialias=True)

    def _warn_crop(self, h: int, w: int) -> None:
        """Once: a picture far from square loses much of itself to the centre crop (a 128×64
        person crop keeps its middle, head and feet gone), which trains without a word."""
        lost = 1 - min(h, w) / max(h, w)
        if lost <= CROP_WARN or getattr(self, "_crop_warned", False):
            return
        self._crop_warned = True
        edges = "top and bottom" if h > w else "left and right"
        warnings.warn(
            f"{described(self, 'features')} centre-crops every picture to a square: a {h}×{w} "
            f"picture loses {lost:.0%} of it (its {edges}). For subjects that are not square "
            "(person crops, full bodies), crop or align them to a square first, or use features "
            "that keep the aspect ratio (a plugin's; see docs/plugins.md).",
            stacklevel=2,
        )

    def prepare(self, raw: Any, train: bool) -> Tensor:
        if jpeg.is_encoded(raw) and raw.dim() == 1:
            return raw  # JPEG bytes: decoded, resized and augmented on the device (`forward`)
        x = self.resize(to_uint8_chw(raw)).float().div_(255.0)
        if train:
            x = self.augment(x)
        return tvf.normalize(x, list(MEAN), list(STD))

    def collate(self, items: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        if items and jpeg.is_encoded(items[0]) and items[0].dim() == 1:
            return jpeg.pad(items)  # [N, L_max] bytes + lengths
        return torch.stack(list(items)), None

    # -- batched (training device) ----------------------------------------------------------
    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Network input as it comes, or a batch of JPEG bytes decoded on x's device, then
        prepared as `prepare` does (augmented when the module is in training mode)."""
        if not (jpeg.is_encoded(x) and x.dim() == 2):
            return x, lengths
        images = jpeg.decode_batch(x, lengths)
        if images and all(img.shape == images[0].shape for img in images):
            batch = self.resize(torch.stack(images)).float().div_(255.0)  # one resize for all
        else:
            batch = torch.stack([self.resize(img) for img in images]).float().div_(255.0)
        if self.training:
            batch = torch.stack([self.augment(y) for y in batch])
        mean = torch.tensor(MEAN, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=batch.device).view(1, 3, 1, 1)
        return (batch - mean) / std, None

    def test_views(self, x: Tensor) -> list[Tensor]:
        """The image and its horizontal mirror with `test_flip`, else the image alone."""
        return [x, x.flip(-1)] if self.test_flip else [x]

    def augment(self, x: Tensor) -> Tensor:
        """Training augmentation of a float [3, S, S] image in [0, 1]."""
        s = self.image_size
        if self.flip and float(torch.rand(())) < 0.5:
            x = x.flip(-1)
        pad = round(self.shift * s)
        if pad > 0:
            x = nnf.pad(x[None], (pad, pad, pad, pad), mode="replicate")[0]
            top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            x = x[:, top : top + s, left : left + s]
        if self.color_jitter > 0:
            j = self.color_jitter
            x = tvf.adjust_brightness(x, _uniform(1 - j, 1 + j))
            x = tvf.adjust_contrast(x, _uniform(1 - j, 1 + j))
            x = tvf.adjust_saturation(x, _uniform(1 - j, 1 + j))
        if self.blur > 0 and float(torch.rand(())) < self.blur:
            sigma = _uniform(0.3, self.blur_sigma)
            k = 2 * math.ceil(2 * sigma) + 1
            x = tvf.gaussian_blur(x, [k, k], [sigma, sigma])
        if self.noise > 0:
            x = x + self.noise * torch.randn_like(x)
        if self.occlusion > 0 and float(torch.rand(())) < self.occlusion:
            area = _uniform(0.05, 0.25) * s * s
            aspect = math.exp(_uniform(math.log(0.5), math.log(2.0)))
            h = max(1, min(s, round(math.sqrt(area * aspect))))
            w = max(1, min(s, round(math.sqrt(area / aspect))))
            top = int(torch.randint(0, s - h + 1, ()))
            left = int(torch.randint(0, s - w + 1, ()))
            x = x.clone()
            x[:, top : top + h, left : left + w] = float(torch.rand(()))
        return x.clamp_(0.0, 1.0)

    def input_spec(self) -> dict[str, Any]:
        return {
            "kind": "image",
            "image_size": self.image_size,
            "channels": 3,
            "color": "RGB",
            "mean": list(MEAN),
            "std": list(STD),
            # the geometry, in order (the key "resize" of runs saved before said it the other
            # way round; it is no longer compared)
            "crop_resize": "centre crop to the shorter side, then resize to image_size",
        }
