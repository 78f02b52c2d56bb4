"""The synthetic face generator: determinism, layout, landmarks, atomicity and task difficulty."""

from __future__ import annotations

import csv
import hashlib
import itertools

import numpy as np
import pytest
from PIL import Image

from metaemb.core.errors import DataError
from metaemb.plugins.vision import synthetic
from metaemb.plugins.vision.folder import ImageFolder
from metaemb.plugins.vision.synthetic import draw_identity, generate_faces, render_face


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_faces(tmp_path / "a", identities=3, images_per_identity=2, image_size=32, seed=5)
    b = generate_faces(tmp_path / "b", identities=3, images_per_identity=2, image_size=32, seed=5)
    c = generate_faces(tmp_path / "c", identities=3, images_per_identity=2, image_size=32, seed=6)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    # Identity traits do not depend on how many identities are generated.
    assert draw_identity(5, 2) == draw_identity(5, 2) and draw_identity(5, 2) != draw_identity(5, 1)


def test_layout_and_landmark_file(tmp_path):
    size = 48
    out = generate_faces(tmp_path / "faces", identities=4, images_per_identity=5, image_size=size)
    folder = ImageFolder(out)
    assert folder.identities == ["id0000", "id0001", "id0002", "id0003"]
    assert len(folder) == 20
    with open(out / "landmarks.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4", "x5", "y5"]
    assert sorted(r[0] for r in rows[1:]) == sorted(s.path for s in folder.samples)
    for row in rows[1:]:
        assert Image.open(out / row[0]).size == (size, size)
        pts = np.array([float(v) for v in row[1:]]).reshape(5, 2)
        assert (pts >= 0).all() and (pts <= size - 1).all()
        left_eye, right_eye, nose, mouth_l, mouth_r = pts
        assert left_eye[0] < right_eye[0] and mouth_l[0] < mouth_r[0]
        eyes_y, mouth_y = (left_eye[1] + right_eye[1]) / 2, (mouth_l[1] + mouth_r[1]) / 2
        assert eyes_y < nose[1] < mouth_y
        assert 0.1 * size < np.linalg.norm(right_eye - left_eye) < 0.5 * size


def test_landmarks_follow_the_face_across_pose():
    """The eye landmarks sit on the drawn eyes: the pixels there are darker/odder than the skin at
    the same height between them, averaged over many poses."""
    ident = draw_identity(0, 3)
    contrast = []
    for j in range(24):
        img, lm = render_face(ident, 0, 3, j, 128)
        pix = np.asarray(img, dtype=np.float32)
        eye = pix[round(lm[0, 1]), round(lm[0, 0])]
        # Cheek point: below the eye by a third of the eye-to-mouth distance, clearly on the skin.
        cheek_pt = lm[0] + (lm[3] - lm[0]) * 0.45
        cheek = pix[round(cheek_pt[1]), round(cheek_pt[0])]
        contrast.append(np.abs(eye - cheek).sum())
    assert np.median(contrast) > 100


def test_idempotent_and_refuses_foreign_folders(tmp_path):
    out = generate_faces(tmp_path / "d", identities=2, images_per_identity=2, image_size=32)
    stamp = (out / "id0000" / "000.png").stat().st_mtime_ns
    assert generate_faces(out, identities=2, images_per_identity=2, image_size=32) == out
    assert (out / "id0000" / "000.png").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="different demo dataset"):
        generate_faces(out, identities=3, images_per_identity=2, image_size=32)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="not a complete metaemb demo dataset"):
        generate_faces(foreign, identities=2, images_per_identity=2, image_size=32)
    assert (foreign / "keep.txt").read_text() == "user data"


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.render_face

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_face", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_faces(tmp_path / "x", identities=3, images_per_identity=3, image_size=32)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "render_face", real)
    out = generate_faces(tmp_path / "x", identities=3, images_per_identity=3, image_size=32)
    assert len(ImageFolder(out)) == 9


# ---------------------------------------------------------------------------------------------
def _hull_eer(target: np.ndarray, nontarget: np.ndarray) -> float:
    """EER of the ROC convex hull, by brute force over thresholds at every score."""
    scores = np.concatenate([target, nontarget])
    thresholds = np.concatenate([np.unique(scores), [np.inf]])
    pmiss = np.array([(target < t).mean() for t in thresholds])
    pfa = np.array([(nontarget >= t).mean() for t in thresholds])
    # Lower-left convex hull of the (pfa, pmiss) points; EER where it crosses pmiss = pfa.
    pts = sorted(set(zip(pfa.tolist(), pmiss.tolist(), strict=True)))
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    for (x1, y1), (x2, y2) in itertools.pairwise(hull):
        if (x1 - y1) * (x2 - y2) <= 0:
            d = (x2 - x1) - (y2 - y1)
            t = 0.0 if d == 0 else (y1 - x1) / d
            return x1 + t * (x2 - x1)
    raise AssertionError("hull never crosses the EER line")


def test_hull_eer_helper_known_answers():
    assert _hull_eer(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert _hull_eer(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == pytest.approx(0.5)
    # One swapped pair out of 2×2: the hull gives 0.25 (the step ROC would say 0.5).
    assert _hull_eer(np.array([1.0, 3.0]), np.array([0.0, 2.0])) == pytest.approx(0.25)


def test_raw_pixel_cosine_is_a_poor_verifier(tmp_path):
    """A real task: cosine on normalised raw pixels of held-out identities gives EER ≥ 25 %."""
    out = generate_faces(tmp_path / "f", identities=12, images_per_identity=8, image_size=64)
    folder = ImageFolder(out)
    x = np.stack(
        [(folder[i][0].numpy().reshape(-1) / 255.0 - 0.5) / 0.5 for i in range(len(folder))]
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.array(folder.labels)
    scores = x @ x.T
    iu = np.triu_indices(len(labels), 1)
    same = (labels[:, None] == labels[None, :])[iu]
    eer = _hull_eer(scores[iu][same], scores[iu][~same])
    assert eer >= 0.25, f"raw-pixel EER {eer:.3f} is too low: the demo task is too easy"
    assert eer < 0.5  # identity still shows through a little (colours)


def test_registered_as_demo_data_and_face_modality():
    from metaemb.core.plugin.manager import registry

    assert registry("demo_data").get("face") is generate_faces
    face = registry("modalities").get("face")
    assert (face.sample_folder, face.features, face.backbone, face.demo_data) == (
        "image",
        "image",
        "resnet18",
        "face",
    )
    assert face.baseline_name == "raw pixels"


def test_a_killed_generators_temporary_sibling_is_removed_at_the_next_run(tmp_path):
    """A demo-data run killed mid-way left `.<out>.tmp-…` beside the output for ever (GBs for
    a speaker set); the next generation removes those of dead processes, not a live one's."""
    import os
    import subprocess
    import sys
    import time

    from metaemb.core.data.pipeline import generate_demo

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    out = tmp_path / "demo"
    killed, live = tmp_path / f".demo.tmp-{dead}-x1", tmp_path / f".demo.tmp-{os.getpid()}-y2"
    fresh = tmp_path / f".demo.tmp-{dead}-z3"  # a dead pid here, but written a moment ago:
    for folder in (killed, live, fresh):  # maybe another machine sharing the cache
        (folder / "id0000").mkdir(parents=True)
    old = time.time() - 3600
    for path in (killed, killed / "id0000", live, live / "id0000"):
        os.utime(path, (old, old))
    generate_demo("face", {"identities": 2, "images_per_identity": 1, "image_size": 16}, out)
    assert not killed.exists() and live.is_dir() and fresh.is_dir() and (out / "id0001").is_dir()
