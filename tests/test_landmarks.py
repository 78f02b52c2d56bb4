"""Landmark files, the landmark cache (hits, staleness, DataLoader workers) and the align frontend."""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from metaemb.core.errors import DataError, MetaembError
from metaemb.core.plugin.components import build
from metaemb.plugins.vision.align import align_faces, template
from metaemb.plugins.vision.frontend import AlignFrontend
from metaemb.plugins.vision.landmark_cache import LandmarkCache
from metaemb.plugins.vision.landmark_files import read_landmark_file
from metaemb.plugins.vision.landmarks import FileLandmarks, Landmarks, LandmarkSource

PTS = np.arange(10, dtype=np.float64).reshape(5, 2) * 3 + 10


class CountingSource(LandmarkSource):
    """A fake detector: fixed landmarks, counts its calls, 'no face' for names containing 'blank'."""

    def __init__(self) -> None:
        self.calls = 0

    def key(self) -> str:
        return "counting:v1"

    def __call__(self, image, path, root):
        self.calls += 1
        if "blank" in path:
            return Landmarks("no_face")
        return Landmarks("ok", PTS + len(path), faces=1)


def make_images(root: Path, names: list[str]) -> None:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(os.urandom(64))


# -- landmark files ----------------------------------------------------------------------------
def test_reads_demo_vggface2_generic_and_json_formats(tmp_path):
    flat = [f"{v}" for v in PTS.reshape(-1)]
    demo = tmp_path / "landmarks.csv"
    demo.write_text("path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\nid0/000.png," + ",".join(flat) + "\n")
    vgg = tmp_path / "loose_landmark_test.csv"
    vgg.write_text(
        '"NAME_ID","P1X","P1Y","P2X","P2Y","P3X","P3Y","P4X","P4Y","P5X","P5Y"\n'
        '"n000001/0001_01",' + ",".join(flat) + "\n"
    )
    bare = tmp_path / "bare.csv"
    bare.write_text("a/b.jpg," + ",".join(flat) + "\n")
    js = tmp_path / "lm.json"
    js.write_text(json.dumps({"a/1.jpg": PTS.tolist(), "a/2.jpg": PTS.reshape(-1).tolist()}))
    assert np.array_equal(read_landmark_file(demo)["id0/000.png"], PTS)
    assert np.array_equal(read_landmark_file(vgg)["n000001/0001_01"], PTS)
    assert np.array_equal(read_landmark_file(bare)["a/b.jpg"], PTS)
    table = read_landmark_file(js)
    assert np.array_equal(table["a/1.jpg"], PTS) and np.array_equal(table["a/2.jpg"], PTS)

    # VGGFace2 NAME_IDs carry no extension; a glob picks up train and test files.
    src = FileLandmarks(root=tmp_path, landmarks_file="loose_landmark_*.csv")
    found = src(None, "n000001/0001_01.jpg", tmp_path)
    assert found.outcome == "ok" and np.array_equal(found.points, PTS)
    assert src(None, "n000001/0002_01.jpg", tmp_path).outcome == "missing"


def test_bad_landmark_files_name_file_and_line(tmp_path):
    bad = tmp_path / "lm.csv"
    bad.write_text("path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\na.jpg,1,2,3\n")
    with pytest.raises(DataError, match=r"lm.csv', line 2.*11 comma-separated fields"):
        read_landmark_file(bad)
    bad.write_text("a.jpg,1,2,3,4,5,6,7,8,9,x\n")
    with pytest.raises(DataError, match=r"line 1.*numbers"):
        read_landmark_file(bad)
    bad.write_text("a.jpg 1 2 3 4 5 6 7 8 9 10\nb.jpg 1 2 3 4 5 6 7 8 9 10\n")  # MTCNN-style txt
    with pytest.raises(DataError, match=r"line 1: .*got 1 separated by blanks: a CSV separates"):
        read_landmark_file(bad)
    with pytest.raises(DataError, match="does not exist"):
        FileLandmarks(root=tmp_path, landmarks_file="nope.csv").table()
    # One image listed twice: the same points are harmless, other points are a contradiction.
    row = "a.jpg,1,2,3,4,5,6,7,8,9,10\n"
    bad.write_text(row + "b.jpg,1,2,3,4,5,6,7,8,9,10\n" + row)
    assert set(read_landmark_file(bad)) == {"a.jpg", "b.jpg"}
    bad.write_text(row + "b.jpg,1,2,3,4,5,6,7,8,9,10\n" + row.replace(",10", ",11"))
    with pytest.raises(DataError, match=r"line 3: 'a.jpg' is listed again with other.*line 1"):
        read_landmark_file(bad)


def test_keys_spelled_with_dot_slash_doubled_slashes_or_absolute_paths_find_their_sample(tmp_path):
    """`./id/x.png`, `id//x.png`, `id\\x.png` and `<root>/id/x.png` all name the sample
    `id/x.png` (they used to be reported as missing without a cause); two spellings of one image
    with other points are a contradiction."""
    flat = ",".join(f"{v}" for v in PTS.reshape(-1))
    lm = tmp_path / "lm.csv"
    rows = ["./a/1.png", "a//2.png", "a\\3.png", f"{tmp_path}/a/4.png", "b/../a/5.png"]
    lm.write_text("".join(f"{r},{flat}\n" for r in rows))
    src = FileLandmarks(root=tmp_path, landmarks_file="lm.csv")
    for i in range(1, 6):
        found = src(None, f"a/{i}.png", tmp_path)
        assert found.outcome == "ok" and np.array_equal(found.points, PTS), i
    assert src(None, "a/6.png", tmp_path).outcome == "missing"
    js = tmp_path / "lm.json"
    js.write_text(json.dumps({"./a/1.png": PTS.tolist()}))
    assert set(read_landmark_file(js)) == {"a/1.png"}
    lm.write_text(f"./a/1.png,{flat}\na/1.png,{flat.replace('10', '11', 1)}\n")
    with pytest.raises(DataError, match=r"'./a/1.png' and 'a/1.png' name the same image"):
        read_landmark_file(lm)


# -- the cache ---------------------------------------------------------------------------------
def test_cache_is_hit_on_the_second_run_and_recomputes_a_changed_file(tmp_path):
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    names = [f"p{i}/img{j}.jpg" for i in range(3) for j in range(4)] + ["p0/blank.jpg"]
    make_images(root, names)

    src = CountingSource()
    first = LandmarkCache(cache_dir, root, src.key())
    out1 = {n: first.lookup(n, lambda n=n: src(None, n, root)) for n in names}
    assert src.calls == len(names) and first.misses == len(names)

    # A second run (new process: new cache object) computes nothing.
    src2 = CountingSource()
    second = LandmarkCache(cache_dir, root, src2.key())
    out2 = {n: second.lookup(n, lambda n=n: src2(None, n, root)) for n in names}
    assert src2.calls == 0 and second.hits == len(names)
    for n in names:
        assert out1[n].outcome == out2[n].outcome
        if out1[n].points is not None:
            assert np.array_equal(out1[n].points, out2[n].points)
    assert second.outcomes() == {"ok": 12, "no_face": 1}  # recorded, not dropped

    # Change one file (new size and mtime): only that one is recomputed.
    (root / names[0]).write_bytes(os.urandom(100))
    src3 = CountingSource()
    third = LandmarkCache(cache_dir, root, src3.key())
    for n in names:
        third.lookup(n, lambda n=n: src3(None, n, root))
    assert src3.calls == 1 and third.misses == 1

    # Another source configuration or another root does not share entries.
    other = LandmarkCache(cache_dir, root, "counting:v2")
    assert other.path != first.path and other.get(names[1]) is None


def test_cache_ignores_a_torn_last_line(tmp_path):
    make_images(tmp_path, ["a/x.jpg", "a/y.jpg"])
    cache = LandmarkCache(tmp_path / "c", tmp_path, "k")
    cache.put("a/x.jpg", Landmarks("ok", PTS, 1))
    with open(cache.path, "ab") as fh:
        fh.write(b'{"path":"a/y.jpg","size":6')  # a crash mid-write
    again = LandmarkCache(tmp_path / "c", tmp_path, "k")
    assert again.get("a/x.jpg") is not None and again.get("a/y.jpg") is None


class _FrontendDataset(torch.utils.data.Dataset):
    def __init__(self, frontend, root, names):
        self.frontend, self.root, self.names = frontend, root, names

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        raw = torch.zeros(3, 40, 40, dtype=torch.uint8)
        return self.frontend(raw, self.names[i], self.root)


def test_cache_is_safe_with_dataloader_workers(tmp_path):
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    names = [f"p{i}/img{j}.jpg" for i in range(4) for j in range(10)]
    make_images(root, names)
    fe = AlignFrontend(root=root, cache_dir=cache_dir, landmarks_file="unused.csv", crop_size=32)
    fe.source = CountingSource()  # a detector stand-in (cacheable)
    fe.use_cache = True
    loader = torch.utils.data.DataLoader(
        _FrontendDataset(fe, root, names), batch_size=4, num_workers=2
    )
    assert sum(len(b) for b in loader) == len(names)
    lines = LandmarkCache(cache_dir, root, "counting:v1").path.read_text().splitlines()
    assert len(lines) == len(names)
    assert sorted(json.loads(line)["path"] for line in lines) == sorted(names)
    src = CountingSource()
    cache = LandmarkCache(cache_dir, root, src.key())
    for n in names:
        cache.lookup(n, lambda n=n: src(None, n, root))
    assert src.calls == 0


# -- the frontend ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    synthetic = pytest.importorskip("metaemb.plugins.vision.synthetic")
    root = tmp_path_factory.mktemp("demo") / "faces"
    return synthetic.generate_faces(root, identities=2, images_per_identity=3, image_size=64)


def test_align_frontend_uses_the_demo_landmark_file(demo, tmp_path):
    from metaemb.plugins.vision.folder import read_image

    fe = build("frontends", "align", {"crop_size": 48}, root=demo, cache_dir=tmp_path)
    with open(demo / "landmarks.csv") as fh:
        rows = list(csv.reader(fh))[1:]
    rel = rows[2][0]
    pts = np.array([float(v) for v in rows[2][1:]]).reshape(5, 2)
    img = read_image(demo / rel)
    out = fe(img, rel, demo)
    assert out.shape == (3, 48, 48) and out.dtype == torch.uint8
    assert torch.equal(out, align_faces(img, pts, 48))  # the one alignment function
    assert not (tmp_path / "landmarks").exists()  # a landmark file needs no cache
    # Pickles (DataLoader workers with spawn) and behaves the same afterwards.
    assert torch.equal(pickle.loads(pickle.dumps(fe))(img, rel, demo), out)


def test_no_face_policies(demo, tmp_path):
    img = torch.full((3, 64, 80), 7, dtype=torch.uint8)
    opts = {"landmarks_file": "landmarks.csv", "crop_size": 32}
    skip = AlignFrontend(root=demo, cache_dir=tmp_path, **opts)
    with pytest.raises(DataError, match=r"the landmark file has no entry for '.*elsewhere/x\.png'"
                       r" \(landmark source .*on_bad_sample='skip' it is skipped"):  # fmt: skip
        skip(img, "elsewhere/x.png", demo)
    err = AlignFrontend(root=demo, cache_dir=tmp_path, on_no_face="error", **opts)
    with pytest.raises(MetaembError) as exc:
        err(img, "elsewhere/x.png", demo)
    assert not isinstance(exc.value, DataError)
    centre = AlignFrontend(root=demo, cache_dir=tmp_path, on_no_face="center", **opts)
    grad = torch.arange(80, dtype=torch.uint8).repeat(3, 64, 1)
    from metaemb.plugins.vision import frontend

    frontend._centred_noted = False  # a protocol number resting on centre crops is said (F3 F8)
    with pytest.warns(UserWarning, match=r"no entry for '.*x\.png', so its centre is cropped"):
        out = centre(grad, "elsewhere/x.png", demo)
    # The centred 64×64 square (columns 8..71) resized to 32: mean column value ≈ 39.5.
    assert out.shape == (3, 32, 32) and abs(out.float().mean().item() - 39.5) < 1.0


def test_frontend_key_and_template_follow_options(demo, tmp_path):
    a = AlignFrontend(root=demo, cache_dir=tmp_path, crop_size=64)
    b = AlignFrontend(root=demo, cache_dir=tmp_path, crop_size=64, template=128)
    assert a.key() != b.key()
    assert not np.allclose(template(64), template(64, convention=128))


def test_a_broken_landmark_file_is_blamed_alone_and_never_skipped(demo, tmp_path):
    """It is read when the first sample needs it; that sample is not named, nor skipped."""
    from metaemb.core.data.dataset import PreparedDataset
    from metaemb.core.errors import DatasetError

    data = tmp_path / "data"
    data.mkdir()
    for ident in sorted(p for p in demo.iterdir() if p.is_dir())[:2]:
        (data / ident.name).symlink_to(ident)
    lines = (demo / "landmarks.csv").read_text().splitlines()
    path, _, rest = lines[1].partition(",")
    lines[1] = f"{path},nan,{rest.partition(',')[2]}"
    (data / "landmarks.csv").write_text("\n".join(lines) + "\n")
    folder = build("sample_folders", "image", {}, root=data)
    fe = build("frontends", "align", {"crop_size": 32}, root=data, cache_dir=tmp_path / "c")
    features = build("features", "image", {"image_size": 32})
    for policy in ("error", "skip"):
        ds = PreparedDataset(folder, fe, features, train=False, on_bad_sample=policy)
        with pytest.raises(DatasetError) as err:
            ds[len(ds) - 1]
        msg = str(err.value)
        assert msg.startswith(f"landmark file '{data / 'landmarks.csv'}', line 2")
        assert folder.samples[-1].path not in msg


def test_landmarks_far_outside_the_image_are_refused(demo, tmp_path):
    class Far(CountingSource):
        def __call__(self, image, path, root):
            far = PTS.copy()
            far[2] = (1e9, 5)  # another image's, or another pixel scale's
            return Landmarks("ok", far, faces=1)

    img = torch.full((3, 64, 80), 7, dtype=torch.uint8)
    fe = AlignFrontend(root=demo, cache_dir=tmp_path, crop_size=32, cache=False)
    fe.source = CountingSource()
    assert fe(img, "a/x.png", demo).shape == (3, 32, 32)  # points near the frame: aligned
    fe.source = Far()
    with pytest.raises(DataError, match=r"landmark \(1e\+09, 5\) lies far outside the 80×64"):
        fe(img, "a/x.png", demo)


def test_an_absolute_landmark_file_of_the_training_folder_follows_the_data(tmp_path):
    """Evaluating another folder kept reading the training folder's landmark file (an absolute
    path), aligning each image with the points of the training image of the same name."""
    from metaemb.core.config import resolve
    from metaemb.core.deploy.run_data import rebase_data_paths

    train, other = tmp_path / "train", tmp_path / "other"
    for d in (train, other):
        d.mkdir()
        (d / "landmarks.csv").write_text("path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\n")
    (tmp_path / "shared.csv").write_text("path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\n")

    def cfg(landmarks: Path):
        c = resolve("face", sets=["model.frontend=align", f"frontend.landmarks_file={landmarks}"])
        c.data.root, c.data.root_absolute = "train", str(train)
        return c

    def rebased(landmarks: Path, data: Path) -> str:
        c = cfg(landmarks)
        rebase_data_paths(c, data)
        return c.options("frontend")["landmarks_file"]

    assert rebased(train / "landmarks.csv", other) == str(other.resolve() / "landmarks.csv")
    assert rebased(train / "landmarks.csv", train) == str(train / "landmarks.csv")
    assert rebased(tmp_path / "shared.csv", other) == str(tmp_path / "shared.csv")  # shared
    (other / "landmarks.csv").unlink()  # the other folder has none: nothing to move to
    assert rebased(train / "landmarks.csv", other) == str(train / "landmarks.csv")


def test_a_landmark_file_in_another_layout_is_named_with_the_layout_that_fits(tmp_path):
    """Rows written x1..x5,y1..y5 (MTCNN's raw output) or with the subject's left eye first
    parse alike and aligned every face into a skewed crop without a word (F3 F7)."""
    import warnings

    data = build("demo_data", "face", {"identities": 4, "images_per_identity": 3,
                                       "image_size": 64}, out=tmp_path / "faces")  # fmt: skip
    rows = list(csv.reader((data / "landmarks.csv").open()))
    layouts = {
        "xy.csv": lambda v: [*v[0::2], *v[1::2]],
        "mirrored.csv": lambda v: [*v[2:4], *v[0:2], *v[4:6], *v[8:10], *v[6:8]],
    }
    for name, relayout in layouts.items():
        with (data / name).open("w", newline="") as f:
            csv.writer(f).writerows([rows[0], *([r[0], *relayout(r[1:])] for r in rows[1:])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FileLandmarks(data).table()  # metaemb's own layout: nothing to say
    for name, fits in (("xy.csv", "and fit as x1 … x5, y1 … y5"),
                       ("mirrored.csv", "and fit as the subject's left eye")):  # fmt: skip
        with pytest.warns(UserWarning, match=r"fit the face template badly") as said:
            FileLandmarks(data, name).table()
        assert fits in str(said[0].message)
    # turned heads in metaemb's own layout fit badly too, and no layout better: nothing said
    # (a profile set's landmark file was told to be rewritten, R8 F6)
    yawed = data / "yawed.csv"
    with yawed.open("w", newline="") as f:
        rows_out = [rows[0]]
        for r in rows[1:]:
            pts = np.array(r[1:], float).reshape(5, 2)
            centre = pts[:2].mean(0)
            pts[2] += [0.9 * abs(pts[1, 0] - pts[0, 0]), 0]  # the nose turns with the head
            pts[3:] += [0.45 * abs(pts[1, 0] - pts[0, 0]), 0]
            pts[1] = centre + 0.3 * (pts[1] - centre)  # the far eye foreshortened
            rows_out.append([r[0], *pts.ravel().round(3)])
        csv.writer(f).writerows(rows_out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FileLandmarks(data, "yawed.csv").table()


def test_a_dlib5_landmark_file_in_another_layout_is_warned_about_too(tmp_path):
    """The layout warning was said for mtcnn5 files only after R8 F6: a dlib5 file written
    x1..x5,y1..y5 or with the other eye first aligned every face into garbage silently (R9 F4)."""
    import warnings

    from metaemb.plugins.vision.align import template
    from metaemb.plugins.vision.landmarks import warn_if_another_layout

    rng = np.random.default_rng(0)
    base = template(112, "dlib5")
    scales, shifts = rng.uniform(0.8, 1.5, 40), rng.uniform(0, 80, (40, 1, 2))
    faces = [base * s + t + rng.normal(0, 1.0, (5, 2)) for s, t in zip(scales, shifts, strict=True)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_another_layout({str(i): p for i, p in enumerate(faces)}, "dlib5", tmp_path)
    layouts = {"all x, then all y": lambda p: np.stack([p[:, 0], p[:, 1]]).reshape(5, 2),
               "other eye's two corners first": lambda p: p[[2, 3, 0, 1, 4]]}  # fmt: skip
    for fits, relayout in layouts.items():
        table = {str(i): relayout(p) for i, p in enumerate(faces)}
        with pytest.warns(UserWarning, match="fit the face template badly") as said:
            warn_if_another_layout(table, "dlib5", tmp_path / "lm.csv")
        assert fits in str(said[0].message) and "dlib5 order" in str(said[0].message)
