"""Fault catalogue, unusable outputs (issue 13 item 12, and the `enroll --gallery DIR` case):
every command that writes checks its outputs before any work, and a write that fails later (a
full disk) is reported with the file named. Exit status 2, one paragraph, nothing previously
written lost. Runs as root too: read-only folders are simulated where root would bypass them."""

from __future__ import annotations

import errno
import importlib.util
import os
import tempfile
from pathlib import Path

import pytest
from faults_helpers import expect_error
from helpers import run_cli

from metaemb.core.errors import DataError, OutputError
from metaemb.core.files import atomic_write_text
from metaemb.core.paths import ensure_writable, ensure_writable_dir


@pytest.fixture
def no_embedding(monkeypatch):
    """Fail the test if anything gets embedded (the checks must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("embedded before checking the outputs")

    import metaemb.core.data.embed as embed_module

    monkeypatch.setattr(embed_module, "extract", refuse)
    for module in ("metaemb.core.eval.evaluate", "metaemb.core.deploy.loading"):
        mod = pytest.importorskip(module)
        if hasattr(mod, "extract"):
            monkeypatch.setattr(mod, "extract", refuse)


def test_helpers_name_each_kind_of_unusable_path(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [
        (
            ensure_writable,
            tmp_path / "file" / "out.pt",
            "'" + str(tmp_path / "file") + "' is a file",
        ),
        (ensure_writable, tmp_path, "is a folder; give a file name"),
        (ensure_writable_dir, tmp_path / "file", "is a file, not a folder"),
        (ensure_writable_dir, tmp_path / "file" / "a" / "b", "is a file, not a folder"),
    ]
    for check, path, fragment in cases:
        with pytest.raises(OutputError) as exc:
            check(path)
        assert fragment in str(exc.value) and str(path) in str(exc.value)
    # Nothing is created by a successful check.
    ensure_writable(tmp_path / "new" / "sub" / "x.pt")
    ensure_writable_dir(tmp_path / "new2" / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_read_only_folder_and_full_disk_are_named(tmp_path, monkeypatch):
    target = tmp_path / "keep.txt"
    atomic_write_text(target, "previous\n")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=r"keep\.txt': the disk is full; free some space"):
        atomic_write_text(target, "new\n")
    with pytest.raises(OutputError, match="the disk is full"):
        ensure_writable(tmp_path / "other.txt")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_text() == "previous\n"  # the previous file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # no temp file left

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match=r"keep\.txt': permission denied; choose a writable"):
        atomic_write_text(target, "new\n")
    with pytest.raises(OutputError, match="permission denied"):
        ensure_writable_dir(tmp_path / "runs")


def test_train_refuses_a_runs_folder_that_is_a_file(tmp_path, faces, capsys):
    (tmp_path / "runs").write_text("not a folder")
    expect_error(
        ["train", "--data", faces, "--runs", tmp_path / "runs", "--set", "train.epochs=1"],
        capsys,
        f"the runs folder '{tmp_path / 'runs'}' is a file, not a folder",
    )
    assert (tmp_path / "runs").read_text() == "not a folder"


def test_a_file_in_the_way_of_the_run_folder(tmp_path, faces, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "face").write_text("in the way")  # the modality folder of the run directory
    expect_error(
        ["train", "--data", faces, "--runs", runs, "--set", "train.epochs=1", "--workers", "0"],
        capsys,
        str(runs / "face"),
        "a path component is a file, not a folder",
    )
    assert (runs / "face").read_text() == "in the way"


def test_full_disk_during_a_command_is_a_message(tmp_path, faces, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "trials.txt"
    out.write_text("1 a/1.png b/1.png\n")
    import metaemb.core.paths as paths

    monkeypatch.setattr(paths, "_probe", lambda *a: None)  # the disk fills after the check
    monkeypatch.setattr(os, "fsync", full)
    expect_error(["trials", "make", faces, "--out", out], capsys, str(out), "the disk is full")
    assert out.read_text() == "1 a/1.png b/1.png\n"


def test_a_file_size_limit_during_a_write_is_a_message(tmp_path, faces, capsys, monkeypatch):
    """`ulimit -f` or a FAT32-style per-file cap (EFBIG) was a traceback, exit 1 (H21 F3)."""

    def too_large(fd):
        raise OSError(errno.EFBIG, "File too large")

    out = tmp_path / "trials.txt"
    out.write_text("1 a/1.png b/1.png\n")
    import metaemb.core.paths as paths

    monkeypatch.setattr(paths, "_probe", lambda *a: None)
    monkeypatch.setattr(os, "fsync", too_large)
    expect_error(["trials", "make", faces, "--out", out], capsys, str(out), "ulimit -f")
    assert out.read_text() == "1 a/1.png b/1.png\n"


def test_a_disk_filling_up_during_evaluate_keeps_the_previous_outputs_whole(
    tmp_path, face_run, faces, capsys, monkeypatch
):
    """The disk filled after metrics.json was replaced: new metrics sat beside the previous
    evaluation's scores and plots. The set is now replaced as a whole or not at all."""
    out = tmp_path / "eval"
    args = ["evaluate", face_run, "--data", faces, "--out", out, "--workers", "0"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"metrics.json", "scores.txt"} <= set(before)
    for p in out.iterdir():  # mark the first set, so a mixture would show
        p.write_bytes(before[p.name] + b"\n")
    marked = {p.name: p.read_bytes() for p in out.iterdir()}
    import metaemb.core.paths as paths

    real_fsync, calls = os.fsync, []

    def fills_up(fd):
        calls.append(fd)
        if len(calls) == 2:  # the second output file of the set
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(paths, "_probe", lambda *a: None)  # the disk fills after the checks
    monkeypatch.setattr(os, "fsync", fills_up)
    expect_error(args, capsys, "the disk is full")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == marked  # no temp file left either
    monkeypatch.setattr(os, "fsync", real_fsync)
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in out.iterdir()}["scores.txt"] == before["scores.txt"]


def test_evaluate_checks_its_outputs_before_embedding(tmp_path, face_run, capsys, no_embedding):
    (tmp_path / "afile").write_text("x")
    expect_error(
        ["evaluate", face_run, "--out", tmp_path / "afile", "--device", "cpu"],
        capsys,
        "evaluation output folder",
        "is a file, not a folder",
    )
    out = tmp_path / "eval"
    (out / "scores.txt").mkdir(parents=True)
    expect_error(
        ["evaluate", face_run, "--out", out, "--device", "cpu", "--workers", "0"],
        capsys,
        str(out / "scores.txt"),
        "is a folder",
    )
    assert not (out / "metrics.json").exists()


def test_embed_identify_trials_export_enroll_check_outputs_first(
    tmp_path, faces, face_run, capsys, no_embedding
):
    (tmp_path / "afile").write_text("x")
    blocked = tmp_path / "afile" / "out"
    expect_error(
        ["embed", face_run, faces, "--out", tmp_path, "--device", "cpu"],
        capsys,
        f"'{tmp_path}' is a folder",
    )
    expect_error(["trials", "make", faces, "--out", blocked], capsys, "trial list", "is a file")
    expect_error(
        ["export", face_run, "--format", "torchscript", "--out", blocked],
        capsys,
        "export file",
        "is a file",
    )
    expect_error(
        ["enroll", face_run, "--gallery", tmp_path, "--data", faces, "--device", "cpu"],
        capsys,
        f"'{tmp_path}' is a folder",
    )
    expect_error(
        ["identify", face_run, "--gallery", tmp_path / "g.pt", "--data", faces, "--out", blocked],
        capsys,
        "results file",
        "is a file",
    )
    expect_error(["demo-data", "--out", blocked], capsys, "demo data folder", "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_outputs_never_overwrite_a_run_checkpoint_or_a_sample(tmp_path, faces, face_run, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(face_run, run)
    before = (run / "best.pt").read_bytes()
    for args in (
        ["embed", run, faces, "--out", run / "best.pt"],
        ["export", run / "best.pt", "--out", run / "best.pt"],
        ["trials", "make", faces, "--out", run / "last.pt"],
    ):
        expect_error([*args], capsys, "checkpoint of the run", "destroy")
    assert (run / "best.pt").read_bytes() == before
    sample = faces / "id0000" / "000.png"
    kept = sample.read_bytes()
    expect_error(["trials", "make", faces, "--out", sample], capsys, "existing .png file")
    assert sample.read_bytes() == kept


def test_outputs_never_replace_run_files_galleries_collections_or_probes(
    tmp_path, faces, face_run, capsys
):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(face_run, run)
    config = (run / "config.toml").read_bytes()
    for args in (
        ["embed", run, faces, "--out", run / "config.toml"],
        ["trials", "make", faces, "--out", run / "metrics.jsonl"],
    ):
        expect_error(args, capsys, "the run's own", "would damage the run")
    assert (run / "config.toml").read_bytes() == config
    gallery, coll = tmp_path / "g.pt", tmp_path / "c.pt"
    code, _, err = run_cli(["enroll", run, "--gallery", gallery, "--data", faces,
                            "--workers", "0", "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(["embed", run, faces, "--out", coll, "--device", "cpu"], capsys)
    assert code == 0, err
    archive = tmp_path / "c.npz"  # the NumPy form of an embeddings file
    code, _, err = run_cli(["embed", run, faces, "--out", archive, "--device", "cpu"], capsys)
    assert code == 0, err
    kept = {p: p.read_bytes() for p in (gallery, coll, archive)}
    probe = faces / "id0001" / "001.png"
    for args, fragment in (
        (["identify", run, "--gallery", gallery, "--data", faces, "--out", gallery], "gallery"),
        (["identify", run, "--gallery", gallery, "--probe", probe, "--out", probe], ".png file"),
        (["embed", run, faces, "--out", gallery], "existing metaemb gallery"),
        (["neighbours", coll, "--out", coll], "existing metaemb embeddings file"),
        (["export", run, "--format", "torchscript", "--out", coll], "embeddings file"),
        (["export", run, "--format", "torchscript", "--out", archive], "embeddings file"),
        (["trials", "make", faces, "--out", archive], "existing metaemb embeddings file"),
        (["neighbours", coll, "--out", archive], "existing metaemb embeddings file"),
    ):
        expect_error(args, capsys, fragment, "replace")
    assert all(p.read_bytes() == b for p, b in kept.items())
    # Re-embedding into the same collection, and enrolling into the same gallery, stay allowed.
    code, _, err = run_cli(["embed", run, faces, "--out", coll, "--device", "cpu"], capsys)
    assert code == 0, err


def test_output_folders_inside_the_data_folder_are_refused(tmp_path, faces, face_run, capsys):
    import shutil

    data = tmp_path / "faces"
    shutil.copytree(faces, data)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    expect_error(
        ["evaluate", face_run, "--data", data, "--out", data / "id0000"],
        capsys,
        "inside the data folder",
    )
    expect_error(
        ["train", "--data", data, "--runs", data / "runs", "--set", "train.epochs=1"],
        capsys,
        "runs folder",
        "inside the data folder",
    )
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_dangling_symlinks_are_not_samples(tmp_path, faces):
    import shutil

    import pytest

    from metaemb.core.plugin.components import build

    data = tmp_path / "faces"
    shutil.copytree(faces, data)
    (data / "id0001" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.warns(
        UserWarning, match=r"1 symlink\(s\) that point at nothing or form a loop.*gone.png"
    ):
        folder = build("sample_folders", "image", {}, root=data)
    assert all(not s.path.endswith("gone.png") for s in folder.samples)


def test_fifos_named_like_samples_are_skipped_not_waited_on(tmp_path, faces):
    import os
    import shutil

    import pytest

    from metaemb.core.plugin.components import build

    data = tmp_path / "faces"
    shutil.copytree(faces, data)
    os.mkfifo(data / "id0001" / "pipe.png")  # opening it would block until a writer comes
    (data / "id0002" / "linked.png").symlink_to(data / "id0001" / "pipe.png")
    with pytest.warns(UserWarning, match=r"2 image name\(s\) that are not regular files.*FIFO"):
        folder = build("sample_folders", "image", {}, root=data)
    assert all("pipe" not in s.path and "linked" not in s.path for s in folder.samples)
    from metaemb.core.eval.collect import not_a_file

    assert "is not a regular file (a FIFO" in not_a_file(data / "id0001" / "pipe.png")  # R3 F8
    assert not_a_file(data / "nope.png") == "does not exist"


def test_files_of_suffixes_the_folder_does_not_read_are_named(tmp_path, faces):
    """A .gif or a file without suffix among the .png was left out without a word, unlike
    every other kind of skip (H16 F2); notes and sidecars (.txt, .json) are not data."""
    import shutil
    import warnings

    import pytest

    from metaemb.core.plugin.components import build

    data = tmp_path / "faces"
    shutil.copytree(faces, data)
    (data / "id0001" / "notes.txt").write_text("x")
    (data / "id0001" / "meta.json").write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build("sample_folders", "image", {}, root=data)
    (data / "id0001" / "a.gif").write_bytes(b"GIF89a")
    (data / "id0002" / "noext").write_bytes(b"x")
    with pytest.warns(UserWarning, match=r"left out 2 file\(s\) whose suffix the image folder "
                      r"does not read \(\(no suffix\) ×1, .gif ×1;"):  # fmt: skip
        build("sample_folders", "image", {}, root=data)


def test_a_new_gallery_named_as_another_format_is_refused(
    tmp_path, faces, face_run, capsys, no_embedding
):
    """`enroll --gallery g.txt` wrote a torch zip named .txt (H16 F12)."""
    expect_error(["enroll", face_run, "--gallery", tmp_path / "g.txt", "--data", faces],
                 capsys, "a gallery is a torch file; name it with .pt")  # fmt: skip
    assert not (tmp_path / "g.txt").exists()


def test_export_keeps_a_file_it_did_not_write(tmp_path, face_run, capsys):
    """`export --out m.onnx` replaced any m.onnx, an export of another run's included, only
    the sidecar was protected (H16 F12); re-exporting over its own export still works."""
    model = tmp_path / "m.onnx"
    model.write_text("not a model")
    expect_error(["export", face_run, "--format", "onnx", "--out", model], capsys,
                 "exists and is not a metaemb export")  # fmt: skip
    assert model.read_text() == "not a model"
    model.unlink()
    for _ in range(2):
        code, _, err = run_cli(["export", face_run, "--format", "torchscript", "--out",
                                tmp_path / "m.pt"], capsys)  # fmt: skip
        assert code == 0, err
    # an export copied alone (its sidecar left behind) says what it is: not "not an export"
    # (H21 F11), and it is kept, as it may be the only copy of that model
    alone = tmp_path / "alone"
    alone.mkdir()
    import shutil

    shutil.copy(tmp_path / "m.pt", alone / "m.pt")
    expect_error(["export", face_run, "--format", "torchscript", "--out", alone / "m.pt"],
                 capsys, "is a metaemb export whose sidecar 'm.pt.json' is missing")  # fmt: skip
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        assert run_cli(["export", face_run, "--out", tmp_path / "m.onnx"], capsys)[0] == 0
        shutil.copy(tmp_path / "m.onnx", alone / "m.onnx")
        expect_error(["export", face_run, "--out", alone / "m.onnx"], capsys,
                     "is a metaemb export whose sidecar 'm.onnx.json' is missing")  # fmt: skip


def test_embed_keeps_a_file_that_is_not_an_embeddings_file(tmp_path, faces, face_run, capsys):
    """`embed --out ts.pt` overwrote a TorchScript export (or any .pt) with embeddings (R3 F4);
    an earlier embeddings file is replaced as before."""
    other = tmp_path / "notes.pt"
    other.write_text("keep me")
    expect_error(["embed", face_run, faces, "--out", other, "--workers", "0"], capsys,
                 "is not an embeddings file written by `metaemb embed`")  # fmt: skip
    assert other.read_text() == "keep me"
    from metaemb.core.eval.retrieval import Collection

    for _ in range(2):
        code, out, err = run_cli(["embed", face_run, faces, "--out", tmp_path / "e.pt",
                                  "--workers", "0"], capsys)  # fmt: skip
        assert code == 0 and "another model" not in out, err
    # another model's collection is replaced with a note (H16 F12)
    other = Collection.load(tmp_path / "e.pt")
    other.meta["model_digest"] = "0" * 16
    other.save(tmp_path / "e.pt")
    code, out, err = run_cli(["embed", face_run, faces, "--out", tmp_path / "e.pt",
                              "--workers", "0"], capsys)  # fmt: skip
    assert code == 0 and "note: this replaced the" in out and "of another model" in out, out


def test_names_that_look_like_emoji_codes_are_printed_as_they_are(tmp_path, capsys):
    trials = tmp_path / "list:100:.txt"
    trials.write_text("1 a/x.png b/y.png extra field\n")
    expect_error(["trials", "coverage", trials], capsys, "list:100:.txt")


def test_resume_refuses_a_data_folder_that_changed(tmp_path, faces):
    import shutil
    from types import SimpleNamespace

    import pytest

    from metaemb.core.errors import MetaembError
    from metaemb.core.plugin.components import build
    from metaemb.core.train.checkpointer import check_same_data, data_fingerprint

    data = tmp_path / "faces"
    shutil.copytree(faces, data)
    folder = build("sample_folders", "image", {}, root=data)
    state = {"data_fingerprint": data_fingerprint(folder)}
    trainer = SimpleNamespace(dir=tmp_path / "run", parts=SimpleNamespace(folder=folder))
    check_same_data(trainer, state)  # unchanged: resumes
    check_same_data(trainer, {})  # a run saved before fingerprints: resumes
    (data / "id0002" / "001.png").unlink()
    trainer.parts.folder = build("sample_folders", "image", {}, root=data)
    with pytest.raises(MetaembError, match=r"changed since the run trained on it.*--fresh"):
        check_same_data(trainer, state)


def test_third_audit_outputs_and_inputs(tmp_path, faces, face_run, capsys, monkeypatch):
    import shutil

    from PIL import Image

    from metaemb.core.locks import FileLock, RunInProgress
    from metaemb.core.paths import default_cache_dir

    # A dataset's own landmark file is never replaced by `landmarks --out`.
    before = (faces / "landmarks.csv").read_bytes()
    expect_error(["landmarks", faces, "--out", faces / "landmarks.csv", "--workers", "0"],
                 capsys, "existing file inside the data folder",
                 "Choose a new file name, or a path outside")  # fmt: skip
    assert (faces / "landmarks.csv").read_bytes() == before
    # lr-find --out: a photo or a run's training.png is refused; a plot of ours is not an input.
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), "red").save(photo)
    photo_bytes = photo.read_bytes()
    ours = tmp_path / "ours.png"
    Image.new("RGB", (8, 8)).save(ours, pnginfo=_software("metaemb"))
    for out, text in [(photo, "existing .png file"), (face_run / "training.png", "run's own")]:
        if out.name == "training.png" and not out.exists():
            out.write_bytes(photo.read_bytes())
        expect_error(["lr-find", "--data", faces, "--out", out, "--steps", "5"], capsys, text)
    assert photo.read_bytes() == photo_bytes
    ensure_writable(ours, "plot")  # replacing our own earlier plot is fine
    # evaluate and plot: a photo named like one of their plots is refused before any work.
    for args, name in [
        (["evaluate", face_run, "--data", faces, "--workers", "0"], "det.png"),
        (["evaluate", face_run, "--data", faces, "--workers", "0"], "scores.png"),
        (["evaluate", face_run, "--data", faces, "--workers", "0"], "roc.png"),
        (["plot", face_run], "training.png"),
        (["plot", face_run, "--embeddings", faces, "--method", "pca"], "cmc.png"),
    ]:
        folder = tmp_path / f"out-{args[0]}-{name}"
        folder.mkdir()
        (folder / name).write_bytes(photo_bytes)
        expect_error([*args, "--out", folder], capsys, name, "existing .png file")
        assert [p.name for p in folder.iterdir()] == [name]
        assert (folder / name).read_bytes() == photo_bytes
    # An empty METAEMB_CACHE is unset, not the working directory.
    monkeypatch.setenv("METAEMB_CACHE", "")
    assert default_cache_dir() == Path.home() / ".cache" / "metaemb"
    monkeypatch.delenv("METAEMB_CACHE")
    # Two writers of one gallery: the second is refused while the first holds it.
    gallery = tmp_path / "g.pt"
    with FileLock(gallery, "gallery"), pytest.raises(RunInProgress, match="being written by pid"):
        FileLock(gallery, "gallery").acquire()
    # The same files enrolled again under another name are refused, not skipped.
    assert run_cli(["enroll", face_run, "--gallery", gallery, "--data", faces,
                    "--identities", "id0001", "--workers", "0"], capsys)[0] == 0  # fmt: skip
    other = tmp_path / "other"
    shutil.copytree(faces / "id0001", other / "carol")
    (other / "carol").rename(other / "carol-copy")  # a copy is another file: only the link
    (other / "carol").symlink_to(faces / "id0001")  # names the enrolled files themselves
    expect_error(["enroll", face_run, "--gallery", gallery, "--data", other, "--identities",
                  "carol", "--workers", "0"], capsys, "is already enrolled as 'id0001', not 'carol'")  # fmt: skip


def _software(name):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", name)
    return info


def test_evaluate_refuses_a_validation_split_of_changed_data(tmp_path, faces, capsys):
    import shutil

    from faults_helpers import train_tiny

    data = tmp_path / "faces"
    shutil.copytree(faces, data)
    assert train_tiny(data, tmp_path / "runs")[0] == 0
    [run] = list((tmp_path / "runs" / "face").iterdir())
    shutil.rmtree(data / "id0005")
    expect_error(["evaluate", run, "--out", tmp_path / "ev", "--workers", "0"], capsys,
                 "changed since the run trained on it", "--trials")  # fmt: skip
    assert not (tmp_path / "ev").exists()
    # the class measure rebuilt the split anyway and scored training identities, reporting
    # none of them (Q1 F29)
    expect_error(["evaluate", run, "--out", tmp_path / "ev", "--workers", "0", "--measure",
                  "class"], capsys, "changed since the run trained on it")  # fmt: skip
    assert not (tmp_path / "ev").exists()


def test_a_scorer_fitted_at_evaluation_learns_the_checkpoints_training_identities(
    tmp_path, faces, capsys
):
    """PLDA fitted at evaluate time on a new split of a folder that changed since training
    learnt identities of the trial list (Q1 F29); it fits on the checkpoint's training
    identities now."""
    import shutil

    import torch
    from faults_helpers import train_tiny

    data = tmp_path / "faces"
    shutil.copytree(faces, data)
    assert train_tiny(data, tmp_path / "runs")[0] == 0
    [run] = list((tmp_path / "runs" / "face").iterdir())
    trained = torch.load(run / "last.pt", weights_only=False)["training_identities"]
    for i in range(4):  # the folder grew since training: a new split holds other identities
        shutil.copytree(faces / "id0000", data / f"new{i}")
    listed = tmp_path / "list.txt"
    assert run_cli(["trials", "make", data, "--out", listed], capsys)[0] == 0
    code, out, err = run_cli(["evaluate", run, "--trials", listed, "--scorer", "plda", "--out",
                              tmp_path / "ev", "--workers", "0"], capsys)  # fmt: skip
    kept = sum(len(list((data / n).iterdir())) for n in trained)
    assert code == 0 and f"on the run's {kept} training samples" in out, out + err
    # some training identities gone: said; all of them (renamed): refused, not "0 samples"
    others = tmp_path / "others"  # trials on other data: the run's own folder is only fitted on
    for i in range(3):
        shutil.copytree(faces / "id0000", others / f"p{i}")
    listed = tmp_path / "others.txt"
    assert run_cli(["trials", "make", others, "--out", listed], capsys)[0] == 0
    shutil.rmtree(data / trained[0])
    args = ["evaluate", run, "--data", others, "--trials", listed, "--scorer", "plda",
            "--workers", "0"]  # fmt: skip
    with pytest.warns(UserWarning, match=rf"1 of the run's {len(trained)} training identities "
                      r"are no longer in"):  # fmt: skip
        code, _, err = run_cli([*args, "--out", tmp_path / "ev2"], capsys)
    for name in trained[1:]:
        (data / name).rename(data / f"x{name}")
    expect_error([*args, "--out", tmp_path / "ev3"], capsys,
                 f"none of the run's {len(trained)} training identities is in")  # fmt: skip


def test_trial_lists_refuse_paths_starting_with_a_hash(tmp_path, faces, capsys):
    import shutil

    data = tmp_path / "names"
    shutil.copytree(faces / "id0000", data / "#hash")
    shutil.copytree(faces / "id0001", data / "alice")
    expect_error(["trials", "make", data, "--out", tmp_path / "t.txt", "--format", "kaldi"],
                 capsys, "start with '#'")  # fmt: skip


def test_voxceleb_lists_hold_paths_starting_with_a_hash(tmp_path, faces, capsys):
    """A VoxCeleb line starts with its label, so a '#' path never starts a line: written and
    read back whole (a Kaldi line starts with a path and is refused above)."""
    import shutil

    from metaemb.core.eval.trials import read_trials

    data = tmp_path / "names"
    shutil.copytree(faces / "id0000", data / "#hash")
    shutil.copytree(faces / "id0001", data / "alice")
    out = tmp_path / "t.txt"
    assert run_cli(["trials", "make", data, "--out", out, "--targets", "4", "--nontargets",
                    "4"], capsys)[0] == 0  # fmt: skip
    trials = read_trials(out, root=data)
    assert len(trials) == len(out.read_text().splitlines()) == 8
    assert any(t.test.startswith("#hash/") or t.enroll[0].startswith("#hash/") for t in trials)


def test_triplet_lists_refuse_anchors_starting_with_a_hash(tmp_path):
    """The line would read as a comment: its triplet silently dropped."""
    from metaemb.core.eval.triplets import Triplet, write_triplets

    with pytest.raises(DataError, match=r"anchor '#a/1\.jpg'.*comment"):
        write_triplets(tmp_path / "t.txt", [Triplet("#a/1.jpg", "#a/2.jpg", "b/1.jpg")])
    write_triplets(tmp_path / "t.txt", [Triplet("b/1.jpg", "b/2.jpg", "#a/1.jpg")])


def test_exports_galleries_and_scores_given_as_inputs_are_named(tmp_path, faces, face_run, capsys):
    ts = tmp_path / "m.ts.pt"
    assert run_cli(["export", face_run, "--format", "torchscript", "--out", ts], capsys)[0] == 0
    message = expect_error(["evaluate", ts, "--out", tmp_path / "e1"], capsys,
                           "is a TorchScript export (from `metaemb export`), not a checkpoint")  # fmt: skip
    assert "weights_only" not in message
    gallery = tmp_path / "g.pt"
    assert run_cli(["enroll", face_run, "--gallery", gallery, "--data", faces,
                    "--identities", "id0000", "--workers", "0"], capsys)[0] == 0  # fmt: skip
    expect_error(["evaluate", gallery, "--out", tmp_path / "e2"], capsys,
                 "is a metaemb gallery file", "not a model checkpoint")  # fmt: skip
    (tmp_path / "scores.txt").write_text("id0000/000.png\tid0000/001.png\ttarget\t0.5\n")
    expect_error(["evaluate", face_run, "--trials", tmp_path / "scores.txt", "--out",
                  tmp_path / "e3"], capsys, "looks like a scores.txt")  # fmt: skip


def test_unenroll_and_a_renamed_identity_folder(tmp_path, faces, face_run, capsys):
    import shutil

    from metaemb.core.deploy.gallery import Gallery

    data = tmp_path / "d"
    for name in ("id0000", "id0001"):
        shutil.copytree(faces / name, data / name)
    gallery = tmp_path / "g.pt"
    assert run_cli(["enroll", face_run, "--gallery", gallery, "--data", data, "--workers", "0"],
                   capsys)[0] == 0  # fmt: skip
    (data / "id0000").rename(data / "bob")
    with pytest.warns(UserWarning, match=r"as 'id0000' are no longer under .*enrolled twice"):
        code, _, err = run_cli(["enroll", face_run, "--gallery", gallery, "--data", data,
                                "--workers", "0"], capsys)  # fmt: skip
    assert code == 0, err
    before = gallery.read_bytes()
    expect_error(["unenroll", "--gallery", gallery, "--identities", "id0000,nobody"], capsys,
                 "'nobody' is not enrolled; enrolled: 'id0000', 'id0001', 'bob'.")  # fmt: skip
    expect_error(["unenroll", "--gallery", gallery, "--identities", "id0000,bob,id0000"], capsys,
                 "--identities names 'id0000' more than once")  # fmt: skip
    assert gallery.read_bytes() == before  # all names checked before the rewrite
    # Through a symlink, the linked gallery itself is rewritten (and the link kept).
    real, link = tmp_path / "real.pt", tmp_path / "link.pt"
    real.write_bytes(before)
    link.symlink_to(real)
    code, _, err = run_cli(["unenroll", "--gallery", link, "--identities", "id0001"], capsys)
    assert code == 0 and link.is_symlink(), err
    assert "id0001" not in Gallery.load(real).identities
    code, out, err = run_cli(["unenroll", "--gallery", gallery, "--identities", "id0000"], capsys)
    assert code == 0 and "removed 'id0000' (4 samples)" in out, err

    assert sorted(Gallery.load(gallery).identities) == ["bob", "id0001"]


def test_triplet_lists_refuse_unlistable_folders_before_drawing(tmp_path, faces, capsys):
    """A '#' or blank folder failed by seed, one file at a time, or was called 'empty or
    blank' (H18 F7, F8): all are named up front now, with their count."""
    import shutil

    data = tmp_path / "names"
    shutil.copytree(faces / "id0000", data / "#hash")
    shutil.copytree(faces / "id0001", data / "a b")
    shutil.copytree(faces / "id0002", data / "plain")
    expect_error(["trials", "make", data, "--out", tmp_path / "t.txt", "--triplets", "5"],
                 capsys, "sample path(s) of data folder", "contain spaces or start with '#'")  # fmt: skip


def test_a_moved_training_folder_given_with_data_is_the_runs_own(tmp_path, faces, capsys):
    """After a move, the error said to pass --data, which then scored all identities, most of
    them trained on (H18 F11): the same samples and identities are the run's folder, and its
    validation split is scored."""
    import json
    import shutil

    from faults_helpers import train_tiny

    data = tmp_path / "faces"
    shutil.copytree(faces, data)
    assert train_tiny(data, tmp_path / "runs")[0] == 0
    [run] = list((tmp_path / "runs" / "face").iterdir())
    moved = data.rename(tmp_path / "moved")
    expect_error(["evaluate", run, "--out", tmp_path / "e0", "--workers", "0"], capsys,
                 "does not exist", "--data")  # fmt: skip
    code, _, err = run_cli(["evaluate", run, "--data", moved, "--out", tmp_path / "e1",
                            "--workers", "0"], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "e1" / "metrics.json").read_text())["trials"] == "validation"


def test_a_read_only_run_folder_points_at_out(tmp_path, monkeypatch):
    """On a run folder that cannot be written (an archive, as root `chattr +i`), evaluate said
    only to "choose a writable output path", though --out DIR works there (H19 F10)."""
    from metaemb.core.errors import OutputError
    from metaemb.core.eval import output_folder
    from metaemb.core.locks import FileLock

    def read_only(self):
        raise OutputError(f"cannot write the run-folder lock '{self.path}': read-only file system")

    monkeypatch.setattr(FileLock, "acquire", read_only)
    said = r"read-only file system.*give --out DIR to write them elsewhere"
    claim = output_folder.claimed(tmp_path / "run" / "eval-validation", "", "")
    with pytest.raises(OutputError, match=said), claim:
        pass


def test_a_file_on_a_read_only_mount_is_not_called_read_only_to_chmod(tmp_path, monkeypatch):
    """A gallery on a read-only mount was 'read-only; make it writable', which chmod cannot fix
    (H21 F10): the mount is named."""
    import metaemb.core.paths as paths

    gallery = tmp_path / "g.pt"
    gallery.write_bytes(b"x")

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(paths.os, "access", lambda *a, **k: False)
    monkeypatch.setattr(paths.os, "statvfs", lambda p: ReadOnly())
    with pytest.raises(OutputError, match=r"its file system is mounted read-only; copy it"):
        paths.ensure_writable(gallery, "gallery file")
    monkeypatch.setattr(paths.os, "statvfs", lambda p: type("RW", (), {"f_flag": 0})())
    with pytest.raises(OutputError, match=r"the file is read-only; make it writable"):
        paths.ensure_writable(gallery, "gallery file")


def test_a_second_writer_of_one_export_or_evaluation_folder_is_refused(
    tmp_path, faces, face_run, capsys, monkeypatch
):
    """Two exports to one --out left one run's model beside the other's sidecar, and two
    evaluations into one --out one list's metrics.json beside the other's scores.txt (H21 F18,
    F19): the second writer is refused while the first holds the output."""
    from metaemb.core.locks import FileLock

    model, out = tmp_path / "deploy" / "m.pt", tmp_path / "ev"
    model.parent.mkdir()
    for target, held, args in (
        (model, model, ["export", face_run, "--format", "torchscript", "--out", model]),
        (out / "metrics.json", out / "evaluating",
         ["evaluate", face_run, "--data", faces, "--out", out, "--workers", "0"]),
    ):  # fmt: skip
        with FileLock(held, "held"):
            code, _, err = run_cli(args, capsys)
        assert code == 2 and "is being written by pid" in " ".join(err.split()), err
        assert not target.exists()
        assert run_cli(args, capsys)[0] == 0  # released: written
    # the evaluation's lock is inside its folder: a writable --out under a parent the user may
    # not write (a shared results volume) is written, as it was before the lock (R9 F5)
    shared = tmp_path / "shared"
    (shared / "mine").mkdir(parents=True)
    real_open = os.open

    def parent_refuses(path, flags, *rest, **kw):
        if Path(path).parent == shared and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *rest, **kw)

    monkeypatch.setattr(os, "open", parent_refuses)
    args = ["evaluate", face_run, "--data", faces, "--out", shared / "mine", "--workers", "0"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert sorted(p.name for p in shared.iterdir()) == ["mine"]
    assert (shared / "mine" / "metrics.json").is_file()


def test_a_class_measure_into_a_verifications_folder_leaves_no_mixed_set(
    tmp_path, faces, face_run, capsys
):
    """`--measure class --out DIR` over a verification's results wrote its metrics.json beside
    the other evaluation's scores.txt and plots, presented as one set (H22 F2): the earlier
    set's scores and plots go with the new one."""
    import json

    out = tmp_path / "ev"
    base = ["evaluate", face_run, "--data", faces, "--out", out, "--workers", "0"]
    assert run_cli(base, capsys)[0] == 0
    assert (out / "scores.txt").is_file() and (out / "det.png").is_file()
    mine = out / "notes.txt"
    mine.write_text("mine")
    code, text, err = run_cli([*base, "--measure", "class"], capsys)
    assert code == 0, err
    assert "removed the earlier evaluation's scores.txt, det.png" in text  # said (H23 F9)
    left = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert left == ["metrics.json", "notes.txt"], left
    assert json.loads((out / "metrics.json").read_text())["measure"] == "class"
    # ... but another toolkit's scores.txt there is never taken for an earlier set (R10 F1);
    # and metaemb's own older, space-separated scores.txt is (R10 F9)
    theirs = "spk1/a.wav spk1/b.wav 1 0.83\n"
    (out / "scores.txt").write_text(theirs)
    assert run_cli([*base, "--measure", "class"], capsys)[0] == 0
    assert (out / "scores.txt").read_text() == theirs
    (out / "scores.txt").write_text("id0/a.png id0/b.png target 0.5\n")
    assert run_cli(base, capsys)[0] == 0
    assert "\t" in (out / "scores.txt").read_text()


def test_evaluate_never_writes_into_the_runs_data_nor_over_another_toolkits_scores(
    tmp_path, face_run, capsys
):
    """`evaluate RUN --out DATA/out` without --data wrote its plots into the run's own data
    folder, a new identity of PNG 'faces' (H22 F11); `--out` over a folder holding another
    toolkit's scores.txt (SpeechBrain writes that name) or one's own metrics.json replaced them
    without a word (H22 F7). Both are refused before anything is embedded."""
    import json

    from metaemb.core.config import from_dict
    from metaemb.core.config.toml_io import load_toml

    root = Path(from_dict(load_toml(face_run / "config.toml")).data.root)
    assert root.is_absolute() and root.is_dir()
    inside = root / "results"
    code, _, err = run_cli(["evaluate", face_run, "--workers", "0", "--out", inside], capsys)
    assert code == 2 and "inside the data folder" in " ".join(err.split()), err
    assert not inside.exists()
    theirs = tmp_path / "sb"
    theirs.mkdir()
    (theirs / "scores.txt").write_text("spk1/a spk2/b 0 0.25\n")
    for name, text in (("scores.txt", None), ("metrics.json", '{"my": "notes"}')):
        if text is not None:
            (theirs / "scores.txt").unlink()
            (theirs / name).write_text(text)
        before = (theirs / name).read_bytes()
        code, _, err = run_cli(["evaluate", face_run, "--workers", "0", "--out", theirs], capsys)
        assert code == 2 and "is not one that `metaemb evaluate` wrote" in " ".join(err.split())
        assert (theirs / name).read_bytes() == before
    (theirs / "metrics.json").unlink()
    code, _, err = run_cli(["evaluate", face_run, "--workers", "0", "--out", theirs], capsys)
    assert code == 0, err  # an empty folder, then its own results again
    code, _, err = run_cli(["evaluate", face_run, "--workers", "0", "--out", theirs], capsys)
    assert code == 0, err
    assert "eer" in json.loads((theirs / "metrics.json").read_text())


def test_a_lock_that_cannot_be_written_is_named_by_what_it_guards(
    tmp_path, faces, face_run, capsys, monkeypatch
):
    """On a read-only run folder, export and evaluate named their hidden lock files
    ('.best.onnx.lock') as a 'run-folder lock' and advised fixing permissions, which no chmod
    does for a read-only mount (R9 F14, H22 F6); a held lock spoke of a gallery's 'additions'."""
    real_open = os.open

    def read_only(path, flags, *rest, **kw):
        if str(path).endswith(".lock") and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *rest, **kw)

    monkeypatch.setattr(os, "open", read_only)
    model = tmp_path / "m.pt"
    for args, named in (
        (["export", face_run, "--format", "torchscript", "--out", model], f"export '{model}'"),
        (["evaluate", face_run, "--data", faces, "--workers", "0"], "evaluation folders of"),
    ):
        code, _, err = run_cli(args, capsys)
        said = " ".join(err.split())
        assert code == 2 and named in said and ".lock" not in said, said
        assert "read-only" in said and "writable disk" in said and "permissions" not in said


def test_an_unwritable_folder_is_named_by_the_file_that_would_be_written(tmp_path, monkeypatch):
    """A read-only folder was named as 'the export file' or 'the gallery file' itself, the file
    to be written not named at all (R10 F14)."""
    import tempfile

    from metaemb.core.paths import ensure_writable

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    target = tmp_path / "run" / "best.onnx"
    target.parent.mkdir()
    with pytest.raises(OutputError, match=rf"export file '{target}': the file system is read-only"):
        ensure_writable(target, "export file")


def test_a_symbolic_link_that_loops_is_named_as_one_wherever_it_is_given(
    face_run, faces, tmp_path, capsys
):
    """A looping link as --out, --runs, a gallery or a run: a RuntimeError traceback from
    Path.resolve (evaluate, plot, train), 'a file is in the way' (embed, export), or 'does
    not exist' (identify, evaluate RUN) (H24 F3). Each says the link loops, exit 2."""
    loop = tmp_path / "loopA"
    os.symlink(tmp_path / "loopB", loop)
    os.symlink(loop, tmp_path / "loopB")
    cases = [
        ["evaluate", face_run, "--out", loop, "--workers", "0"],
        ["plot", face_run, "--out", loop],
        ["train", "--data", faces, "--runs", loop, "--set", "train.epochs=1"],
        ["embed", face_run, faces, "--out", loop / "x.pt", "--workers", "0"],
        ["export", face_run, "--out", loop / "m.onnx"],
        ["identify", face_run, "--gallery", loop, "--data", faces],
        ["evaluate", loop],
    ]
    for args in cases:
        code, _, err = run_cli(args, capsys)
        said = " ".join(err.split())
        assert code == 2 and "is a symbolic link that loops" in said, (args[0], said)
        assert "Traceback" not in said
