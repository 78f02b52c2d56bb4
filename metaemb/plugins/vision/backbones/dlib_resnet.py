"""dlib's 128-d face ResNet (`dlib_face_recognition_resnet_model_v1.dat`, shipped by the
face_recognition_models package of the `face` extra) behind the Backbone interface: a frozen,
pretrained network, usable as a distillation teacher (`metaemb distill --teacher dlib-resnet`)
or as a reference model (`metaemb evaluate --reference dlib-resnet`).

Its own preprocessing: dlib takes 150×150 uint8 RGB face chips aligned like `dlib.get_face_chip`.
The backbone undoes the image features' normalisation ((x·0.5 + 0.5)·255), resizes each image to
150×150 (bilinear) and runs dlib on the CPU; it has no trainable parameters and no gradient.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.plugin.contract import Kind
from metaemb.core.plugin.interfaces import Backbone

INPUT_SIZE = 150


@functools.lru_cache(maxsize=1)
def _model() -> Any:
    from metaemb.plugins.vision.dlib_detect import model_path, require_dlib

    dlib = require_dlib()
    return dlib.face_recognition_model_v1(str(model_path("recognition")))


class DlibResNet(Backbone):
    """Frozen pretrained dlib face ResNet: normalised images [N, 3, S, S] → descriptors [N, 128]."""

    accepts = Kind("image-tensor")
    feature_dim = 128
    pretrained: ClassVar[bool] = True
    frozen: ClassVar[bool] = True
    input_size: ClassVar[int] = INPUT_SIZE
    input_options: ClassVar[dict] = {"features.image_size": INPUT_SIZE}  # used as a reference
    reference_note: ClassVar[str] = (
        "dlib's network takes 150×150 face chips aligned as dlib.get_face_chip makes them; "
        "`evaluate --reference` does not align, it centre-crops and resizes each image, so "
        "the numbers are dlib's only for a folder of such chips (dlib.save_face_chips writes "
        "them). On uncropped photos (LFW's 250×250) they are not dlib's published ones."
    )

    def __init__(self, in_channels: int = 3, jitter: int = 0) -> None:
        super().__init__()
        if in_channels != 3:
            raise ConfigError(
                f"backbone dlib-resnet takes RGB images (3 channels), not {in_channels}."
            )
        if jitter < 0:
            raise ConfigError(f"backbone.jitter must be ≥ 0, got {jitter}.")
        self.jitter = jitter
        _model()  # fail now, with the install hint, not in the first batch
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    def train(self, mode: bool = True) -> DlibResNet:
        return super().train(False)  # frozen: always inference

    @torch.no_grad()
    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise DataError(f"dlib-resnet expects images [N, 3, H, W], got {tuple(x.shape)}.")
        img = ((x.float() * 0.5 + 0.5) * 255.0).clamp(0, 255)
        if img.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            img = F.interpolate(img, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                                align_corners=False, antialias=True)  # fmt: skip
        chips = img.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        model = _model()
        desc = model.compute_face_descriptor([np.ascontiguousarray(c) for c in chips], self.jitter)
        out = torch.tensor(np.asarray([list(d) for d in desc]), dtype=torch.float32)
        return out.to(x.device)
