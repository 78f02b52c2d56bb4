"""`metaemb landmarks DATA --out FILE`: a landmark source run over a folder once (on DataLoader
workers) writes a CSV/HDF5 file the `file` source reads back with the same points; images without
a usable face are counted and listed, not written."""

from __future__ import annotations

import importlib.util
import json

import helpers
import numpy as np
import pytest

import metaemb
from metaemb.core.plugin import manager as plugins
from metaemb.plugins.vision.landmark_files import read_landmark_file
from metaemb.plugins.vision.landmarks import Landmarks, LandmarkSource


class BrightnessSource(LandmarkSource):
    """A deterministic stand-in detector: points from the image's mean colour; identity
    id0001 has 'no face'."""

    def key(self) -> str:
        return "brightness"

    def __call__(self, image, path, root):
        if path.startswith("id0001/"):
            return Landmarks("no_face")
        m = image.float().mean(dim=(1, 2)).numpy()
        pts = np.arange(10, dtype=np.float64).reshape(5, 2) + m[:2].mean() / 10
        return Landmarks("ok", pts, faces=1)


class Dlib5Source(BrightnessSource):
    """The stand-in detector, giving its points in dlib's 5-point order."""

    def __call__(self, image, path, root):
        found = super().__call__(image, path, root)
        return Landmarks(found.outcome, found.points, faces=found.faces, scheme="dlib5")


class NoFaceSource(BrightnessSource):
    def __call__(self, image, path, root):
        return Landmarks("no_face")


class FakePlugin:
    @metaemb.hookimpl
    def register_landmark_sources(self, register):
        register("brightness", BrightnessSource, description="test source")
        register("dlib5-like", Dlib5Source, description="test source, dlib's point order")
        register("noface", NoFaceSource, description="test source that never finds a face")


def test_landmarks_command_writes_csv_and_hdf5_read_back(tmp_path, capsys):
    data = helpers.demo_faces(
        tmp_path / "faces", identities=4, images_per_identity=3, image_size=32
    )
    with plugins.plugin_registered(FakePlugin(), "fakelandmarks"):
        out = tmp_path / "lm.csv"
        args = ["landmarks", data, "--out", out, "--source", "brightness", "--workers", "2"]
        code, text, err = helpers.run_cli(args, capsys)
        assert code == 0, err
        summary = json.loads(text)
        assert summary["images"] == 12 and summary["written"] == 9
        assert summary["outcomes"] == {"ok": 9, "no_face": 3}
        skipped = (tmp_path / "lm.csv.skipped.txt").read_text().splitlines()
        assert sorted(s.split("\t")[0] for s in skipped) == [f"id0001/00{i}.png" for i in range(3)]
        table = read_landmark_file(out)
        src = BrightnessSource()
        from metaemb.plugins.vision.folder import read_image

        for f in sorted(data.glob("*/*.png")):
            rel = f.relative_to(data).as_posix()
            want = src(read_image(f), rel, data)
            if want.outcome == "ok":
                np.testing.assert_allclose(table[rel], want.points, atol=1e-5)
            else:
                assert rel not in table
        pytest.importorskip("h5py")
        h5 = tmp_path / "lm.h5"
        args = ["landmarks", data, "--out", h5, "--source", "brightness", "--workers", "0"]
        assert helpers.run_cli(args, capsys)[0] == 0
        h5_table = read_landmark_file(h5)
        assert sorted(h5_table) == sorted(table)
        for k in table:
            np.testing.assert_allclose(h5_table[k], table[k], atol=1e-5)


def test_file_source_round_trip_equals_the_demo_landmarks(tmp_path, capsys):
    data = helpers.demo_faces(
        tmp_path / "faces", identities=3, images_per_identity=2, image_size=32
    )
    out = tmp_path / "copy.csv"
    args = ["landmarks", data, "--out", out, "--source", "file", "--workers", "0"]
    code, _, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    original, copy = read_landmark_file(data / "landmarks.csv"), read_landmark_file(out)
    assert sorted(copy) == sorted(original)
    for k in original:
        np.testing.assert_allclose(copy[k], original[k], atol=1e-4)


def test_landmarks_refuses_an_unknown_file_type(tmp_path, capsys):
    data = helpers.demo_faces(
        tmp_path / "faces", identities=3, images_per_identity=2, image_size=32
    )
    code, _, err = helpers.run_cli(["landmarks", data, "--out", tmp_path / "x.bin"], capsys)
    assert code == 2 and ".csv or .h5" in err


def test_landmarks_in_dlib_order_are_read_back_in_dlib_order(tmp_path, capsys):
    """`metaemb landmarks --set points=5` gives dlib's 5 points (eye corners, nose base); read
    back as MTCNN points (eyes, nose tip, mouth corners) they aligned faces sideways, silently."""
    from metaemb.core.errors import DatasetError
    from metaemb.plugins.vision.landmarks import FileLandmarks

    data = helpers.demo_faces(
        tmp_path / "faces", identities=2, images_per_identity=2, image_size=32
    )
    with plugins.plugin_registered(FakePlugin(), "fakelandmarks"):
        suffixes = [".csv"] + ([".h5"] if importlib.util.find_spec("h5py") else [])
        for suffix in suffixes:
            out = tmp_path / f"lm{suffix}"
            args = ["landmarks", data, "--out", out, "--source", "dlib5-like", "--workers", "0"]
            code, _, err = helpers.run_cli(args, capsys)
            assert code == 0, err
            source = FileLandmarks(data, str(out))
            found = source(None, "id0000/000.png", data)
            assert found.outcome == "ok" and found.scheme == "dlib5", suffix
            assert source.key().endswith(":dlib5")
    # The demo's own file records nothing: MTCNN order, as before.
    assert FileLandmarks(data)(None, "id0000/000.png", data).scheme == "mtcnn5"
    both = FileLandmarks(data, str(tmp_path / "*.csv"))
    (tmp_path / "other.csv").write_text(
        (data / "landmarks.csv").read_text().replace("path", "scheme=mtcnn5", 1)
    )
    with pytest.raises(DatasetError, match="record different point orders"):
        both.table()


def test_no_face_found_anywhere_leaves_an_existing_landmark_file_alone(tmp_path, capsys):
    """Another dataset's landmark file was replaced by a header-only file, with exit code 0."""
    data = helpers.demo_faces(
        tmp_path / "faces", identities=2, images_per_identity=2, image_size=32
    )
    out = tmp_path / "curated.csv"
    out.write_text((data / "landmarks.csv").read_text())
    kept = out.read_bytes()
    with plugins.plugin_registered(FakePlugin(), "fakelandmarks"):
        args = ["landmarks", data, "--out", out, "--source", "noface", "--workers", "0"]
        code, text, err = helpers.run_cli(args, capsys)
    assert code != 0
    assert (
        "found no usable face in any of the 4 images" in text + err
        and "left as it was" in text + err
    )
    assert out.read_bytes() == kept
