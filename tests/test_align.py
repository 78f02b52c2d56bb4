"""Face alignment: template geometry, Umeyama vs brute-force least squares, warp accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metaemb.core.errors import ConfigError, DataError
from metaemb.plugins.vision.align import (
    TEMPLATE_112,
    align_faces,
    centre_landmarks,
    template,
    transform_points,
    umeyama,
)


def similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def blobs(points: np.ndarray, h: int, w: int, sigma: float) -> torch.Tensor:
    """A uint8 [3, H, W] image of Gaussian dots centred on `points` (pixel-centre coordinates)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w))
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    img = np.clip(img * 255, 0, 255)
    return torch.from_numpy(np.rint(img).astype(np.uint8))[None].repeat(3, 1, 1)


def centroid(img: np.ndarray, at: np.ndarray, radius: int) -> np.ndarray:
    x0, y0 = np.rint(at).astype(int)
    win = img[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1].astype(np.float64)
    yy, xx = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    return np.array([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])


# -- template --------------------------------------------------------------------------------
def test_template_sizes_follow_the_insightface_rules():
    assert np.allclose(template(112), TEMPLATE_112)
    assert np.allclose(template(224), TEMPLATE_112 * 2)
    t128 = template(128)
    assert np.allclose(t128[:, 1], TEMPLATE_112[:, 1])
    assert np.allclose(t128[:, 0], TEMPLATE_112[:, 0] + 8)
    t256 = template(256)
    assert np.allclose(t256, (TEMPLATE_112 + np.array([8.0, 0.0])) * 2)
    assert np.allclose(template(64), TEMPLATE_112 * 64 / 112)
    assert np.allclose(template(64, convention=128), (TEMPLATE_112 + np.array([8.0, 0.0])) * 0.5)
    with pytest.raises(ConfigError):
        template(112, scheme="nope")


def test_dlib5_template_eyes_and_nose_sit_where_the_112_template_puts_them():
    t = template(112, scheme="dlib5")
    # Eye corner midpoints ≈ eye centres; nose base lies just below the nose tip, centred.
    assert np.linalg.norm((t[2] + t[3]) / 2 - TEMPLATE_112[0]) < 2.0
    assert np.linalg.norm((t[0] + t[1]) / 2 - TEMPLATE_112[1]) < 2.0
    assert abs(t[4, 0] - TEMPLATE_112[2, 0]) < 2.0
    assert 0 < t[4, 1] - TEMPLATE_112[2, 1] < 10


# -- Umeyama ---------------------------------------------------------------------------------
def brute_force_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least squares over (a, b, tx, ty): x' = a x − b y + tx, y' = b x + a y + ty."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


@pytest.mark.parametrize("seed", range(5))
def test_umeyama_equals_brute_force_least_squares(seed):
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 200, (5, 2))
    dst = apply(similarity(0.7, 0.4, 10, -3), src) + rng.normal(0, 3, (5, 2))
    m = umeyama(torch.from_numpy(src), torch.from_numpy(dst)).numpy()
    assert np.allclose(m, brute_force_similarity(src, dst), atol=1e-9)


def test_umeyama_recovers_an_exact_similarity_and_batches():
    rng = np.random.default_rng(1)
    truth = [similarity(1.5, -0.3, 4, 7), similarity(0.4, 2.5, -20, 50)]
    src = rng.uniform(0, 100, (2, 5, 2))
    dst = np.stack([apply(t, s) for t, s in zip(truth, src, strict=True)])
    m = umeyama(torch.from_numpy(src), torch.from_numpy(dst)).numpy()
    assert np.allclose(m, np.stack(truth), atol=1e-9)


def test_umeyama_rejects_degenerate_points():
    with pytest.raises(DataError):
        umeyama(torch.ones(5, 2), torch.from_numpy(TEMPLATE_112))


# -- warp ------------------------------------------------------------------------------------
def test_identity_alignment_returns_the_image_unchanged():
    img = torch.randint(0, 256, (3, 112, 112), dtype=torch.uint8)
    out = align_faces(img, TEMPLATE_112, size=112)
    assert out.dtype == torch.uint8
    assert torch.equal(out, img)
    # centre_landmarks on a square image of the crop size is the identity too.
    assert torch.equal(align_faces(img, centre_landmarks(112, 112, 112), 112), img)


@pytest.mark.parametrize(
    "size, m",
    [
        (112, similarity(1.3, 0.35, 20, -15)),
        (64, similarity(0.9, -0.5, 40, 30)),
        (128, similarity(1.8, 0.1, -10, 5)),
    ],
)
def test_warped_landmarks_land_within_half_a_pixel_of_the_template(size, m):
    pts = apply(m, template(size) * 112 / size)  # a face whose landmarks are a similarity
    img = blobs(pts, 220, 240, sigma=2.0 * m[0, :2].dot(m[0, :2]) ** 0.5)
    out = align_faces(img, pts, size=size)[0].numpy()
    tmpl = template(size)
    radius = max(3, round(6 * size / 112))
    found = np.stack([centroid(out, p, radius) for p in tmpl])
    err = np.linalg.norm(found - tmpl, axis=1)
    assert err.max() < 0.5, err


def test_synthetic_faces_warp_their_landmarks_onto_the_template_fit(tmp_path):
    synthetic = pytest.importorskip("metaemb.plugins.vision.synthetic")
    root = synthetic.generate_faces(tmp_path / "d", identities=2, images_per_identity=2)
    import csv

    with open(root / "landmarks.csv") as fh:
        rows = list(csv.reader(fh))[1:]
    tmpl = torch.from_numpy(template(64))
    for row in rows:
        lm = torch.tensor([float(v) for v in row[1:]], dtype=torch.float64).reshape(5, 2)
        m = umeyama(lm, tmpl)
        warped = transform_points(m, lm)
        # The least-squares residual is the identity's own geometry, not error: small on average.
        assert (warped - tmpl).norm(dim=1).mean() < 4.0


def test_rotated_and_scaled_copy_aligns_to_the_same_crop():
    rng = np.random.default_rng(0)
    # A textured "face": smooth random field + landmark dots, rendered analytically twice.
    base = similarity(1.4, 0.0, 20, 10)
    pts = apply(base, TEMPLATE_112)
    moved = similarity(0.8, math.radians(25), 60, -10) @ np.vstack([base, [0, 0, 1]])
    pts2 = apply(moved, TEMPLATE_112)
    freqs = rng.normal(0, 0.08, (6, 2))
    phases = rng.uniform(0, 2 * math.pi, 6)

    def render(m: np.ndarray, h: int, w: int) -> torch.Tensor:
        inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        u = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]  # template coordinates
        v = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
        field = sum(np.cos(f[0] * u + f[1] * v + p) for f, p in zip(freqs, phases, strict=True))
        inside = (u > -10) & (u < 122) & (v > -10) & (v < 122)
        img = np.where(inside, 128 + 20 * field, 0)
        return torch.from_numpy(np.rint(np.clip(img, 0, 255)).astype(np.uint8))[None]

    a = render(base, 200, 200)
    b = render(moved, 200, 200)
    crop_a = align_faces(a, pts, size=112).float()
    crop_b = align_faces(b, pts2, size=112).float()
    inner = (slice(None), slice(8, 104), slice(8, 104))
    diff = (crop_a[inner] - crop_b[inner]).abs().mean().item()
    unaligned = (a[inner].float() - b[inner].float()).abs().mean().item()
    assert diff < 3.0, diff
    assert unaligned > 10 * diff


def test_batch_and_single_alignment_are_bit_identical():
    rng = np.random.default_rng(3)
    imgs = torch.randint(0, 256, (3, 3, 90, 100), dtype=torch.uint8)
    lms = np.stack([apply(similarity(0.7, a, 15, 10), TEMPLATE_112) for a in (0.1, -0.2, 0.3)])
    lms += rng.normal(0, 1, lms.shape)
    batch = align_faces(imgs, lms, size=64)
    for i in range(3):
        assert torch.equal(batch[i], align_faces(imgs[i], lms[i], size=64))


def test_alignment_rejects_wrong_landmark_counts_and_nans():
    img = torch.zeros(3, 50, 50, dtype=torch.uint8)
    with pytest.raises(DataError):
        align_faces(img, np.zeros((4, 2)) + np.arange(4)[:, None], 32)
    bad = TEMPLATE_112.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError):
        align_faces(img, bad, 32)
