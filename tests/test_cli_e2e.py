"""End-to-end CLI runs on a tiny generated face dataset: train, resume, evaluate, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import demo_faces, run_cli

from metaemb.core.plugin import manager as plugins

TINY = [
    "train.epochs=2",
    "train.batch_size=16",
    "eval.max_targets=200",
    "eval.nontargets=200",
    "model.dim=32",
]


@pytest.fixture(scope="module")
def tiny_faces(tmp_path_factory) -> Path:
    return demo_faces(tmp_path_factory.mktemp("data") / "faces", 10, 6)


def train_args(data: Path, runs: Path, *extra: str) -> list[str]:
    args = [
        "train",
        "--modality",
        "face",
        "--data",
        str(data),
        "--runs",
        str(runs),
        "--workers",
        "0",
    ]
    for s in [*TINY, *extra]:
        args += ["--set", s]
    return args


def test_demo_data_command_writes_an_identity_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    code, _, err = run_cli(
        [
            "demo-data",
            "--modality",
            "face",
            "--out",
            str(out),
            "--set",
            "identities=3",
            "--set",
            "images_per_identity=2",
            "--set",
            "image_size=32",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    idents = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(idents) == 3
    assert all(len(list(d.glob("*.png"))) == 2 for d in idents)

    # --seed draws another dataset; --seed 0 is the default draw; seed is no --set option.
    small = ["--set", "identities=3", "--set", "images_per_identity=2", "--set", "image_size=32"]
    for seed in ("0", "1"):
        args = ["demo-data", "--out", str(tmp_path / seed), "--seed", seed, *small]
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 0, err
    same = (tmp_path / "0/id0001/001.png").read_bytes() == (out / "id0001/001.png").read_bytes()
    other = (tmp_path / "1/id0001/001.png").read_bytes() != (out / "id0001/001.png").read_bytes()
    assert same and other
    args = ["demo-data", "--out", str(tmp_path / "s"), "--set", "seed=2", *small]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "use --seed N" in err


def test_train_resume_fresh_and_evaluate(tiny_faces, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    code, out, err = run_cli(train_args(tiny_faces, runs), capsys, monkeypatch)
    assert code == 0, err + out
    [run] = list((runs / "face").iterdir())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("eer", "min_dcf_0.01", "min_dcf_0.05", "cllr"):
        assert 0 <= records[-1][key] <= 10
    assert (run / "best.pt").exists() and (run / "last.pt").exists()
    assert (run / "config.toml").exists() and (run / "baseline.json").exists()
    assert "baseline" in out and "EER" in out

    # Same command again: the run is complete, nothing is retrained, and nothing but its log
    # is written (config.toml, README.md and training.png were rewritten, and a read-only
    # config.toml replaced: H24 F6)
    def stamps() -> dict[str, tuple[int, int]]:
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run.iterdir()
                if p.name != "train.log"}  # fmt: skip

    before = stamps()
    code, out, err = run_cli(train_args(tiny_faces, runs), capsys, monkeypatch)
    assert code == 0 and "complete" in out
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert stamps() == before

    # More epochs is another configuration → another run directory (never mixed).
    # Evaluate recomputes the validation metrics of best.pt exactly.
    best_epoch = min(records, key=lambda r: r["eer"])
    code, out, err = run_cli(["evaluate", str(run), "--workers", "0"], capsys, monkeypatch)
    assert code == 0, err + out
    metrics = json.loads((run / "eval-validation" / "metrics.json").read_text())
    assert metrics["eer"] == pytest.approx(best_epoch["eer"], abs=1e-9)
    assert metrics["cllr"] == pytest.approx(best_epoch["cllr"], rel=1e-5)
    lines = (run / "eval-validation" / "scores.txt").read_text().splitlines()
    assert len(lines) == metrics["n_target"] + metrics["n_nontarget"]
    assert len(lines[0].split()) == 4

    # --fresh starts over.
    code, out, err = run_cli(
        [*train_args(tiny_faces, runs), "--fresh"],
        capsys,
        monkeypatch,
    )
    assert code == 0 and "complete" not in out
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_killed_run_resumes_to_completion(tiny_faces, tmp_path, capsys, monkeypatch):
    """Simulate a kill during epoch 2: last.pt holds epoch 1; re-running finishes the run."""
    from metaemb.core.train import engine
    from metaemb.core.train.callbacks import Callback

    runs = tmp_path / "runs"

    class DiesInEpoch2(Callback):
        def on_epoch_start(self, trainer, epoch):
            if epoch == 1:
                raise KeyboardInterrupt

    class Interrupted(engine.Trainer):  # the CLI builds this Trainer, with the callback
        def __init__(self, *args, callbacks=(), **kwargs):
            super().__init__(*args, callbacks=[*callbacks, DiesInEpoch2()], **kwargs)

    with monkeypatch.context() as m:
        m.setattr(engine, "Trainer", Interrupted)
        code, _, err = run_cli(train_args(tiny_faces, runs), capsys, monkeypatch)
    assert code == 130 and "resume" in err
    [run] = list((runs / "face").iterdir())
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (run / ".lock").exists(), "the lock is released on interruption"
    # evaluating the unfinished run says so (H16 F10)
    with pytest.warns(UserWarning, match=r"is unfinished: 1 of its 2 epochs trained; this uses "
                      r"best.pt \(epoch 1\)"):  # fmt: skip
        code, _, err = run_cli(["evaluate", run, "--workers", "0"], capsys, monkeypatch)
    assert code == 0, err
    with pytest.warns(UserWarning, match=r"is unfinished: 1 of its 2"):  # its file too (R3 F7)
        code, _, err = run_cli(["evaluate", run / "last.pt", "--workers", "0"], capsys,
                               monkeypatch)  # fmt: skip
    assert code == 0, err
    # one being trained right now is not told to be re-run (H17 F11)
    from metaemb.core.locks import RunLock

    with RunLock(run), pytest.warns(UserWarning, match=r"It is being trained now \(pid \d+\)"):
        code, _, err = run_cli(["evaluate", run, "--workers", "0"], capsys, monkeypatch)
    assert code == 0, err
    code, out, err = run_cli(train_args(tiny_faces, runs), capsys, monkeypatch)
    assert code == 0, err
    assert "Resuming" in out
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]


def test_example_plugin_is_listed_and_its_backbone_trains(
    tiny_faces, tmp_path, capsys, monkeypatch
):
    plugins.reset()
    code, out, _ = run_cli(["plugins", "--json"], capsys, monkeypatch)
    names = {p["name"]: p for p in json.loads(out)["plugins"]}
    assert "example" in names, "install it: pip install ./examples/plugin"
    assert names["example"]["components"]["backbones"] == ["tinycnn"]
    code, out, err = run_cli(
        train_args(tiny_faces, tmp_path / "runs", "model.backbone=tinycnn", "train.epochs=1"),
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert "tinycnn" in out


@pytest.mark.parametrize(
    ("make", "args", "expected"),
    [
        (None, ["--data", "{tmp}/missing"], "does not exist"),
        ("empty", ["--data", "{tmp}/empty"], "no identity sub-folders"),
        ("noimages", ["--data", "{tmp}/noimages"], "contain no image files"),
        ("corrupt", ["--data", "{tmp}/corrupt"], "broken.png"),
        (None, ["--set", "model.backbone=resnet81"], "did you mean 'resnet18'"),
        (None, ["--set", "train.epoch=1"], "did you mean 'epochs'"),
        (None, ["--set", "train.lr=fast"], "expected a number"),
        (None, ["--modality", "fcae"], "unknown modality 'fcae'"),
        # the option's own name, not a --set the user never typed (H16 F9)
        (None, ["--on-bad-sample", "ignore"], "--on-bad-sample must be error or skip"),
    ],
)
def test_bad_input_gets_one_paragraph_error(
    make, args, expected, tiny_faces, tmp_path, capsys, monkeypatch
):
    import shutil

    if make == "empty":
        (tmp_path / "empty").mkdir()
    elif make == "noimages":
        shutil.copytree(tiny_faces, tmp_path / "noimages")
        (tmp_path / "noimages" / "zz-nobody").mkdir()
        (tmp_path / "noimages" / "zz-nobody" / "notes.txt").write_text("x")
    elif make == "corrupt":
        shutil.copytree(tiny_faces, tmp_path / "corrupt")
        first = sorted(p for p in (tmp_path / "corrupt").iterdir() if p.is_dir())[0]
        (first / "broken.png").write_bytes(b"\x89PNG not really")
    full = ["train", "--runs", str(tmp_path / "runs"), "--workers", "0"]
    if "--modality" not in args:
        full += ["--modality", "face"]
    if "--data" not in args:
        full += ["--data", str(tiny_faces)]
    full += [a.replace("{tmp}", str(tmp_path)) for a in args]
    for s in TINY:
        full += ["--set", s]
    code, out, err = run_cli(full, capsys, monkeypatch)
    assert code == 2, out + err
    assert "Traceback" not in err and "Traceback" not in out
    assert expected in " ".join(err.split())


def test_distill_a_mobilenet_student_from_a_teacher(tiny_faces, tmp_path, capsys, monkeypatch):
    """`metaemb distill`: a frozen ResNet teacher, a MobileNetV3 student (selected by name)."""
    runs = tmp_path / "runs"
    code, out, err = run_cli(train_args(tiny_faces, runs, "train.epochs=1"), capsys, monkeypatch)
    assert code == 0, err
    [teacher] = list((runs / "face").iterdir())
    args = ["distill", "--teacher", str(teacher), "--student", "mobilenet_v3_small"]
    args += ["--data", str(tiny_faces), "--runs", str(runs), "--workers", "0"]
    for s in [*TINY, "train.epochs=1"]:
        args += ["--set", s]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err + out
    [student] = [p for p in (runs / "face").iterdir() if p.name.startswith("distill-")]
    record = json.loads((student / "metrics.jsonl").read_text().splitlines()[-1])
    # The teacher ran on every batch: the distillation term was recorded beside the loss.
    assert record["epoch"] == 1 and 0 < record["train_kd"] < float("inf")
    assert "mobilenet_v3_small" in (student / "config.toml").read_text()

    # Without a teacher, the distill objective says what is missing.
    code, out, err = run_cli(
        train_args(tiny_faces, runs, "train.objective=distill"), capsys, monkeypatch
    )
    assert code == 2 and "train.teacher" in err

    # A smaller student than the teacher (32 → 8): distill learns a projection to the teacher's
    # size; `train` with the objective says what to set before any epoch (T1 F5).
    code, out, err = run_cli([*args, "--set", "model.dim=8"], capsys, monkeypatch)
    assert code == 0, err + out
    [small] = [
        p for p in (runs / "face").iterdir() if p.name.startswith("distill-") and p != student
    ]
    assert "teacher_dim = 32" in (small / "config.toml").read_text()
    sets = ["train.objective=distill", f"train.teacher={json.dumps(str(teacher))}", "model.dim=8"]
    code, out, err = run_cli(train_args(tiny_faces, runs, *sets), capsys, monkeypatch)
    said = " ".join(err.split())
    assert code == 2 and "set objective.teacher_dim=32" in said and "epoch 1" not in out, said


def test_train_takes_the_modality_of_its_config_file(tmp_path, capsys):
    """`train --config RUN/config.toml` of a speaker run said "the command asked for 'face'":
    without --modality, the file's modality is the one trained. (A face run would refuse the
    speaker features' key; the speaker one gets as far as the range check of train.epochs.)"""
    config = tmp_path / "speaker.toml"
    config.write_text('modality = "speaker"\n')
    args = ["train", "--config", config, "--runs", tmp_path / "runs",
            "--set", "features.crop_seconds=1.0", "--set", "train.epochs=0"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "train.epochs" in err and "asked for" not in err, err
    code, _, err = run_cli([*args, "--modality", "face"], capsys)
    assert (
        code == 2
        and "config sets modality 'speaker' but the command asked for 'face'"
        in " ".join(err.split())
    )


def test_evaluate_after_the_training_folder_moved_says_so(tiny_faces, tmp_path, capsys):
    import shutil

    data = tmp_path / "faces"
    shutil.copytree(tiny_faces, data)
    args = train_args(data, tmp_path / "runs", "train.epochs=1", "model.backbone=tinycnn",
                      "features.image_size=16")  # fmt: skip
    assert run_cli(args, capsys)[0] == 0
    [run] = (tmp_path / "runs" / "face").iterdir()
    data.rename(tmp_path / "moved")
    code, _, err = run_cli(["evaluate", run, "--workers", "0"], capsys)
    assert (
        code == 2
        and f"the data folder the run trained on, '{data}', does not exist" in " ".join(err.split())
    )
    code, _, err = run_cli(
        ["evaluate", run, "--data", tmp_path / "moved", "--workers", "0"], capsys
    )
    assert code == 0, err


def test_a_train_refused_by_the_lock_leaves_the_other_trainers_folder(
    tiny_faces, tmp_path, capsys, monkeypatch
):
    """Two identical `train` commands at once: the one that finds the folder missing, then the
    lock taken by the other, used to delete the other's live folder (lock and log included)
    as an unstarted run of its own. It now touches nothing: no removal, no line in its log."""
    from metaemb.core.locks import RunLock
    from metaemb.core.train.engine import Trainer

    original, held = Trainer.run, []

    def racing(self):  # the other trainer creates the folder and locks it after this one looked
        self.dir.mkdir(parents=True)
        (self.dir / "config.toml").write_text("theirs\n")
        held.append(RunLock(self.dir).acquire())
        return original(self)

    monkeypatch.setattr(Trainer, "run", racing)
    code, _, err = run_cli(train_args(tiny_faces, tmp_path / "runs"), capsys, monkeypatch)
    [run] = held
    folder = run.path.parent
    assert code == 2 and "run in progress" in err, err
    assert (folder / "config.toml").read_text() == "theirs\n" and (folder / ".lock").exists()
    assert not (folder / "train.log").exists()
    run.release()


def test_an_unstarted_run_is_removed_only_when_nobody_holds_it(tmp_path):
    """A run folder a failed command created is removed, under the run's lock: not while
    another process trains in it, and never once it holds a trained epoch."""
    from metaemb.core.locks import RunLock
    from metaemb.core.runs import remove_unstarted_run as _remove_unstarted_run

    folder = tmp_path / "run-x"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.toml").write_text("x")
    other = RunLock(folder).acquire()
    _remove_unstarted_run(folder)
    assert (folder / "config.toml").exists() and (folder / "sub").is_dir()
    other.release()
    (folder / "metrics.jsonl").write_text("{}\n")
    _remove_unstarted_run(folder)
    assert (folder / "config.toml").exists()
    (folder / "metrics.jsonl").unlink()
    _remove_unstarted_run(folder)
    assert not folder.exists()


def test_an_unwritable_cache_is_named_with_its_setting_and_leaves_no_run(tmp_path, capsys,
                                                                         monkeypatch):  # fmt: skip
    """A read-only HOME on a compute node: 'cannot write the output …/.cache', which the user
    never chose, and a run folder left holding only train.log (H14 F4)."""
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("METAEMB_CACHE", str(tmp_path / "afile" / "cache"))
    code, _, err = run_cli(["train", "--runs", tmp_path / "runs", "--workers", "0",
                            "--set", "demo.identities=6"], capsys)  # fmt: skip
    message = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, err
    assert "cannot write the metaemb cache folder" in message
    assert "set METAEMB_CACHE (or --set data.cache_dir=DIR) to a writable folder" in message
    assert not list((tmp_path / "runs").glob("*/*"))  # no run folder left behind


def test_a_data_folder_whose_name_is_not_utf8_is_refused_by_name(tmp_path, capsys):
    """A Latin-1 folder name became the quoted string '"lat\\udce9face"' ('does not exist'),
    then writing the error to train.log raised UnicodeEncodeError: a traceback (H14 F5)."""
    import os

    data = tmp_path / os.fsdecode(b"lat\xe9face")
    data.mkdir()
    code, _, err = run_cli(["train", "--data", data, "--runs", tmp_path / "runs", "--workers",
                            "0"], capsys)  # fmt: skip
    message = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, err
    assert "lat\\xe9face' has a name that is not UTF-8 text" in message
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_standard_output_on_a_full_disk_is_named_and_leaves_no_run(tmp_path):
    """A SLURM --output file over quota: "cannot write the output '?'", and a run folder left
    holding only config.toml (H14 F12)."""
    import subprocess
    import sys

    data = demo_faces(tmp_path / "faces", identities=6, images_per_identity=3, image_size=16)
    cmd = [sys.executable, "-c", "from metaemb.cli import main; main()", "train", "--data",
           str(data), "--runs", str(tmp_path / "runs"), "--workers", "0", "--set",
           "train.epochs=1"]  # fmt: skip
    with open("/dev/full", "w") as full:
        done = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    err = " ".join(done.stderr.split())
    assert done.returncode == 2, err
    assert "cannot write the command's output '<standard output>': the disk is full" in err
    assert not list((tmp_path / "runs").glob("*/*"))


def test_the_same_data_given_another_way_names_the_existing_run(tmp_path, capsys):
    """`face` in an interactive run and `$PWD/face` in a batch script trained two runs from
    scratch without a word; the README said runs are keyed by the resolved configuration
    (H14 F9)."""
    data = demo_faces(tmp_path / "faces", identities=6, images_per_identity=3, image_size=16)
    (tmp_path / "link").symlink_to(data)
    common = ["--runs", tmp_path / "runs", "--workers", "0", "--set", "train.epochs=1", "--set",
              "features.image_size=16", "--set", "model.dim=8"]  # fmt: skip
    assert run_cli(["train", "--data", data, *common], capsys)[0] == 0
    code, _, err = run_cli(["train", "--data", tmp_path / "link", *common], capsys)
    assert code == 0, err
    said = " ".join(err.split())
    assert "trained this same configuration on the same data folder, given as --data" in said
    assert f"--data {data}" in said


def test_the_plugins_table_puts_each_hooks_components_on_its_row(capsys, monkeypatch):
    """register_commands (no components) shifted every later hook's components up a row, so
    the table read as if register_commands registered the demo data (P15 F8)."""
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(["plugins"], capsys, monkeypatch)
    assert code == 0
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 4 and cells[3].startswith("register_"):
            rows.setdefault(cells[3], []).append(cells[4])
    assert "commands: landmarks, unpack-bin" in rows["register_commands"]  # vision's (P16 F9)
    for hook, comps in rows.items():
        kind = hook.removeprefix("register_")
        assert all(not c or c.startswith(f"{kind}:") for c in comps), (hook, comps)


def test_small_slips_are_named(tiny_faces, tmp_path, capsys, monkeypatch):
    """A batch size above the training samples trained one batch a run without a word; a
    negative demo seed got numpy's words; leave-one-out metrics of a one-identity collection
    did not name the file (H16 F12)."""
    code, out, err = run_cli(train_args(tiny_faces, tmp_path / "runs", "train.batch_size=100000"),
                             capsys, monkeypatch)  # fmt: skip
    assert code == 0, err
    assert "note: train.batch_size 100000 is more than the" in " ".join(out.split())
    code, _, err = run_cli(["demo-data", "--out", tmp_path / "d", "--seed", "-5"], capsys,
                           monkeypatch)  # fmt: skip
    assert code == 2 and "--seed" in err and "greater than or equal to 0" in err, err
    [run] = list((tmp_path / "runs" / "face").iterdir())
    one = tmp_path / "one"
    (one / "solo").mkdir(parents=True)
    for f in sorted(tiny_faces.glob("*/*.png"))[:2]:
        (one / "solo" / f.name).write_bytes(f.read_bytes())
    coll = tmp_path / "one.pt"
    code, _, err = run_cli(["embed", run, one, "--out", coll, "--workers", "0"], capsys,
                           monkeypatch)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(["neighbours", coll], capsys, monkeypatch)
    assert code == 2 and f"'{coll}'" in " ".join(err.split()), err
