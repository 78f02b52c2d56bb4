"""The built-in synthetic face dataset: cartoon identities under real-looking nuisance variation.

Each identity is a seeded draw of face shape, skin and hair colour, hair style, eye spacing/size/
colour, brows, nose, mouth, ears and extras (glasses, beard). Each image re-draws the nuisances —
pose (roll, yaw), scale, shift, expression (smile, open mouth, blink, raised brows), background,
lighting (gain, gradient, colour cast), blur and sensor noise — so raw pixels are a poor identity
signal (cosine EER ≥ 25 %) while the identity cues survive for a CNN to learn.

Shapes are drawn as polygons transformed by the per-image similarity transform on a 4× canvas and
downsampled (antialiasing); the same transform maps the 5 landmarks, so they are exact.
Landmarks are pixel-index coordinates of the written image (the centre of pixel (0, 0) is (0, 0)).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from metaemb.core.errors import DataError

SUPERSAMPLE = 4
MARKER = ".metaemb-demo.json"
LANDMARKS_FILE = "landmarks.csv"
GENERATOR_VERSION = 1

Point = tuple[float, float]


@dataclass(frozen=True)
class Identity:
    """The stable traits of one synthetic person (canvas units: the image is [0, 1]²)."""

    face_w: float
    face_h: float
    jaw: float
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: int  # 0 bald, 1 short, 2 long, 3 side fringe
    hairline: float
    hair_slant: float
    eye_dx: float
    eye_y: float
    eye_r: float
    iris: tuple[int, int, int]
    brow_gap: float
    brow_thick: float
    brow_tilt: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip: tuple[int, int, int]
    lip_thick: float
    ear: float
    glasses: bool
    beard: int  # 0 none, 1 moustache, 2 full beard


def draw_identity(seed: int, index: int) -> Identity:
    """The traits of identity `index` of the dataset seeded `seed` (independent of other ids)."""
    rng = np.random.default_rng([seed, index, 1])
    tone = rng.uniform(0, 1)
    skin = (
        int(255 - 120 * tone + rng.uniform(-12, 12)),
        int(215 - 120 * tone + rng.uniform(-12, 12)),
        int(185 - 110 * tone + rng.uniform(-15, 15)),
    )
    hair_palette = [(25, 20, 18), (70, 45, 25), (140, 95, 50), (215, 180, 110), (160, 60, 30)]
    hair = np.array(hair_palette[int(rng.integers(len(hair_palette)))], float)
    hair = tuple(int(v) for v in np.clip(hair + rng.uniform(-20, 20, 3), 0, 255))
    iris_palette = [(60, 40, 25), (50, 90, 140), (70, 110, 70), (110, 80, 40)]
    iris = iris_palette[int(rng.integers(len(iris_palette)))]
    lip = tuple(
        int(np.clip(c * rng.uniform(0.6, 0.85) + rng.uniform(0, 40) * (i == 0), 0, 255))
        for i, c in enumerate(skin)
    )
    return Identity(
        face_w=rng.uniform(0.25, 0.34),
        face_h=rng.uniform(0.33, 0.42),
        jaw=rng.uniform(0.0, 0.45),
        skin=skin,
        hair=hair,
        hair_style=int(rng.integers(4)),
        hairline=rng.uniform(-0.55, -0.2),
        hair_slant=rng.uniform(-0.25, 0.25),
        eye_dx=rng.uniform(0.30, 0.46),
        eye_y=rng.uniform(-0.22, -0.05),
        eye_r=rng.uniform(0.10, 0.17),
        iris=iris,
        brow_gap=rng.uniform(0.10, 0.20),
        brow_thick=rng.uniform(0.03, 0.08),
        brow_tilt=rng.uniform(-0.25, 0.25),
        nose_len=rng.uniform(0.18, 0.32),
        nose_w=rng.uniform(0.07, 0.16),
        mouth_y=rng.uniform(0.42, 0.58),
        mouth_w=rng.uniform(0.22, 0.38),
        lip=lip,
        lip_thick=rng.uniform(0.03, 0.08),
        ear=rng.uniform(0.10, 0.20),
        glasses=bool(rng.random() < 0.2),
        beard=int(rng.choice(3, p=[0.7, 0.15, 0.15])),
    )


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _scaled(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * f, 0, 255)) for c in rgb)


def render_face(
    ident: Identity, seed: int, index: int, image: int, size: int = 64
) -> tuple[Image.Image, np.ndarray]:
    """Render image `image` of identity `index`: an RGB image and its 5 landmarks [5, 2]."""
    rng = np.random.default_rng([seed, index, 2, image])
    big = size * SUPERSAMPLE
    # Nuisance: pose, scale, shift, expression.
    roll = math.radians(rng.uniform(-15, 15))
    yaw = rng.uniform(-1, 1)
    scale = rng.uniform(0.85, 1.12)
    shift = rng.uniform(-0.07, 0.07, 2)
    smile = rng.uniform(-0.6, 1.0)
    mouth_open = max(0.0, rng.uniform(-0.6, 1.0))
    blink = rng.uniform(0.35, 1.0) if rng.random() < 0.85 else 0.12
    brow_raise = rng.uniform(-0.03, 0.05)

    w, h = ident.face_w, ident.face_h
    centre = np.array([0.5, 0.53])
    rot = np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])

    def T(p: np.ndarray) -> np.ndarray:
        """Face units (face centre 0, half-width/height 1 on each axis) → supersampled pixels."""
        p = np.atleast_2d(np.asarray(p, float)) * [w, h]
        q = centre + shift + scale * (p @ rot.T)
        return q * big - 0.5

    def poly(draw: ImageDraw.ImageDraw, pts: np.ndarray, fill: tuple[int, int, int]) -> None:
        draw.polygon([tuple(v) for v in T(pts).tolist()], fill=fill)

    feature_dx = 0.12 * yaw  # yaw moves inner features sideways and narrows the far side
    bg = tuple(int(v) for v in rng.uniform(30, 230, 3))
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 4))):  # background clutter
        c = rng.uniform(0, big, 2)
        r = rng.uniform(0.05, 0.25) * big
        col = tuple(int(v) for v in rng.uniform(20, 235, 3))
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=col)

    skin, hair = ident.skin, ident.hair
    if ident.hair_style == 2:  # long hair behind the face
        back = _ellipse(0, -0.05, 1.22, 1.1)
        back[:, 1] = np.minimum(back[:, 1], 0.75)
        poly(draw, back, hair)
    neck = np.array([[-0.42, 0.6], [0.42, 0.6], [0.5, 1.6], [-0.5, 1.6]])
    poly(draw, neck, _scaled(skin, 0.82))
    for side in (-1, 1):
        ear = _ellipse(side * (1.0 - 0.1 * side * yaw), -0.05, ident.ear, ident.ear * 2.2)
        poly(draw, ear, _scaled(skin, 0.9))
    face = _ellipse(0, 0, 1.0, 1.0, 64)
    low = face[:, 1] > 0
    face[low, 0] *= 1.0 - ident.jaw * face[low, 1] ** 2
    face[:, 0] *= 1.0 - 0.06 * abs(yaw)
    poly(draw, face, skin)
    if ident.hair_style != 0:
        top = _ellipse(0, -0.08, 1.05, 1.0, 64)
        line = ident.hairline + ident.hair_slant * top[:, 0]
        if ident.hair_style == 3:
            line = line + 0.18 * np.clip(top[:, 0], 0, None)
        cap = top[top[:, 1] < line]
        if len(cap) >= 3:
            poly(draw, cap, hair)
    if ident.beard == 2:
        beard = face[face[:, 1] > ident.mouth_y - 0.15]
        poly(draw, np.vstack([beard, [[0.0, ident.mouth_y - 0.12]]]), _scaled(hair, 1.0))

    # Eyes: sclera, iris, pupil; blink shrinks the opening.
    eye_centres = []
    for side in (-1, 1):
        ex = side * ident.eye_dx + feature_dx
        ey = ident.eye_y
        rx = ident.eye_r * (1.0 - 0.25 * side * yaw)
        ry = ident.eye_r * 0.55 * blink
        poly(draw, _ellipse(ex, ey, rx, ry), (240, 240, 235))
        ir = min(rx, ident.eye_r) * 0.55
        poly(draw, _ellipse(ex + 0.3 * feature_dx, ey, ir, min(ir, ry)), ident.iris)
        poly(draw, _ellipse(ex + 0.3 * feature_dx, ey, ir * 0.45, min(ir * 0.45, ry)), (15, 15, 15))
        eye_centres.append((ex, ey))
        by = ey - ident.brow_gap - ident.eye_r * 0.5 - brow_raise
        inner, outer = ex - side * rx * 1.1, ex + side * rx * 1.2
        tilt = ident.brow_tilt * rx
        t = ident.brow_thick
        brow = np.array(
            [[inner, by + tilt], [outer, by - tilt], [outer, by - tilt - t], [inner, by + tilt - t]]
        )
        poly(draw, brow, _scaled(hair, 0.85))
    # Nose: a shaded wedge ending at the tip (the landmark).
    tip = (feature_dx * 1.3, ident.eye_y + ident.nose_len + 0.12)
    nose = np.array(
        [
            [feature_dx, ident.eye_y + 0.05],
            [tip[0] + ident.nose_w, tip[1]],
            [tip[0], tip[1] + 0.04],
            [tip[0] - ident.nose_w, tip[1]],
        ]
    )
    poly(draw, nose, _scaled(skin, 0.78))
    # Mouth: corners lifted by the smile, lower lip bulges, opening shows a dark interior.
    mx, my, mw = feature_dx, ident.mouth_y, ident.mouth_w * (1 + 0.15 * smile)
    left, right = (mx - mw, my - 0.06 * smile), (mx + mw, my - 0.06 * smile)
    xs = np.linspace(-1, 1, 13)
    upper = np.stack([mx + mw * xs, my - 0.06 * smile * xs**2 - ident.lip_thick * (1 - xs**2)], 1)
    lower = np.stack(
        [
            mx + mw * xs[::-1],
            my
            - 0.06 * smile * xs[::-1] ** 2
            + (ident.lip_thick + 0.12 * mouth_open) * (1 - xs[::-1] ** 2),
        ],
        1,
    )
    poly(draw, np.vstack([upper, lower]), ident.lip)
    if mouth_open > 0.15:
        inner = np.stack(
            [mx + 0.8 * mw * xs, my - 0.06 * smile * xs**2 + 0.09 * mouth_open * (1 - xs**2)], 1
        )
        poly(
            draw,
            np.vstack([upper[1:-1] * [1, 1] + [0, ident.lip_thick * 0.6], inner[::-1][1:-1]]),
            (60, 20, 25),
        )
    if ident.beard == 1:
        m = np.array(
            [
                [mx - mw, my - 0.03],
                [mx + mw, my - 0.03],
                [mx + mw * 0.8, my - 0.12],
                [mx - mw * 0.8, my - 0.12],
            ]
        )
        poly(draw, m, _scaled(hair, 0.9))
    if ident.glasses:
        frame = (30, 30, 30)
        for ex, ey in eye_centres:
            ring = T(_ellipse(ex, ey, ident.eye_r * 1.5, ident.eye_r * 1.1))
            draw.line(
                [tuple(v) for v in ring.tolist()] + [tuple(ring[0])],
                fill=frame,
                width=max(1, big // 64),
            )
        bridge = T(
            np.array(
                [
                    [eye_centres[0][0] + ident.eye_r * 1.5, eye_centres[0][1]],
                    [eye_centres[1][0] - ident.eye_r * 1.5, eye_centres[1][1]],
                ]
            )
        )
        draw.line([tuple(v) for v in bridge.tolist()], fill=frame, width=max(1, big // 64))

    landmarks_big = T(np.array([eye_centres[0], eye_centres[1], tip, left, right]))
    small = img.resize((size, size), Image.Resampling.BOX)
    blur = rng.uniform(0.0, 1.0) * size / 64
    if blur > 0.2:
        small = small.filter(ImageFilter.GaussianBlur(blur))
    # Lighting: global gain, a directional gradient and a colour cast; then sensor noise.
    pix = np.asarray(small, dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    field = rng.uniform(0.65, 1.3) * (
        1 + rng.uniform(0.0, 0.7) * (xx * math.cos(angle) + yy * math.sin(angle))
    )
    cast = 1 + rng.uniform(-0.12, 0.12, 3)
    pix = pix * field[:, :, None] * cast + rng.normal(0, rng.uniform(1.5, 8.0), pix.shape)
    out = Image.fromarray(np.clip(np.rint(pix), 0, 255).astype(np.uint8), "RGB")
    # Supersampled pixel-index coordinates → output pixel-index coordinates.
    landmarks = (landmarks_big - (SUPERSAMPLE - 1) / 2) / SUPERSAMPLE
    return out, landmarks


def _params(identities: int, images_per_identity: int, image_size: int, seed: int) -> dict:
    return {
        "generator": "metaemb face demo",
        "version": GENERATOR_VERSION,
        "identities": identities,
        "images_per_identity": images_per_identity,
        "image_size": image_size,
        "seed": seed,
    }


def _is_complete(out: Path, params: dict) -> bool:
    marker = out / MARKER
    if not marker.is_file():
        return False
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if found != params:
        raise DataError(
            f"'{out}' already holds a different demo dataset ({found}); asked for {params}. "
            "Choose another output folder or delete this one."
        )
    return True


def generate_faces(
    out: Path,
    identities: int = 120,
    images_per_identity: int = 8,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the synthetic face dataset to `out/<identity>/<image>.png` + `out/landmarks.csv`.

    Idempotent (a complete dataset with the same parameters is left alone) and atomic: images are
    written into a temporary sibling folder renamed into place at the end, so an interrupted run
    never leaves a half dataset that looks complete. Returns `out`.
    """
    out = Path(out)
    if identities < 2 or images_per_identity < 1 or image_size < 16:
        raise DataError(
            f"demo face data needs identities ≥ 2, images_per_identity ≥ 1 and image_size ≥ 16; "
            f"got {identities}, {images_per_identity}, {image_size}."
        )
    params = _params(identities, images_per_identity, image_size, seed)
    if _is_complete(out, params):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"'{out}' exists and is not a complete metaemb demo dataset; delete it or choose "
            "another output folder."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        rows = []
        for i in range(identities):
            ident = draw_identity(seed, i)
            name = f"id{i:04d}"
            (tmp / name).mkdir()
            for j in range(images_per_identity):
                img, lm = render_face(ident, seed, i, j, image_size)
                rel = f"{name}/{j:03d}.png"
                img.save(tmp / rel, format="PNG", optimize=False)
                rows.append([rel, *(f"{v:.3f}" for v in lm.reshape(-1))])
        with open(tmp / LANDMARKS_FILE, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", *(f"{a}{k}" for k in range(1, 6) for a in "xy")])
            writer.writerows(rows)
        (tmp / MARKER).write_text(json.dumps(params))
        if out.exists():
            out.rmdir()  # empty (checked above)
        try:
            os.rename(tmp, out)
        except OSError:
            if _is_complete(out, params):  # another process finished the same set first
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


generate_faces.version = GENERATOR_VERSION  # type: ignore[attr-defined]  # part of the demo cache key
