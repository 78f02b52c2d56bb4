"""Fault catalogue, a model that gives non-finite embeddings (issue 13 item 5): `embed` and
`enroll` refuse with the samples named and write nothing, instead of saving NaN embeddings."""

from __future__ import annotations

import torch
from faults_helpers import expect_error


def test_nan_embeddings_are_never_written(tmp_path, faces, face_run, capsys):
    state = torch.load(face_run / "best.pt", map_location="cpu", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and "head" in k)
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    out = tmp_path / "emb.pt"
    expect_error(
        ["embed", tmp_path / "nan.pt", faces, "--out", out, "--device", "cpu", "--workers", "0"],
        capsys,
        "NaN or infinite embeddings for 24 sample(s)",
        "'id0000/000.png'",
        "Nothing was written",
    )
    assert not out.exists()
    gallery = tmp_path / "g.pt"
    args = ["enroll", tmp_path / "nan.pt", "--gallery", gallery, "--data", faces]
    expect_error([*args, "--device", "cpu", "--workers", "0"], capsys, "NaN or infinite")
    assert not gallery.exists()


def test_a_checkpoint_missing_a_tensor_is_refused_by_name(tmp_path, faces, face_run, capsys):
    state = torch.load(face_run / "best.pt", map_location="cpu", weights_only=True)
    name = next(k for k in state["model"] if k.startswith("backbone."))
    del state["model"][name]
    torch.save(state, tmp_path / "damaged.pt")
    out = tmp_path / "emb.pt"
    expect_error(
        ["embed", tmp_path / "damaged.pt", faces, "--out", out, "--device", "cpu"],
        capsys,
        "'" + str(tmp_path / "damaged.pt") + "' does not fit the model",
        name,
    )
    assert not out.exists()
