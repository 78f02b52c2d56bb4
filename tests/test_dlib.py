"""dlib landmarks on real photographs (the optional `face` extra), and the no-extra message.

Photos: tests/data/faces/*.jpg, crops of the test images in the face_recognition 1.3.0 sdist
(MIT; official White House portraits, US public domain) — see tests/data/faces/README.md.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metaemb.core.errors import MetaembError
from metaemb.plugins.vision.align import (
    align_faces,
    dlib_chip_template,
    template,
    transform_points,
    umeyama,
)

FACES = Path(__file__).parent / "data" / "faces"
PHOTOS = {"obama": "obama", "obama2": "obama", "obama3": "obama", "biden": "biden"}


def test_without_the_extra_the_error_says_how_to_install(monkeypatch):
    from metaemb.plugins.vision.dlib_detect import DlibLandmarks

    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib → ImportError
    with pytest.raises(MetaembError, match=r"pip install 'metaemb\[face\]'"):
        DlibLandmarks()


def load(name: str) -> torch.Tensor:
    arr = np.asarray(Image.open(FACES / f"{name}.jpg").convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


@pytest.fixture(scope="module")
def dlib_source():
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    from metaemb.plugins.vision.dlib_detect import DlibLandmarks

    return DlibLandmarks(detector="hog", points=68, upsample=0)


def test_dlib_finds_one_face_per_photo_and_alignment_moves_it_onto_the_template(dlib_source):
    from metaemb.plugins.vision.dlib_detect import DlibLandmarks

    again = DlibLandmarks(detector="hog", points=68, upsample=1)  # small faces in 112 crops
    for name in PHOTOS:
        img = load(name)
        found = dlib_source(img, f"{name}.jpg", FACES)
        assert found.outcome == "ok" and found.faces == 1 and found.scheme == "mtcnn5"
        left_eye, right_eye, nose, mouth_l, mouth_r = found.points
        assert left_eye[0] < right_eye[0] and mouth_l[0] < mouth_r[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
        crop = align_faces(img, found.points, 112)
        # Detect again in the aligned crop: the face is where the similarity said it would be.
        m = umeyama(torch.from_numpy(found.points), torch.from_numpy(template(112)))
        predicted = transform_points(m, torch.from_numpy(found.points)).numpy()
        redetected = again(crop, f"{name}.jpg", FACES)
        assert redetected.outcome == "ok"
        assert np.linalg.norm(redetected.points - predicted, axis=1).mean() < 2.0
        assert np.linalg.norm(redetected.points - template(112), axis=1).mean() < 6.0


def test_same_person_scores_higher_than_different_people(dlib_source):
    """dlib's 128-d face-recognition network scores our aligned chips (its own chip geometry)."""
    import dlib

    from metaemb.plugins.vision.dlib_detect import model_path, to_hwc

    net = dlib.face_recognition_model_v1(str(model_path("recognition")))
    emb = {}
    for name in PHOTOS:
        img = load(name)
        found = dlib_source(img, f"{name}.jpg", FACES)
        chip = align_faces(img, found.points, 150, dst=dlib_chip_template(150, 0.25))
        emb[name] = np.array(net.compute_face_descriptor(to_hwc(chip)))
    same, diff = [], []
    for a, b in itertools.combinations(PHOTOS, 2):
        score = -np.linalg.norm(emb[a] - emb[b])
        (same if PHOTOS[a] == PHOTOS[b] else diff).append(score)
    assert min(same) > max(diff), (same, diff)
    assert min(same) > -0.6 > max(diff)  # dlib's documented same-person threshold


def test_several_faces_policies(dlib_source):
    from metaemb.plugins.vision.dlib_detect import DlibLandmarks

    big = Image.open(FACES / "obama.jpg").convert("RGB")
    small = Image.open(FACES / "biden.jpg").convert("RGB").resize((170, 186))
    canvas = Image.new("RGB", (720, 300), (90, 90, 90))
    canvas.paste(big, (0, 18))  # large face at the left edge
    canvas.paste(small, (300, 57))  # smaller face in the middle
    img = torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)
    results = {}
    for policy in ("largest", "central", "skip"):
        src = DlibLandmarks(points=68, multiple=policy, upsample=0)
        results[policy] = src(img, "composite.jpg", FACES)
    assert results["largest"].faces == 2 and results["largest"].points[:, 0].max() < 240
    assert results["central"].points[:, 0].min() > 300
    assert results["skip"].outcome == "several_faces" and results["skip"].points is None


def test_frontend_detects_once_then_hits_the_cache(dlib_source, tmp_path):
    from metaemb.core.plugin.components import build

    root = tmp_path / "data"
    (root / "obama").mkdir(parents=True)
    (root / "biden").mkdir()
    for name, who in PHOTOS.items():
        shutil.copy(FACES / f"{name}.jpg", root / who / f"{name}.jpg")
    rels = [f"{who}/{name}.jpg" for name, who in PHOTOS.items()]
    opts = {"source": "dlib", "crop_size": 64, "upsample": 0}

    first = build("frontends", "align", opts, root=root, cache_dir=tmp_path / "cache")
    crops = [first(load(n), r, root) for n, r in zip(PHOTOS, rels, strict=True)]
    assert first.source.calls == 4 and all(c.shape == (3, 64, 64) for c in crops)

    second = build("frontends", "align", opts, root=root, cache_dir=tmp_path / "cache")
    again = [second(load(n), r, root) for n, r in zip(PHOTOS, rels, strict=True)]
    assert second.source.calls == 0
    assert all(torch.equal(a, b) for a, b in zip(crops, again, strict=True))

    # A changed file (here: another photo under the same name) is detected again.
    shutil.copy(FACES / "biden.jpg", root / rels[0])
    os.utime(root / rels[0], ns=(1, 1))
    third = build("frontends", "align", opts, root=root, cache_dir=tmp_path / "cache")
    for n, r in zip(PHOTOS, rels, strict=True):
        third(load(n), r, root)
    assert third.source.calls == 1


def test_five_point_model_aligns_with_its_own_template(dlib_source):
    from metaemb.plugins.vision.dlib_detect import DlibLandmarks

    five = DlibLandmarks(points=5, upsample=0)
    tmpl5 = torch.from_numpy(template(112, scheme="dlib5"))
    for name in PHOTOS:
        img = load(name)
        f5 = five(img, f"{name}.jpg", FACES)
        f68 = dlib_source(img, f"{name}.jpg", FACES)
        assert f5.scheme == "dlib5" and align_faces(img, f5.points, 112, "dlib5").shape[-1] == 112
        # The eye centres (68-point model) land on the template's eyes through the 5-point fit.
        m5 = umeyama(torch.from_numpy(f5.points), tmpl5)
        eyes = transform_points(m5, torch.from_numpy(f68.points[:2])).numpy()
        assert np.linalg.norm(eyes - template(112)[:2], axis=1).max() < 4.0


@pytest.mark.slow
def test_cnn_detector_finds_the_faces():
    pytest.importorskip("dlib")
    from metaemb.plugins.vision.dlib_detect import DlibLandmarks

    cnn = DlibLandmarks(detector="cnn", points=68, upsample=0)
    for name in PHOTOS:
        found = cnn(load(name), f"{name}.jpg", FACES)
        assert found.outcome == "ok" and found.faces == 1
