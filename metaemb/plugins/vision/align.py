"""Face alignment: 5 landmarks → canonical template by a least-squares similarity, bilinear warp.

`align_faces` is the one function every path uses (training, evaluation, enrollment, export), so
train and test crops are bit-identical for the same input. The similarity is Umeyama's closed-form
least-squares fit over all points (no RANSAC: with five points a robust estimator may drop one and
crops stop matching, docs/reference/face.md). Coordinates are pixels with the centre of pixel (row i, column j)
at (x=j, y=i), as in OpenCV and dlib.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError

# 112×112 template, MTCNN/RetinaFace order: image-left eye, image-right eye, nose tip,
# image-left mouth corner, image-right mouth corner (docs/reference/face.md).
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

SCHEMES = ("mtcnn5", "dlib5")


def umeyama(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares similarity (scale, rotation, translation) taking `src` onto `dst`.

    src: [N, 2] or [B, N, 2]; dst: [N, 2] or [B, N, 2]. Returns [2, 3] or [B, 2, 3] (float64)
    with dst ≈ M[:, :2] @ p + M[:, 2]. Umeyama (1991), reflections excluded.
    """
    single = src.ndim == 2
    src = torch.as_tensor(src, dtype=torch.float64)
    dst = torch.as_tensor(dst, dtype=torch.float64)
    if single:
        src = src[None]
    if dst.ndim == 2:
        dst = dst[None].expand(src.shape[0], -1, -1)
    n = src.shape[1]
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs**2).sum((1, 2)) / n
    if bool((var_s <= 1e-12).any()):
        raise DataError("landmarks are degenerate (all points coincide); cannot align.")
    cov = xd.transpose(1, 2) @ xs / n  # [B, 2, 2]
    u, d, vt = torch.linalg.svd(cov)
    sign = torch.ones_like(d)
    sign[:, 1] = torch.sign(torch.det(u) * torch.det(vt))
    sign[sign == 0] = 1.0
    rot = u @ torch.diag_embed(sign) @ vt
    scale = (d * sign).sum(1) / var_s
    lin = scale[:, None, None] * rot
    trans = mu_d.transpose(1, 2) - lin @ mu_s.transpose(1, 2)
    m = torch.cat([lin, trans], dim=2)
    return m[0] if single else m


def transform_points(matrix: Tensor, points: Tensor) -> Tensor:
    """Apply [.., 2, 3] affine matrices to [.., N, 2] points."""
    matrix = torch.as_tensor(matrix, dtype=torch.float64)
    points = torch.as_tensor(points, dtype=torch.float64)
    return points @ matrix[..., :2].transpose(-1, -2) + matrix[..., None, :, 2]


# dlib's mean face (get_face_chip_details, unit square): the MTCNN-order points of its 68-point
# mean shape (eye centres = mean of points 36–41 and 42–47, nose tip 30, mouth corners 48 and 54)
# and the 5-point model's mean shape (image-right eye outer/inner corner, image-left eye
# outer/inner corner, nose base), both in the same frame.
_DLIB_MEAN_EYES = np.array(  # 68-point mean shape, points 36–41 then 42–47
    [
        [0.121737, 0.216423],
        [0.187122, 0.178758],
        [0.265825, 0.179852],
        [0.334606, 0.231733],
        [0.260918, 0.245099],
        [0.182743, 0.244077],
        [0.645647, 0.231733],
        [0.714428, 0.179852],
        [0.793132, 0.178758],
        [0.858516, 0.216423],
        [0.79751, 0.244077],
        [0.719335, 0.245099],
    ]
)
DLIB_MEAN_MTCNN5 = np.array(
    [
        _DLIB_MEAN_EYES[:6].mean(0),
        _DLIB_MEAN_EYES[6:].mean(0),
        [0.490127, 0.515625],  # point 30
        [0.254149, 0.780233],  # point 48
        [0.726104, 0.780233],  # point 54
    ]
)
DLIB_MEAN_5POINT = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)


def _dlib5_template_112() -> np.ndarray:
    """dlib's 5-point model (eye corners + nose base) has no mouth, so it gets its own template:
    the similarity fitting dlib's mean MTCNN points onto TEMPLATE_112 carries its 5-point mean
    shape into the 112 template frame."""
    m = umeyama(torch.from_numpy(DLIB_MEAN_MTCNN5), torch.from_numpy(TEMPLATE_112))
    return transform_points(m, torch.from_numpy(DLIB_MEAN_5POINT)).numpy()


def dlib_chip_template(
    size: int = 150, padding: float = 0.25, scheme: str = "mtcnn5"
) -> np.ndarray:
    """Template points of dlib's own face chip (`get_face_chip(img, shape, size, padding)`), the
    geometry dlib's 128-d face-recognition network expects."""
    mean = DLIB_MEAN_MTCNN5 if scheme == "mtcnn5" else DLIB_MEAN_5POINT
    return (padding + mean) / (2 * padding + 1) * size


TEMPLATE_DLIB5_112 = _dlib5_template_112()


def template(size: int, scheme: str = "mtcnn5", convention: int = 0) -> np.ndarray:
    """Template points [5, 2] for a `size`×`size` crop.

    Multiples of 112 scale the 112 template; multiples of 128 scale by size/128 and shift x by
    8·size/128 (the insightface convention); any other size (small demo crops such as 64) scales
    the 112 template. `convention` (112 or 128) forces one rule; 0 picks it from `size`.
    """
    if size < 8:
        raise ConfigError(f"crop size must be at least 8 pixels, got {size}.")
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown landmark scheme '{scheme}'; known: {', '.join(SCHEMES)}.")
    if convention not in (0, 112, 128):
        raise ConfigError(f"template convention must be 0 (auto), 112 or 128, got {convention}.")
    base = TEMPLATE_112 if scheme == "mtcnn5" else TEMPLATE_DLIB5_112
    if convention == 0:
        convention = 128 if size % 112 != 0 and size % 128 == 0 else 112
    if convention == 112:
        return base * (size / 112.0)
    ratio = size / 128.0
    out = base * ratio
    out[:, 0] += 8.0 * ratio
    return out


def warp_affine(images: Tensor, matrices: Tensor, size: int) -> Tensor:
    """Warp [B, C, H, W] images by image→crop affines [B, 2, 3] into [B, C, size, size].

    Bilinear sampling of the inverse mapping with zero padding outside the image; uint8 input is
    rounded back to uint8.
    """
    b, _, h, w = images.shape
    m = torch.as_tensor(matrices, dtype=torch.float64).reshape(b, 2, 3)
    full = torch.zeros(b, 3, 3, dtype=torch.float64)
    full[:, :2] = m
    full[:, 2, 2] = 1.0
    inv = torch.linalg.inv(full)[:, :2]  # crop → image
    coords = torch.arange(size, dtype=torch.float64)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).reshape(1, -1, 2)  # crop pixel centres
    src = transform_points(inv, grid).reshape(b, size, size, 2)
    # align_corners=True: -1 and +1 are the centres of the first and last pixels.
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=torch.float64)
    norm = src * scale - 1.0
    work = images.float() if not images.is_floating_point() else images
    out = nnf.grid_sample(
        work,
        norm.to(device=work.device, dtype=work.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    if images.dtype == torch.uint8:
        return out.round().clamp(0, 255).to(torch.uint8)
    return out.to(images.dtype)


def align_faces(
    images: Tensor,
    landmarks: Tensor | np.ndarray,
    size: int = 112,
    scheme: str = "mtcnn5",
    convention: int = 0,
    dst: np.ndarray | None = None,
) -> Tensor:
    """THE alignment: images [B, C, H, W] (or [C, H, W]) + landmarks [B, 5, 2] → aligned crops.

    Same-size images batch; one image returns one crop [C, size, size]. The target points are
    `template(size, scheme, convention)` unless `dst` gives others (e.g. `dlib_chip_template`).
    """
    single = images.ndim == 3
    if single:
        images = images[None]
    pts = torch.as_tensor(np.asarray(landmarks, dtype=np.float64)).reshape(images.shape[0], -1, 2)
    if not torch.isfinite(pts).all():
        raise DataError("landmarks contain NaN or infinite values; cannot align.")
    target = torch.from_numpy(template(size, scheme, convention) if dst is None else dst)
    if pts.shape[1] != target.shape[0]:
        raise DataError(
            f"alignment needs {target.shape[0]} landmarks per face ({scheme}), got {pts.shape[1]}."
        )
    out = warp_affine(images, umeyama(pts, target), size)
    return out[0] if single else out


def centre_landmarks(
    height: int, width: int, size: int, scheme: str = "mtcnn5", convention: int = 0
) -> np.ndarray:
    """Landmarks that make `align_faces` return the central square of an image, resized.

    Used when no face is found and the policy is "center" (the image is assumed to be a roughly
    centred face, like a pre-cropped dataset).
    """
    side = min(height, width)
    s = side / size
    off = np.array([(width - side) / 2.0, (height - side) / 2.0])
    return (template(size, scheme, convention) + 0.5) * s - 0.5 + off
