"""Fault catalogue, galleries and trial lists (issue 13 item 15 and the minor cases): a gallery of
another embedding size says it belongs to another model, `identify --probe FILE` reads only the
probe files, duplicated and contradictory trials warn."""

from __future__ import annotations

import io
import shutil

import pytest
import torch
from faults_helpers import expect_error

from metaemb.core.checkpoints import load_checkpoint
from metaemb.core.deploy.gallery import Gallery
from metaemb.core.deploy.stamp import ModelStamp, model_digest
from metaemb.core.errors import GalleryError
from metaemb.core.eval.trials import read_trials


def _model_state(run):
    return load_checkpoint(run / "best.pt")["model"]


def test_gallery_of_another_embedding_size_belongs_to_another_model(tmp_path, face_run, capsys):
    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=4))
    g.add("alice", torch.randn(3, 4), ["a1", "a2", "a3"])
    with pytest.raises(GalleryError, match=r"this gallery belongs to another model.*dimension 8"):
        g.search(torch.randn(2, 8))
    # A gallery whose stamp matches this model but whose samples are of another size (edited,
    # or assembled from two models) is refused on load instead of crashing in the search.
    g.save(tmp_path / "g.pt")
    payload = torch.load(tmp_path / "g.pt", weights_only=True)
    payload["model"]["digest"] = model_digest(_model_state(face_run))
    payload["model"]["dim"] = 8
    buf = io.BytesIO()
    torch.save(payload, buf)
    (tmp_path / "edited.pt").write_bytes(buf.getvalue())
    with pytest.raises(GalleryError, match="belongs to another model or was edited"):
        Gallery.load(tmp_path / "edited.pt")
    expect_error(
        ["identify", face_run, "--gallery", tmp_path / "edited.pt", "--probe", tmp_path / "x.png"],
        capsys,
        str(tmp_path / "edited.pt"),
        "belongs to another model",
    )
    # A folder given as the gallery is called a folder, not "does not exist".
    expect_error(
        ["identify", face_run, "--gallery", tmp_path, "--probe", tmp_path / "x.png"],
        capsys,
        f"'{tmp_path}' is a folder, not a gallery file",
    )


def test_identify_probe_file_reads_only_the_probe(tmp_path, faces, face_run, capsys, monkeypatch):
    gallery = tmp_path / "g.pt"
    code, _, err = expect_ok(
        ["enroll", face_run, "--gallery", gallery, "--data", faces, "--device", "cpu",
         "--workers", "0"], capsys)  # fmt: skip
    assert code == 0, err
    probe = tmp_path / "loose" / "p" / "x.png"
    probe.parent.mkdir(parents=True)
    shutil.copy(faces / "id0001" / "003.png", probe)
    # The common grandparent holds a big tree; scanning it is the bug (the root could be '/').
    from metaemb.core.plugin.interfaces import SampleFolder

    def no_scan(self):
        raise AssertionError(f"scanned '{self.root}' to identify one probe file")

    monkeypatch.setattr(SampleFolder, "_scan", no_scan)
    results = tmp_path / "results.tsv"
    code, _, err = expect_ok(
        ["identify", face_run, "--gallery", gallery, "--probe", probe, "--device", "cpu",
         "--workers", "0", "--top-k", "1", "--out", results], capsys)  # fmt: skip
    assert code == 0, err
    rows = results.read_text().splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith(f"{probe}\t")


def expect_ok(args, capsys):
    import helpers

    return helpers.run_cli(args, capsys)


def test_duplicated_and_contradictory_trials_warn(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("1 a/1.wav a/2.wav\n1 a/1.wav a/2.wav\n0 a/1.wav a/2.wav\n0 a/1.wav b/1.wav\n")
    with pytest.warns(UserWarning, match=r"1 duplicated trial\(s\) and 1 trial\(s\) repeated"):
        trials = read_trials(p)
    assert len(trials) == 4  # warned, not silently changed
    p.write_text("1 a/1.wav a/2.wav\n0 a/1.wav b/1.wav\n")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_trials(p)  # a clean list is silent
