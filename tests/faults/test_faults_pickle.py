"""Fault catalogue, malicious pickles: a checkpoint, a distillation teacher, a gallery or an
embeddings file whose pickle would run code when unpickled is refused (everything is read with
`torch.load(weights_only=True)`), and the code never runs."""

from __future__ import annotations

import pathlib

import pytest
import torch
from faults_helpers import expect_error

from metaemb.core.checkpoints import load_checkpoint
from metaemb.core.deploy.gallery import Gallery
from metaemb.core.errors import GalleryError, MetaembError


class Payload:
    """Unpickling this calls Path.touch(marker): harmless, but proof that code ran."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def evil(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": {}, "x": Payload(marker)}, path)
    return path, marker


def test_malicious_checkpoint_and_gallery_are_refused_in_the_api(evil):
    path, marker = evil
    with pytest.raises(MetaembError, match="cannot be read"):
        load_checkpoint(path)
    with pytest.raises(GalleryError, match="cannot be read"):
        Gallery.load(path)
    assert not marker.exists()


def test_malicious_files_are_refused_by_every_command(evil, faces, face_run, tmp_path, capsys):
    path, marker = evil
    expect_error(["evaluate", path, "--device", "cpu"], capsys, str(path), "cannot be read")
    expect_error(["export", path, "--format", "torchscript"], capsys, str(path))
    expect_error(
        ["identify", face_run, "--gallery", path, "--data", faces, "--device", "cpu"],
        capsys,
        str(path),
    )
    runs = tmp_path / "runs"
    expect_error(
        ["distill", "--teacher", path, "--student", "mobilenet_v3_small", "--data", faces,
         "--runs", runs, "--device", "cpu", "--workers", "0", "--set", "train.epochs=1"],
        capsys,
        str(path),
    )  # fmt: skip
    assert not marker.exists()


def test_malicious_embeddings_file_is_refused_in_one_line(evil):
    """`metaemb neighbours` reads an embeddings file: the same one-line refusal as a checkpoint."""
    from metaemb.core.eval.retrieval import Collection

    path, marker = evil
    with pytest.raises(MetaembError) as err:
        Collection.load(path)
    assert "pickled Python object" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
