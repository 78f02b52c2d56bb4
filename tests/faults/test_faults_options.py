"""Fault catalogue, inputs that were accepted and silently ignored or misread: an option no
component takes, an environment variable that is not a number, a backend that does not exist,
trial lists that flatter the model, audio too short to measure or on another scale, damaged runs
listed as complete, a triplet measure given pairs, and a logit teacher of other classes."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from faults_helpers import expect_error, train_tiny
from helpers import run_cli

from metaemb.core.errors import ConfigError, DataError


def test_landmarks_refuses_an_option_its_source_does_not_take(tmp_path, faces, capsys):
    expect_error(
        ["landmarks", faces, "--out", tmp_path / "l.csv", "--set", "nope=1", "--workers", "0"],
        capsys,
        "landmark source 'dlib' has no option 'nope'",
        "detector",
    )
    assert not (tmp_path / "l.csv").exists()


def test_max_image_pixels_must_be_a_number(monkeypatch):
    from metaemb.plugins.vision.imageio import DEFAULT_MAX_IMAGE_PIXELS, max_image_pixels

    monkeypatch.setenv("METAEMB_MAX_IMAGE_PIXELS", "")
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS
    monkeypatch.setenv("METAEMB_MAX_IMAGE_PIXELS", "1000")
    assert max_image_pixels() == 1000
    for bad in ("abc", "0", "-5", "1e6"):
        monkeypatch.setenv("METAEMB_MAX_IMAGE_PIXELS", bad)
        with pytest.raises(ConfigError, match="METAEMB_MAX_IMAGE_PIXELS must be a positive"):
            max_image_pixels()


def test_neighbours_refuses_an_unknown_backend_with_or_without_probes(tmp_path, capsys):
    for probes in ([], [tmp_path / "p.png"]):
        expect_error(
            ["neighbours", tmp_path / "c.pt", *probes, "--backend", "annoy"],
            capsys,
            "search backend must be one of auto, faiss, exact, got 'annoy'",
        )


def test_trials_make_says_when_fewer_trials_exist_than_asked(tmp_path, faces, capsys):
    # 6 identities × 4 faces: 36 target pairs.
    out = tmp_path / "t.txt"
    args = ["trials", "make", faces, "--out", out, "--targets", "1000", "--nontargets", "10"]
    with pytest.warns(UserWarning) as caught:
        code, _, err = run_cli(args, capsys)
    assert code == 0, err
    [message] = [str(w.message) for w in caught]  # 10 non-targets exist: no note on those
    assert "has only 36 distinct target trials; --targets 1000 asked for more" in message
    assert sum(line.startswith("1 ") for line in out.read_text().splitlines()) == 36


def test_a_trial_of_a_file_against_itself_is_reported(tmp_path):
    from metaemb.core.eval.trials import read_trials

    (tmp_path / "t.txt").write_text("1 a/1.wav a/1.wav\n1 a/1.wav a/2.wav\n0 a/1.wav b/1.wav\n")
    with pytest.warns(UserWarning, match="1 trial.s. test a file against itself"):
        read_trials(tmp_path / "t.txt")
    (tmp_path / "ok.txt").write_text("1 a/1.wav a/2.wav\n0 a/1.wav b/1.wav\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_trials(tmp_path / "ok.txt")


def test_audio_shorter_than_one_frame_is_a_data_error(tmp_path):
    from metaemb.plugins.audio.io import read_audio

    rng = np.random.default_rng(0)
    sf.write(tmp_path / "short.wav", 0.1 * rng.standard_normal(160), 16000)  # 10 ms
    with pytest.raises(DataError, match=r"short.wav' lasts 10.0 ms, less than one 25 ms"):
        read_audio(tmp_path / "short.wav")
    sf.write(tmp_path / "frame.wav", 0.1 * rng.standard_normal(400), 16000)  # exactly 25 ms
    assert read_audio(tmp_path / "frame.wav").shape == (400,)


def test_float_audio_far_outside_unit_range_is_reported_once(tmp_path, monkeypatch):
    from metaemb.plugins.audio import io

    monkeypatch.setattr(io, "_RANGE_WARNED", [])
    wave = 50 * np.sin(np.linspace(0, 200, 16000))
    sf.write(tmp_path / "loud.wav", wave, 16000, subtype="FLOAT")
    sf.write(tmp_path / "loud2.wav", wave, 16000, subtype="FLOAT")
    with pytest.warns(UserWarning, match=r"loud.wav' holds float samples up to 50"):
        got = io.read_audio(tmp_path / "loud.wav")
    assert float(got.abs().max()) == pytest.approx(50, rel=1e-3)  # read as is
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        io.read_audio(tmp_path / "loud2.wav")  # reported once per process
        sf.write(tmp_path / "pcm.wav", wave / 60, 16000, subtype="PCM_16")
        io.read_audio(tmp_path / "pcm.wav")


def test_runs_lists_a_run_with_damaged_checkpoints_as_damaged(tmp_path, faces, capsys):
    runs = tmp_path / "runs"
    assert train_tiny(faces, runs, capsys=capsys)[0] == 0
    [run] = list((runs / "face").iterdir())
    code, out, _ = run_cli(["runs", runs, "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["status"] == "complete"
    # A torn last line, a JSON list and a non-numeric epoch in metrics.jsonl are passed over.
    with open(run / "metrics.jsonl", "a") as f:
        f.write('[1, 2]\n{"epoch": "x"}\n{"epoch": 3, "eer": 0.\n')
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:1000])  # truncated
    code, out, err = run_cli(["runs", runs, "--json"], capsys)
    assert code == 0, err
    [info] = json.loads(out)
    assert info["status"] == "damaged (last.pt unreadable)" and info["epochs_done"] == 1
    code, out, err = run_cli(["runs", runs], capsys)
    assert code == 0 and "damaged" in out


def test_runs_reads_the_best_epoch_from_last_pt_when_metrics_lines_are_lost(
    tmp_path, faces, capsys
):
    """A metrics.jsonl that lost the best epoch's line used to show another epoch as best."""
    runs = tmp_path / "runs"
    assert train_tiny(faces, runs, "train.epochs=3", capsys=capsys)[0] == 0
    [run] = list((runs / "face").iterdir())
    code, out, _ = run_cli(["runs", runs, "--json"], capsys)
    [full] = json.loads(out)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["epoch"] != full["best_epoch"]]
    if full["best_epoch"] == 3:  # the last line: drop another one so there is a gap
        kept = [ln for ln in lines if json.loads(ln)["epoch"] != 2]
    (run / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    code, out, err = run_cli(["runs", runs, "--json"], capsys)
    assert code == 0, err
    [info] = json.loads(out)
    assert (info["best_epoch"], info["best"], info["epochs_done"]) == (
        full["best_epoch"], full["best"], 3,
    )  # fmt: skip
    assert info["status"].startswith("complete; metrics.jsonl lacks epoch")
    assert info["status"].endswith("read from last.pt")
    (run / "metrics.jsonl").unlink()  # it showed "not started" for a trained run
    code, out, err = run_cli(["runs", runs, "--json"], capsys)
    [info] = json.loads(out)
    assert (info["best_epoch"], info["epochs_done"]) == (full["best_epoch"], 3)
    assert info["status"] == "complete; metrics.jsonl has no epoch record, read from last.pt"


def test_plot_passes_over_metrics_lines_that_are_not_epoch_records(tmp_path, faces, capsys):
    runs = tmp_path / "runs"
    assert train_tiny(faces, runs, "train.epochs=2", capsys=capsys)[0] == 0
    [run] = list((runs / "face").iterdir())
    with open(run / "metrics.jsonl", "a") as f:  # hand edits and foreign lines
        f.write('5\n{"loss": 1.0}\n{"epoch": 3, "loss": "abc", "eer": null}\n')
        f.write('{"epoch": 4, "eer": NaN}\n')
    code, _, err = run_cli(["plot", run, "--out", tmp_path / "p"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["runs", runs, "--json"], capsys)
    [info] = json.loads(out)
    assert info["best"] is not None and info["best"] == info["best"] and info["best_epoch"] <= 2
    (run / "metrics.jsonl").write_text('5\n{"loss": 1.0}\n')
    expect_error(["plot", run, "--out", tmp_path / "p2"], capsys, "holds no epoch records")


def test_a_batch_of_one_sample_is_refused_and_an_epoch_without_a_step_is_an_error(
    tmp_path, faces, capsys
):
    runs = tmp_path / "runs"
    code, _, err = train_tiny(faces, runs, "train.batch_size=1", capsys=capsys)
    assert code == 2 and "'train.batch_size' must be ≥ 2" in " ".join(err.split())
    expect_error(["lr-find", "--modality", "face", "--data", faces, "--set",
                  "train.batch_size=1", "--steps", "10", "--out", tmp_path / "lr.png"], capsys,
                 "'train.batch_size' must be ≥ 2")  # fmt: skip
    assert not runs.exists() or not list(runs.rglob("*.pt"))


def test_doctor_names_a_cache_path_that_is_a_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "cache").write_text("x")
    monkeypatch.setenv("METAEMB_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(["doctor"], capsys)
    assert code == 0, err
    assert "is a file, not a folder; point METAEMB_CACHE at a folder" in " ".join(out.split())


def test_measure_match_given_a_pair_list_says_so(tmp_path, faces, face_run, capsys):
    pairs = tmp_path / "pairs.txt"
    code, _, err = run_cli(["trials", "make", faces, "--out", pairs], capsys)
    assert code == 0, err
    expect_error(
        [
            "evaluate",
            face_run,
            "--data",
            faces,
            "--measure",
            "match",
            "--trials",
            pairs,
            "--out",
            tmp_path / "m",
        ],
        capsys,
        "is a trial list (label, enrollment, test), not the 'anchor positive negative'",
        "--measure verification",
    )


def test_plot_warns_when_the_embeddings_come_from_another_run(tmp_path, faces, face_run, capsys):
    pytest.importorskip("matplotlib")
    runs = tmp_path / "runs"
    assert train_tiny(faces, runs, "train.seed=5", capsys=capsys)[0] == 0
    [other] = list((runs / "face").iterdir())
    coll = tmp_path / "other.pt"
    code, _, err = run_cli(["embed", other, faces, "--out", coll, "--device", "cpu"], capsys)
    assert code == 0, err
    with pytest.warns(UserWarning, match="was embedded with .* not with run"):
        code, _, err = run_cli(
            ["plot", face_run, "--embeddings", coll, "--out", tmp_path / "p"], capsys
        )
    assert code == 0, err
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        code, _, err = run_cli(
            ["plot", other, "--embeddings", coll, "--out", tmp_path / "q"], capsys
        )
    assert code == 0, err


def test_a_logit_teacher_must_have_the_students_classes(tmp_path, faces, capsys):
    runs = tmp_path / "runs"
    assert train_tiny(faces, runs, "data.val_fraction=0.34", capsys=capsys)[0] == 0
    [teacher] = list((runs / "face").iterdir())
    base = ["data.val_fraction=0.34", "train.objective=distill", "objective.kd=logits",
            f"train.teacher={teacher}"]  # fmt: skip
    # Another seed holds out other identities: the teacher's logits are other classes.
    code, _, err = train_tiny(faces, tmp_path / "bad", *base, "train.seed=7", capsys=capsys)
    assert code == 2, err
    assert "was trained on other classes than the student's" in " ".join(err.split())
    code, _, err = train_tiny(faces, tmp_path / "good", *base, capsys=capsys)
    assert code == 0, err


def test_more_refused_inputs(tmp_path, faces, face_run, capsys, monkeypatch):
    gallery = tmp_path / "g.pt"
    code, _, err = run_cli(["enroll", face_run, "--gallery", gallery, "--data", faces,
                            "--workers", "0", "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    expect_error(
        ["enroll", face_run, "--gallery", tmp_path / "h.pt", "--data", faces, "--identities", ",,"],
        capsys,
        "names no identity",
    )
    expect_error(
        ["identify", face_run, "--gallery", gallery, "--data", faces, "--p-new", "0.9"],
        capsys,
        "--p-new",
        "holds point embeddings",
    )
    expect_error(
        ["identify", face_run, "--gallery", gallery, "--probe", faces / "id0000"],
        capsys,
        "is a folder",
    )
    code, _, err = run_cli(["landmarks", faces, "--out", tmp_path / "l.csv", "--workers", "-1"],
                           capsys)  # fmt: skip
    assert code == 2 and "Traceback" not in err
    (tmp_path / "text.pt").write_text("a\tb\n")
    message = expect_error(
        ["identify", face_run, "--gallery", tmp_path / "text.pt", "--data", faces], capsys
    )
    assert "not a file written by torch.save" in message and "weights_only" not in message
    monkeypatch.setenv("METAEMB_MANIFEST_MIN_FILES", "abc")
    expect_error(["embed", face_run, faces, "--out", tmp_path / "e.pt"], capsys,
                 "METAEMB_MANIFEST_MIN_FILES must be a whole number")  # fmt: skip


def test_continual_weights_must_not_be_negative():
    from metaemb.core.config import resolve

    for key in ("init_distill", "rehearsal"):
        with pytest.raises(ConfigError, match=f"train.{key}"):
            resolve("face", sets=[f"train.{key}=-1"])


def test_byte_order_marks_and_hidden_files(tmp_path, faces):
    import shutil

    from metaemb.core.config.toml_io import load_toml
    from metaemb.core.eval.trials import read_trials
    from metaemb.core.plugin.components import build

    (tmp_path / "c.toml").write_bytes(b"\xef\xbb\xbf[train]\nepochs = 1\n")
    assert load_toml(tmp_path / "c.toml") == {"train": {"epochs": 1}}
    (tmp_path / "t.txt").write_bytes(b"\xef\xbb\xbf1 a/1.wav a/2.wav\n0 a/1.wav b/1.wav\n")
    assert [t.label for t in read_trials(tmp_path / "t.txt")] == [1, 0]
    for codec in ("utf-16", "utf-16-be"):  # PowerShell's `>`, Notepad's "Unicode"
        text = "1 a/1.wav a/2.wav\r\n0 a/1.wav b/é.wav\r\n"
        mark = b"\xfe\xff" if codec.endswith("be") else b""
        (tmp_path / "u.txt").write_bytes(mark + text.encode(codec))
        assert [t.test for t in read_trials(tmp_path / "u.txt")] == ["a/2.wav", "b/é.wav"]
    data = tmp_path / "faces"
    shutil.copytree(faces, data)
    n = len(build("sample_folders", "image", {}, root=data))
    shutil.copy(data / "id0000" / "000.png", data / "id0001" / "._000.png")
    assert len(build("sample_folders", "image", {}, root=data)) == n


def test_runs_lists_the_others_when_one_config_is_unreadable(tmp_path, faces, face_run, capsys):
    import shutil

    shutil.copytree(face_run, tmp_path / "runs" / "face" / "good")
    shutil.copytree(face_run, tmp_path / "runs" / "face" / "bad")
    (tmp_path / "runs" / "face" / "bad" / "config.toml").write_bytes(b"\x80\x81garbage")
    code, out, err = run_cli(["runs", tmp_path / "runs", "--json"], capsys)
    assert code == 0, err
    status = {r["name"]: r["status"] for r in json.loads(out)}
    assert status["bad"] == "damaged (config.toml unreadable)"
    assert any(s == "complete" for n, s in status.items() if n != "bad")
    expect_error(["runs", faces / "landmarks.csv"], capsys, "is a file")


def test_calibrating_on_the_test_trials_is_warned_about(tmp_path, faces, face_run, capsys):
    trials = tmp_path / "t.txt"
    code, _, err = run_cli(["trials", "make", faces, "--out", trials, "--targets", "20"], capsys)
    assert code == 0, err
    args = ["evaluate", face_run, "--data", faces, "--trials", trials, "--calibrate", trials]
    with pytest.warns(UserWarning, match="40 of the 40 calibration trials .* are also evaluation"):
        code, _, err = run_cli([*args, "--out", tmp_path / "e", "--device", "cpu"], capsys)
    assert code == 0, err


def test_options_that_do_not_apply_are_refused_not_ignored(tmp_path, face_run, faces, capsys):
    trials = tmp_path / "t.txt"
    code, _, err = run_cli(["trials", "make", faces, "--out", trials, "--targets", "5",
                            "--nontargets", "5"], capsys)  # fmt: skip
    assert code == 0, err
    for args, text in [
        (["--enroll-samples", "2"], "--enroll-samples does not apply to --measure verification"),
        (["--measure", "match", "--calibrate", trials], "--calibrate does not apply"),
        (["--measure", "class", "--protocol", "lfw"], "--protocol does not apply"),
    ]:
        out = tmp_path / "ev"
        expect_error(["evaluate", face_run, "--trials", trials, "--out", out, *args], capsys, text)
        assert not out.exists()
    expect_error(["export", face_run, "--format", "torchscript", "--opset", "13"], capsys,
                 "--opset is an ONNX setting")  # fmt: skip
    for flag in (["--method", "pca"], ["--highlight", "id0000"]):
        expect_error(["plot", face_run, *flag, "--out", tmp_path / "p"], capsys,
                     f"{flag[0]} shapes the embedding map, which needs --embeddings")  # fmt: skip
    assert not list(face_run.glob("*.torchscript.pt"))


def test_distill_takes_the_teacher_runs_modality(tmp_path):
    from metaemb.commands.train import _run_modality

    run = tmp_path / "run-1"
    run.mkdir()
    (run / "config.toml").write_text('name = "run"\nmodality = "speaker"\n')
    assert _run_modality(run) == _run_modality(run / "best.pt") == "speaker"
    assert _run_modality(tmp_path) is None  # not a run: distill falls back to face


def test_more_options_that_do_not_apply(tmp_path, faces, face_run, capsys):
    expect_error(["trials", "make", faces, "--out", tmp_path / "t.txt", "--triplets", "5",
                  "--enroll", "3"], capsys, "--enroll shapes a trial list")  # fmt: skip
    expect_error(["evaluate", face_run, "--modality", "speaker", "--out", tmp_path / "e"], capsys,
                 "--modality is for --reference")  # fmt: skip
    coll = tmp_path / "c.pt"
    assert run_cli(["embed", face_run, faces, "--out", coll, "--workers", "0"], capsys)[0] == 0
    for extra in (["--device", "cpu"], ["--workers", "2"], ["-k", "3"], ["--folder", "image"]):
        expect_error(["neighbours", coll, *extra], capsys, f"{extra[0]} applies to probe files")
    # --run names the run whose scorer ranks the collection, probes or not (R4 F1)
    assert run_cli(["neighbours", coll, "--run", face_run], capsys)[0] == 0
    probe = next(Path(faces).rglob("*.png"))
    expect_error(["neighbours", coll, probe, "--max-rank", "3"], capsys, "--max-rank sets the CMC")
    assert not (tmp_path / "t.txt").exists() and not (tmp_path / "e").exists()


def test_environment_switches_are_checked(monkeypatch):
    from metaemb.core.data import manifest
    from metaemb.core.data.tar_index import index_workers

    for value, on in [("", True), ("on", True), ("0", False), ("false", False)]:
        monkeypatch.setenv("METAEMB_MANIFEST", value)
        assert manifest.enabled() is on
    monkeypatch.setenv("METAEMB_MANIFEST", "maybe")
    with pytest.raises(ConfigError, match="METAEMB_MANIFEST must be 1 or 0"):
        manifest.enabled()
    monkeypatch.setenv("METAEMB_INDEX_WORKERS", "3")
    assert index_workers(10) == 3
    for bad in ("abc", "0", "-4"):
        monkeypatch.setenv("METAEMB_INDEX_WORKERS", bad)
        with pytest.raises(ConfigError, match="METAEMB_INDEX_WORKERS must be a whole number"):
            index_workers(10)


def test_export_out_is_never_a_sidecar_name(tmp_path, face_run, capsys):
    expect_error(["export", face_run, "--out", tmp_path / "m.onnx.json"], capsys,
                 "ends in .json")  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_an_exif_rotation_is_named_once(tmp_path, monkeypatch):
    from PIL import Image

    from metaemb.plugins.vision import imageio

    monkeypatch.setattr(imageio, "_ORIENTATION_NOTED", [])
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (8, 6), "red").save(tmp_path / "a.jpg", exif=exif)
    Image.new("RGB", (8, 6), "red").save(tmp_path / "b.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        imageio.read_image(tmp_path / "b.jpg")
        assert not caught  # no tag: nothing to say
        for _ in range(2):
            assert imageio.read_image(tmp_path / "a.jpg").shape == (3, 6, 8)  # as stored
    assert [str(w.message).count("EXIF orientation tag (6") for w in caught] == [1]


def test_identify_results_escape_names_that_would_break_the_tsv():
    from metaemb.core.deploy.search import tsv_field

    name = "a\tb\nc\\d\re"
    field = tsv_field(name)
    assert not any(c in field for c in "\t\n\r")
    unescaped = field.replace("\\\\", "\0").replace("\\t", "\t").replace("\\n", "\n")
    assert unescaped.replace("\\r", "\r").replace("\0", "\\") == name  # reversible


def test_trial_paths_match_files_in_another_unicode_form(tmp_path, faces, face_run, capsys):
    import shutil
    import unicodedata

    data = tmp_path / "nf"
    for i, name in enumerate(["José", "Zoë", "bob"]):  # folders as macOS writes them (NFD)
        shutil.copytree(faces / f"id000{i}", data / unicodedata.normalize("NFD", name))
    trials = tmp_path / "t.txt"  # typed elsewhere (NFC)
    trials.write_text("1 José/000.png José/001.png\n0 José/000.png bob/001.png\n"
                      "1 Zoë/000.png Zoë/002.png\n0 Zoë/001.png bob/000.png\n")  # fmt: skip
    out = tmp_path / "ev"
    code, _, err = run_cli(["evaluate", face_run, "--data", data, "--trials", trials, "--out",
                            out, "--workers", "0"], capsys)  # fmt: skip
    assert code == 0, err
    assert len((out / "scores.txt").read_text().splitlines()) == 4


def test_identity_folders_that_differ_only_in_unicode_form_are_named(tmp_path, faces):
    import shutil
    import unicodedata

    from metaemb.core.plugin.components import build

    for i, form in enumerate(["NFC", "NFD"]):
        shutil.copytree(faces / f"id000{i}", tmp_path / "d" / unicodedata.normalize(form, "José"))
    with pytest.warns(UserWarning, match="differ only in Unicode form"):
        folder = build("sample_folders", "image", {}, root=tmp_path / "d")
    assert folder.num_identities == 2
    # invisible characters and case-only twins print alike too (H19 F6)
    for root, names, how in (("z", ["ab", "a\u200bb"], "only in invisible characters"),
                             ("c", ["Ali", "ali"], "only in case"),
                             ("s", ["Al i", "Al\u00a0i"], "or blanks"),
                             ("t", ["Ali", "Ali "], "or blanks"),
                             ("m", ["Bo", "bo", "Cy", "cy"], "(1 more such pair"),
                             # visible look-alikes are not called invisible (R7 F6)
                             ("w", ["Anna", "\uff21nna"], "only in compatibility forms"),
                             ("x", ["x2", "x\u00b2"], "only in compatibility forms")):  # fmt: skip
        for i, name in enumerate(names):
            shutil.copytree(faces / f"id000{i}", tmp_path / root / name)
        with pytest.warns(UserWarning, match=re.escape(how)) as said:
            build("sample_folders", "image", {}, root=tmp_path / root)
        assert len([w for w in said if "print alike" in str(w.message) or how in
                    str(w.message)]) == 1  # fmt: skip
        if root in "wx":
            assert not [w for w in said if "invisible" in str(w.message)]


def test_a_torchaudio_built_for_another_torch_is_named(monkeypatch, capsys):
    """torchaudio 2.11.1 installed beside torch 2.11.0 fails to load its library (OSError)."""
    import importlib
    import sys

    from metaemb.core.errors import MetaembError
    from metaemb.plugins.audio import io

    real = importlib.import_module

    def broken(name, *args, **kwargs):
        if name.startswith("torchaudio"):
            raise OSError("Could not load this library: libtorchaudio.so")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", broken)
    monkeypatch.delitem(sys.modules, "torchaudio.functional", raising=False)
    wave = np.zeros(800, dtype=np.float32)
    with pytest.raises(MetaembError, match=r"torchaudio cannot be loaded with torch .*pip install"):
        io.resample(__import__("torch").from_numpy(wave), 8000, 16000)
    code, out, _ = run_cli(["doctor"], capsys)
    assert code == 0 and "(installed, but it does not load: OSError)" in out


def test_component_options_must_be_finite(capsys):
    from metaemb.core.config import resolve

    for sets, key in [
        (["train.objective=arcface", "objective.scale=nan"], "objective.scale"),
        (["train.objective=triplet", "objective.margin=inf"], "objective.margin"),
        (["scorer.adapt_relevance=nan"], "scorer.adapt_relevance"),
    ]:
        with pytest.raises(ConfigError, match=rf"'{key}' \(.*\) must be a finite number"):
            resolve("face", sets=sets)
    with pytest.raises(ConfigError, match=r"'train.lr' must be finite and > 0; got inf"):
        resolve("face", sets=["train.lr=inf"])


def test_a_sample_file_given_twice_is_refused(tmp_path, faces, face_run, capsys):
    probe = next(Path(faces).rglob("*.png"))
    expect_error(["embed", face_run, probe, probe, "--out", tmp_path / "e.pt"], capsys,
                 "is given twice")  # fmt: skip
    assert not (tmp_path / "e.pt").exists()


def test_a_worker_count_far_above_the_cores_is_refused(tmp_path, faces, face_run, capsys):
    """`--workers 1000` (a typo for 10) started a thousand processes."""
    from metaemb.core.data.loaders import WORKERS_PER_CORE, check_workers

    cores = len(os.sched_getaffinity(0))
    assert check_workers(WORKERS_PER_CORE * cores) == WORKERS_PER_CORE * cores
    big = str(WORKERS_PER_CORE * cores + 1)
    for args in (
        ["train", "--modality", "face", "--data", faces, "--runs", tmp_path / "runs"],
        ["embed", face_run, faces, "--out", tmp_path / "e.npz"],
        ["landmarks", faces, "--out", tmp_path / "l.csv"],
    ):
        expect_error([*args, "--workers", big], capsys, f"--workers {big}", "CPU cores")
    assert not (tmp_path / "e.npz").exists() and not (tmp_path / "runs").exists()


def test_agedb_on_identity_folders_with_protocol_options(tmp_path, faces, face_run, capsys):
    """`--protocol agedb` read only flat folders, and its min_age_gap could not be set."""
    data = tmp_path / "agedb"
    rows = (faces / "landmarks.csv").read_text().splitlines()
    out_rows = [rows[0]]
    for k, row in enumerate(rows[1:]):
        rel, rest = row.split(",", 1)
        ident, name = rel.split("/")
        new = f"{ident}/{k}_{ident}_{20 + 10 * int(name[:3])}_m.png"
        (data / ident).mkdir(parents=True, exist_ok=True)
        (data / new).write_bytes((faces / rel).read_bytes())
        out_rows.append(f"{new},{rest}")
    (data / "landmarks.csv").write_text("\n".join(out_rows) + "\n")
    args = ["evaluate", face_run, "--data", data, "--protocol", "agedb", "--workers", "0"]
    sets = ["--protocol-set", "min_age_gap=20", "--protocol-set", "folds=3"]
    code, _, err = run_cli([*args, "--out", tmp_path / "e1", *sets], capsys)
    assert code == 0, err
    from metaemb.core.eval.scores_file import read_scores
    from metaemb.plugins.vision.protocols import parse_agedb_name

    trials, _ = read_scores(tmp_path / "e1" / "scores.txt")
    gaps = [abs(parse_agedb_name(t.enroll[0]).age - parse_agedb_name(t.test).age)
            for t in trials if t.label == 1]  # fmt: skip
    assert gaps and min(gaps) >= 20 and all(t.test.count("/") == 1 for t in trials)
    assert json.loads((tmp_path / "e1" / "metrics.json").read_text())["folds"] == 3
    expect_error([*args, "--protocol-set", "min_age_gp=20"], capsys, "did you mean 'min_age_gap'")
    expect_error(["evaluate", face_run, "--protocol-set", "min_age_gap=20"], capsys,
                 "--protocol-set")  # fmt: skip


def test_evaluate_takes_other_target_priors_and_names_an_edited_config(
    tmp_path, faces, face_run, capsys
):
    """An edited config.toml (other p_targets, another scorer) was ignored without a word, and a
    trained run could not be scored at other target priors."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(face_run, run)
    args = ["evaluate", run, "--data", faces, "--workers", "0"]
    code, _, err = run_cli([*args, "--out", tmp_path / "e", "--p-target", "0.001",
                            "--p-target", "0.5"], capsys)  # fmt: skip
    assert code == 0, err
    result = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert result["p_targets"] == [0.001, 0.5] and "min_dcf_0.001" in result
    assert "min_dcf_0.01" not in result
    expect_error([*args, "--p-target", "1.5"], capsys, "--p-target 1.5")
    toml = run / "config.toml"
    toml.write_text(toml.read_text().replace('scorer = "cosine"', 'scorer = "euclidean"'))
    with pytest.warns(UserWarning, match=r"config.toml' differs from the configuration saved in "
                      r"'best.pt' \(edited by hand\?\); metaemb uses the checkpoint's"):  # fmt: skip
        code, _, err = run_cli([*args, "--out", tmp_path / "e2"], capsys)
    assert code == 0, err


def test_a_train_stopped_before_training_leaves_no_run_folder(tmp_path, faces, capsys):
    """A mistake that stops `train` before any epoch left a run folder holding only train.log,
    one per configuration tried (hidden by `metaemb runs`)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    runs = tmp_path / "runs"
    code, _, err = train_tiny(empty, runs, capsys=capsys)
    assert code == 2 and "no identity sub-folders" in " ".join(err.split())
    assert not (runs / "face").exists() or not any((runs / "face").iterdir())
    # A folder that existed before the command (a run resumed) is never removed.
    assert train_tiny(faces, runs, capsys=capsys)[0] == 0
    [run] = list((runs / "face").iterdir())
    (faces / "id0000" / "extra.png").write_bytes((faces / "id0000" / "000.png").read_bytes())
    try:
        code, _, err = train_tiny(faces, runs, capsys=capsys)
    finally:
        (faces / "id0000" / "extra.png").unlink()
    assert code == 2 and "changed" in err and (run / "train.log").is_file()


def test_on_off_environment_variables_read_by_one_rule(monkeypatch):
    """METAEMB_STRICT_PLUGINS=no/off/False turned strict mode on, METAEMB_DEBUG=0 debug mode
    (any non-empty value did, H19 F3): every switch reads 1/0, true/false, yes/no, on/off, and
    refuses anything else, naming the variable."""
    from metaemb.core.env import env_flag
    from metaemb.core.plugin.manager import strict_mode

    for value, want in (("", False), ("0", False), ("no", False), ("Off", False),
                        ("False", False), ("1", True), ("yes", True), ("ON", True)):  # fmt: skip
        monkeypatch.setenv("METAEMB_STRICT_PLUGINS", value)
        assert strict_mode() is want, value
        monkeypatch.setenv("METAEMB_DEBUG", value)
        assert env_flag("METAEMB_DEBUG") is want, value
    # garbage in a switch every command reads is warned about and taken as off, so that
    # `metaemb doctor` still runs (R6 F8); METAEMB_MANIFEST's is refused
    monkeypatch.setenv("METAEMB_STRICT_PLUGINS", "maybe")
    with pytest.warns(UserWarning, match=r"METAEMB_STRICT_PLUGINS must be 1 or 0 .*'maybe'; "
                      r"taken as off"):  # fmt: skip
        assert strict_mode() is False
    monkeypatch.setenv("METAEMB_MANIFEST", "maybe")
    with pytest.raises(ConfigError, match=r"METAEMB_MANIFEST must be 1 or 0"):
        env_flag("METAEMB_MANIFEST", default=True)


def test_devices_pipes_and_huge_files_given_as_small_inputs(tmp_path, monkeypatch):
    """`--config /dev/zero` and `--identities-file /dev/zero` were read until the kernel killed
    the process (20 GB); a FIFO or `<(…)` given as a trial list and /dev/zero as a gallery were
    said not to exist (H19 F4, F5). Each is named as what it is."""
    import os

    from metaemb.commands.gallery import identity_names
    from metaemb.core.config.toml_io import load_toml
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.errors import GalleryError, MetaembError
    from metaemb.core.eval.trials import read_trials
    from metaemb.core.files import MiB

    zero = Path("/dev/zero")
    with pytest.raises(ConfigError, match="config file '/dev/zero' is a device, not a file"):
        load_toml(zero)
    with pytest.raises(MetaembError, match="--identities-file '/dev/zero' is a device"):
        identity_names(None, zero)
    nuls = tmp_path / "nuls.txt"  # a wrong file: its first "name" is not echoed whole (H20 F4)
    nuls.write_bytes(b"\0" * 100_000)
    with pytest.raises(MetaembError, match=r"line 1 \(.{1,200}…, 100000 characters\) has over 255 "
                       r"bytes.* Is it the right file\?") as exc:  # fmt: skip
        identity_names(None, nuls)
    assert len(str(exc.value)) < 400
    with pytest.raises(GalleryError, match="gallery '/dev/zero' is a device, not a gallery"):
        Gallery.load(zero)
    fifo = tmp_path / "list.fifo"
    os.mkfifo(fifo)
    with pytest.raises(MetaembError, match=r"trial list '.*list.fifo' is a pipe, not a file: "
                       r"save it to a file and give that"):  # fmt: skip
        read_trials(fifo)
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(17 * MiB)  # sparse: no disk used
    with pytest.raises(ConfigError, match=r"holds 17 MiB, more than a config file holds"):
        load_toml(big)
    names = tmp_path / "names.txt"  # R8 F9: the list's kind, not the flag, is what it exceeds
    with open(names, "wb") as f:
        f.truncate(65 * MiB)
    with pytest.raises(MetaembError, match=r"holds 65 MiB, more than a list of names holds"):
        identity_names(None, names)
