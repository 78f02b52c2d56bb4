"""`metaemb runs` lists runs with modality, components, epochs done and best metric (read back
from what training wrote), and every run keeps a plain-text train.log of what `train` printed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import helpers


def train(data: Path, runs: Path, *sets: str) -> None:
    args = ["train", "--data", data, "--runs", runs, "--workers", "0"]
    for s in ("train.batch_size=16", "model.dim=16", "features.image_size=32",
              "eval.max_targets=30", "eval.nontargets=30", f"data.cache_dir={runs / 'cache'}",
              *sets):  # fmt: skip
        args += ["--set", s]
    assert helpers.run_cli(args)[0] == 0


def test_runs_lists_trained_runs_and_train_log(tiny_face_run, capsys):
    data, first = tiny_face_run  # the shared 2-epoch softmax run (name "run"), and one more:
    runs = first.parent.parent
    train(data, runs, "train.epochs=1", "name=beta", "model.head=gme", "train.objective=gme-bxe",
          "model.dim=4")  # fmt: skip
    capsys.readouterr()
    code, text, err = helpers.run_cli(["runs", runs, "--json"], capsys)
    assert code == 0, err
    listed = {r["name"]: r for r in json.loads(text)}
    assert set(listed) == {"run", "beta"}
    for r in listed.values():
        run_dir = Path(r["path"])
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert r["epochs_done"] == len(records) == r["epochs"]
        best = min(records, key=lambda x: x["eer"])
        assert r["best_key"] == "eer" and r["best"] == best["eer"]
        assert r["best_epoch"] == best["epoch"] and r["modality"] == "face"
        assert r["status"] == "complete"
        log = (run_dir / "train.log").read_text()
        assert log.startswith("==== ") and "metaemb train" in log
        assert "\x1b[" not in log  # plain text, no colour codes
        for rec in records:
            assert f"epoch {rec['epoch']}: loss {rec['loss']:.4f}" in log
    assert "gme(4), gme-bxe" in listed["beta"]["components"]
    assert "linear(16), softmax" in listed["run"]["components"]
    code, text, _ = helpers.run_cli(["runs", runs], capsys)
    assert code == 0 and "beta" in text and "2/2" in text and "1/1" in text


def test_a_run_whose_config_toml_was_deleted_is_listed_as_damaged(tiny_face_run, tmp_path,
                                                                   capsys):  # fmt: skip
    """It vanished from `metaemb runs` ("no runs under …") though its checkpoints are there."""
    import shutil

    _, run = tiny_face_run
    copy = tmp_path / "face" / run.name
    shutil.copytree(run, copy)
    config = (copy / "config.toml").read_text()
    (copy / "config.toml").unlink()
    code, text, err = helpers.run_cli(["runs", tmp_path, "--json"], capsys)
    assert code == 0, err
    [listed] = json.loads(text)
    assert listed["status"] == "damaged (config.toml missing)" and listed["path"] == str(copy)
    # A hand-edited config.toml no longer hashes to the folder's name: said, not trusted silently.
    (copy / "config.toml").write_text(config.replace("epochs = 2", "epochs = 7"))
    code, text, err = helpers.run_cli(["runs", tmp_path, "--json"], capsys)
    [listed] = json.loads(text)
    assert listed["status"].endswith(
        "config.toml edited, a plugin's defaults changed, or an earlier metaemb hashed the "
        "configuration differently (the checkpoint's configuration counts)"
    )


def test_a_damaged_last_pt_points_at_an_intact_best_pt(tiny_face_run, tmp_path):
    """--fresh, the only fix offered, would replace the intact best.pt."""
    import shutil

    import pytest

    from metaemb.core.checkpoints import load_checkpoint
    from metaemb.core.errors import MetaembError

    _, run = tiny_face_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "last.pt").write_bytes((run / "last.pt").read_bytes()[:1000])
    with pytest.raises(MetaembError, match=r"best.pt' beside it is intact: evaluate or export it, "
                       r"and copy it away before re-running train with --fresh"):  # fmt: skip
        load_checkpoint(copy / "last.pt", expect_hash="x")
    (copy / "text.pt").write_text("hi\n")
    with pytest.raises(MetaembError, match=r"it is not a file written by torch\.save"):
        load_checkpoint(copy / "text.pt")


def test_a_partial_run_without_last_pt_is_not_called_resumable(tiny_face_run, tmp_path):
    """`metaemb runs` said "partial" (the same command resumes it) for two trained epochs whose
    last.pt was gone, which `train` refuses to resume (T1 F8)."""
    import shutil

    from metaemb.core.eval.catalog import read_run

    _, run = tiny_face_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = copy / "config.toml"
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 4", 1))  # 2 of 4 done
    assert read_run(copy).status.startswith("partial")
    (copy / "last.pt").unlink()
    assert read_run(copy).status.startswith("damaged (last.pt missing: train refuses to resume")


def test_an_emptied_config_toml_is_damaged_not_partial(tiny_face_run, tmp_path):
    """An empty config.toml read as a configuration of nothing: "partial", epochs 2/0 (H18 F3)."""
    import shutil

    from metaemb.core.eval.catalog import find_runs

    _, run = tiny_face_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "config.toml").write_text("")
    [info] = find_runs(tmp_path)
    assert info.status == "damaged (config.toml unreadable)"


def test_runs_of_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    code, _, err = helpers.run_cli(["runs", tmp_path / "nope"], capsys)
    assert code == 2 and "does not exist" in err


def test_warnings_raised_while_training_are_copied_to_train_log(tmp_path):
    """Warnings go to stderr, not through the console: the one explaining a 50 % EER (collapsed
    embeddings) was missing from train.log."""
    import warnings

    from metaemb.core.train.runlog import LoggingConsole

    out = LoggingConsole(file=open(os.devnull, "w"))  # noqa: SIM115
    out.open_log(tmp_path / "train.log", "metaemb train")
    with out.logging_warnings(), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("the embeddings collapsed", UserWarning, stacklevel=1)
        warnings.warn("a library's deprecation", DeprecationWarning, stacklevel=1)
    warnings.warn("after the block", UserWarning, stacklevel=1)
    out.close_log()
    log = (tmp_path / "train.log").read_text()
    assert "warning: the embeddings collapsed" in log
    assert "deprecation" not in log and "after the block" not in log


def test_a_model_worse_than_the_no_learning_baseline_is_named():
    """A trained model at 13 % EER beside a raw-input baseline at 0 % printed no word (the
    ratio line needs a non-zero baseline)."""
    import io

    from rich.console import Console

    from metaemb.core.config import resolve
    from metaemb.core.train.summary import print_summary

    history = [{"epoch": 1, "loss": 1.0, "eer": 0.13, "min_dcf_0.01": 0.5, "min_dcf_0.05": 0.4,
                "cllr": 0.9, "min_cllr": 0.4}]  # fmt: skip
    for base, warned in ((0.0, True), (0.2, False)):
        out = io.StringIO()
        print_summary(Console(file=out, width=200), resolve("face"), history,
                      {"name": "raw input", "eer": base}, [])  # fmt: skip
        assert ("is worse than the raw input baseline's" in out.getvalue()) is warned


def test_many_files_skipped_with_one_error_are_said_to_look_like_a_bug():
    """40 of 140 files skipped with one IndexError of a plugin's frontend read as '40 bad
    sample(s) skipped' beside a normal result (P22 F3): one cause on many files is named."""
    import io

    from rich.console import Console

    from metaemb.core.config import resolve
    from metaemb.core.train.summary import print_summary

    history = [{"epoch": 1, "loss": 1.0, "eer": 0.13, "min_dcf_0.01": 0.5, "min_dcf_0.05": 0.4,
                "cllr": 0.9, "min_cllr": 0.4}]  # fmt: skip
    bug = "'{p}': features 'minutiae' failed on it in prepare: IndexError: index 4 is out of bounds"
    same = [f"f{i:03d}/1.json\t" + bug.format(p=f"f{i:03d}/1.json") for i in range(40)]
    damaged = [f"f{i}.json\t'f{i}.json' is not valid JSON (line {i})" for i in range(3)]
    for skipped, samples, warned in ((same, 140, True), (damaged, 140, False),
                                     (same[:3], 1000, False)):  # fmt: skip
        out = io.StringIO()
        print_summary(Console(file=out, width=300), resolve("face"), history,
                      {"name": "raw input", "eer": 0.2}, skipped, samples)  # fmt: skip
        said = " ".join(out.getvalue().split())
        assert ("40 skipped files (29% of the data) failed the same way: '<file>': features "
                "'minutiae' failed on it in prepare: IndexError" in said) is warned, said  # fmt: skip
        assert ("more often a bug in a component" in said) is warned


def test_runs_says_training_now_damaged_without_records_and_how_deep_it_looks(
    tiny_face_run, tmp_path, capsys
):
    """A run whose trainer holds its lock was 'damaged (best.pt and last.pt unreadable)' before
    its first checkpoint; a truncated last.pt with metrics.jsonl lost read 'not started'; runs
    deeper than the search said only 'no runs under'."""
    import os
    import shutil

    from metaemb.core.locks import RunLock

    _, run = tiny_face_run
    copy = tmp_path / "face" / run.name
    shutil.copytree(run, copy)
    (copy / "metrics.jsonl").write_text("")
    (copy / "last.pt").write_bytes((run / "last.pt").read_bytes()[:1000])
    code, text, _ = helpers.run_cli(["runs", tmp_path, "--json"], capsys)
    [listed] = json.loads(text)
    assert code == 0 and listed["status"].startswith("damaged (last.pt unreadable)"), listed
    for name in ("best.pt", "last.pt"):
        (copy / name).unlink()
    (copy / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
    (copy / ".lock").write_text(f"{os.getppid()}\n")  # a killed trainer's, its pid reused
    code, text, _ = helpers.run_cli(["runs", tmp_path, "--json"], capsys)
    [listed] = json.loads(text)
    assert not listed["status"].startswith("training now"), listed
    lock = RunLock(copy).acquire()  # a trainer holds it (the kernel says so, not the pid)
    code, text, _ = helpers.run_cli(["runs", tmp_path, "--json"], capsys)
    [listed] = json.loads(text)
    lock.release()
    assert listed["status"].startswith(f"training now (pid {os.getpid()})"), listed
    deep = tmp_path / "deep"
    shutil.copytree(run, deep / "a" / "b" / "c" / "d" / "e" / "face" / run.name)
    code, text, _ = helpers.run_cli(["runs", deep], capsys)
    assert code == 0 and "no runs within 6 folder levels" in " ".join(text.split())


def test_an_epoch_recorded_but_never_checkpointed_is_not_counted(tiny_face_run, tmp_path,
                                                                 capsys):  # fmt: skip
    """An epoch appends its metrics line before saving last.pt; when that save fails (a full
    disk) or is killed, `runs` said "2/3" while training resumes after epoch 1."""
    import shutil

    _, run = tiny_face_run
    copy = tmp_path / "face" / run.name
    shutil.copytree(run, copy)  # copies times too: last.pt newer than metrics.jsonl
    metrics = copy / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    extra = {**json.loads(lines[-1]), "epoch": len(lines) + 1, "eer": 0.0}
    metrics.write_text("\n".join([*lines, json.dumps(extra)]) + "\n")  # written after last.pt
    code, text, err = helpers.run_cli(["runs", tmp_path, "--json"], capsys)
    assert code == 0, err
    [listed] = json.loads(text)
    assert listed["epochs_done"] == len(lines) and listed["best"] != 0.0
    assert f"training resumes after epoch {len(lines)}" in listed["status"]


def test_piped_output_keeps_long_paths_whole(tiny_face_run, tmp_path, capsys, monkeypatch):
    """In a batch job's log rich folded lines at 80 columns, splitting a run's path, and the
    runs table cut its path column to '/tmp/…' (H14 F2, F3)."""
    import shutil

    from metaemb.commands.console import console_options

    monkeypatch.delenv("COLUMNS", raising=False)
    assert console_options()["soft_wrap"] is True  # captured output is not a terminal
    _, run = tiny_face_run
    deep = tmp_path / ("a_long_folder_name_for_cluster_scratch_" * 3) / "job_12345678"
    shutil.copytree(run, deep / "face" / run.name)
    import metaemb.commands.runs as runs_command

    monkeypatch.setattr(runs_command, "console", runs_command.make_console())
    code, text, err = helpers.run_cli(["runs", deep], capsys)
    assert code == 0, err
    assert str(deep / "face" / run.name) in text.splitlines()[-2]


def test_command_warnings_go_to_stderr_and_into_train_log(tmp_path, capsys):
    """A batch job keeping `2> job.err` missed train's and evaluate's warnings, printed among
    the tables on stdout (H14 F10). The run log keeps them too."""
    from metaemb.commands.console import make_console
    from metaemb.core.train.runlog import LoggingConsole

    console = make_console()
    console.print("[yellow]warning:[/] something to know")
    console.print("a table line")
    out, err = capsys.readouterr()
    assert "warning: something to know" in err and "warning" not in out
    assert "a table line" in out
    logging = LoggingConsole(warnings_to=make_console(stderr=True))
    logging.open_log(tmp_path / "train.log", "metaemb train")
    logging.print("[yellow]warning:[/] the run is odd")
    logging.close_log()
    out, err = capsys.readouterr()
    assert "warning: the run is odd" in err and not out
    assert "warning: the run is odd" in (tmp_path / "train.log").read_text()


def test_a_teacher_run_without_config_toml_keeps_its_modality(tiny_face_run, tmp_path):
    """distill fell back to the image modality for a teacher whose config.toml was lost, and
    blamed the user's --set keys; the checkpoint keeps the modality too (H18 F10)."""
    import shutil

    from metaemb.commands.train import _run_modality

    _, run = tiny_face_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "config.toml").unlink()
    assert _run_modality(copy) == "face"
    assert _run_modality(tmp_path / "nothing") is None


def test_a_run_reached_through_links_is_listed_once(tiny_face_run, tmp_path, capsys):
    """A `latest` link listed the run twice, a link to `..` every run three times (H19 F9): each
    run is listed once, by its real path."""
    import shutil

    _, run = tiny_face_run
    copy = tmp_path / "face" / run.name
    shutil.copytree(run, copy)
    (tmp_path / "face" / "latest").symlink_to(run.name)
    (tmp_path / "face" / "up").symlink_to("..")
    code, text, err = helpers.run_cli(["runs", tmp_path, "--json"], capsys)
    assert code == 0, err
    assert [r["path"] for r in json.loads(text)] == [str(copy)]
    # a link in a folder that sorts first (runs/best/face) does not name it (R7 F3)
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "face").symlink_to(copy)
    code, text, err = helpers.run_cli(["runs", tmp_path, "--json"], capsys)
    assert code == 0, err
    assert [r["path"] for r in json.loads(text)] == [str(copy)]
