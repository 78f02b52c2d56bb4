"""Run directories and checkpoints: atomic writes, safe loading, refusal of foreign checkpoints."""

from __future__ import annotations

import os

import pytest
import torch

import metaemb
from metaemb.core import checkpoints, files, runs
from metaemb.core.config import resolve
from metaemb.core.errors import MetaembError


def test_run_dir_is_keyed_by_config_hash(tmp_path):
    a = resolve("face", sets=["train.epochs=2"])
    b = resolve("face", sets=["train.epochs=3"])
    assert runs.run_dir(tmp_path, a) != runs.run_dir(tmp_path, b)
    assert runs.run_dir(tmp_path, a).name == f"run-{a.hash()}"
    assert runs.run_dir(tmp_path, a).parent.name == "face"


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "last.pt"
    state = {
        "model": {"w": torch.randn(3)},
        "epoch": 2,
        "config_hash": "abcd1234",
        "rng": torch.get_rng_state(),
    }
    checkpoints.save_checkpoint(path, state)
    loaded = checkpoints.load_checkpoint(path, expect_hash="abcd1234")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 2
    assert loaded["metaemb_version"] == metaemb.__version__
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_foreign_config_and_version_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoints.save_checkpoint(path, {"config_hash": "aaaaaaaa"})
    with pytest.raises(MetaembError, match="belongs to configuration aaaaaaaa"):
        checkpoints.load_checkpoint(path, expect_hash="bbbbbbbb")
    monkeypatch.setattr(metaemb, "__version__", "7.0.0")
    with pytest.raises(MetaembError, match="cannot load it"):
        checkpoints.load_checkpoint(path)


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(MetaembError, match="cannot be read"):
        checkpoints.load_checkpoint(path)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9])
def test_every_truncation_is_called_truncated(tmp_path, fraction):
    """Cut at some lengths, torch.load raised OSError 'Invalid argument', shown as it was for
    a truncated gallery (H16 F6)."""
    import io

    from metaemb.core.checkpoints import load_error_reason

    buf = io.BytesIO()
    torch.save({"a": torch.zeros(1000), "b": ["x"] * 50, "c": torch.ones(1000)}, buf)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * fraction)])
    with pytest.raises(Exception) as err:
        torch.load(cut, weights_only=True)
    assert "truncated or damaged" in load_error_reason(err.value)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoints.save_checkpoint(path, {"epoch": 1})

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert checkpoints.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_text_write(tmp_path):
    p = tmp_path / "sub" / "x.txt"
    files.atomic_write_text(p, "hello")
    assert p.read_text() == "hello"
    assert os.stat(p).st_mode & 0o777 == files.FILE_MODE  # like open(), not mkstemp's 0600


def test_temps_left_by_killed_writers_are_removed_at_the_next_write(tmp_path):
    """A gallery or an export killed before its rename leaves `.<name>.<pid>.….tmp`; the next
    write of that file removes those of dead processes, not a live writer's, not a fresh one,
    and not those of other files."""
    import subprocess
    import sys
    import time

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    old = time.time() - 3600
    names = {
        "killed": f".g.pt.{dead}.ab12.tmp",
        "live": f".g.pt.{os.getpid()}.cd34.tmp",
        "fresh": f".g.pt.{dead}.ef56.tmp",
        "other file": f".h.pt.{dead}.gh78.tmp",
        "a sibling g.pt.<n>'s live temp": f".g.pt.{dead}.{os.getpid()}.zz.tmp",
        "older metaemb, an hour": ".g.pt.x1y2z3.tmp",
        "older metaemb, two days": ".g.pt.q9w8e7.tmp",
    }
    for what, name in names.items():
        (tmp_path / name).write_bytes(b"x")
        age = {"fresh": 0, "older metaemb, two days": 2 * 86400}.get(what, 3600)
        os.utime(tmp_path / name, (old, time.time() - age))
    files.atomic_write_bytes(tmp_path / "g.pt", b"new")
    left = {what for what, name in names.items() if (tmp_path / name).exists()}
    assert left == {"live", "fresh", "other file", "older metaemb, an hour",
                    "a sibling g.pt.<n>'s live temp"}  # fmt: skip
    assert (tmp_path / "g.pt").read_bytes() == b"new"


def test_a_set_cut_short_among_its_renames_lacks_its_marker_rather_than_mixing(
    tmp_path, monkeypatch
):
    """written_together renames the set in order, the last file (metrics.json) last, and
    removes the previous marker first: a kill among the renames leaves new files without a
    marker, never new scores beside old metrics."""
    for name, text in (("scores.txt", "old"), ("metrics.json", "old")):
        (tmp_path / name).write_text(text)
    real, calls = os.replace, []

    def killed_after_one(src, dst):
        if calls:
            raise KeyboardInterrupt  # the process dies here
        calls.append(dst)
        real(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_one)
    with pytest.raises(KeyboardInterrupt), files.written_together():
        files.atomic_write_text(tmp_path / "scores.txt", "new")
        files.atomic_write_text(tmp_path / "metrics.json", "new")
    assert (tmp_path / "scores.txt").read_text() == "new"
    assert not (tmp_path / "metrics.json").exists()
    # An earlier set's file queued for removal (drop_earlier_set) that the new set writes again
    # is replaced by its rename, not removed before it: killed at the first rename, the earlier
    # file is still there (it was unlinked first, leaving only hidden temps; H24 F1).
    for name in ("scores.txt", "det.png", "metrics.json"):
        (tmp_path / name).write_text("old")
    calls.append("killed at the first rename")
    with pytest.raises(KeyboardInterrupt), files.written_together():
        for name in ("scores.txt", "det.png"):
            files.remove_with_set(tmp_path / name)
        files.atomic_write_text(tmp_path / "scores.txt", "new")
        files.atomic_write_text(tmp_path / "metrics.json", "new")
    assert (tmp_path / "scores.txt").read_text() == "old"
    assert not (tmp_path / "metrics.json").exists()


def test_a_long_but_legal_name_is_written(tmp_path):
    """A 249-byte name is legal (255 is the limit); its temp `.NAME.PID.XXXX.tmp` was not, so
    the write was refused as 'too long'."""
    path = tmp_path / ("e" * 246 + ".pt")
    files.atomic_write_bytes(path, b"x")
    files.atomic_write_bytes(path, b"y")
    assert path.read_bytes() == b"y" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_an_unreadable_checkpoint_points_at_what_to_give_instead(tmp_path):
    """A truncated best.pt said 'use best.pt or last.pt or retrain' with last.pt intact
    beside it; a config.toml given as the run was told to retrain (H16 F11, D2 F9)."""
    checkpoints.save_checkpoint(tmp_path / "last.pt", {"epoch": 2})
    (tmp_path / "best.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:200])
    with pytest.raises(MetaembError, match=r"'.*last.pt' beside it is intact: give that file"):
        checkpoints.load_checkpoint(tmp_path / "best.pt")
    (tmp_path / "config.toml").write_text("name = 'x'\n")
    with pytest.raises(MetaembError, match=r"Give the run directory or its best.pt\.$"):
        checkpoints.load_checkpoint(tmp_path / "config.toml")


def test_option_types_are_listed_as_a_script_reads_them():
    from typing import Literal

    from metaemb.commands.listing import _typename

    assert _typename(bool | Literal["mean", "level"]) == "bool | 'mean' | 'level'"
    assert _typename(list[int]) == "list[int]" and _typename(float) == "float"


def test_resume_trims_metrics_lines_that_are_not_whole_records(tmp_path):
    """A hand-edited line `{"epoch": null}` crashed a resume with a TypeError traceback, while
    `metaemb runs` passed over it: both read metrics.jsonl by one rule now (Q1 F23)."""
    import json

    from metaemb.core.runs import epoch_records, trim_jsonl

    path = tmp_path / "metrics.jsonl"
    good = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}, {"epoch": 3, "loss": 1.0}]
    odd = [{"epoch": None}, {"epoch": "x"}, {"note": "no epoch"}, {"epoch": True},
           {"epoch": 2.5}, [1, 2], {"epoch": 0}]  # fmt: skip
    lines = [json.dumps(r) for r in (good[0], *odd, good[1], good[2])] + ['{"epoch": 4, "lo']
    path.write_text("\n".join(lines) + "\n")
    assert [r["epoch"] for r in epoch_records(path)] == [1, 2, 3]
    trim_jsonl(path, 2)  # whole lines that are no epoch's record are the user's: kept (R5-7)
    assert [json.loads(x) for x in path.read_text().splitlines()] == [good[0], *odd, good[1]]


def test_the_same_files_named_as_other_identities_are_told_from_changed_files():
    """A sample folder whose identity_of changed between processes (a set's order, hash())
    was reported as "the data folder changed", with the same counts (P17 F3)."""
    from metaemb.core.plugin.sample_folder import Sample
    from metaemb.core.train.checkpointer import data_change, fingerprints

    class Folder(list):  # the samples of a folder, with what the fingerprints read
        def __init__(self, names):
            super().__init__(Sample(f"x/{i}.npy", n, 0) for i, n in enumerate(names))
            self.samples, self.identities = list(self), sorted(set(names))
            self.num_identities = len(self.identities)

    trained = Folder(["a", "a", "b"])
    state = fingerprints(trained, trained, 2)
    assert data_change(state, trained) == ""
    renamed = Folder(["a", "b", "b"])
    assert "holds the same files, but" in data_change(state, renamed)
    assert "identity_of deterministic" in data_change(state, renamed)
    grown = Folder(["a", "a", "b", "c"])
    assert "files were added, removed or renamed" in data_change(state, grown)
    assert data_change({}, grown) == ""  # a checkpoint from before fingerprints


def test_fresh_says_which_exports_and_galleries_belong_to_the_earlier_weights(tmp_path):
    """`train --fresh` left `best.onnx` and a gallery made from the replaced best.pt in the run
    folder without a word: a deployment picking up RUN/best.onnx took the old weights (H21 F6)."""
    import warnings

    import torch

    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.stamp import ModelStamp
    from metaemb.core.train.checkpointer import Checkpointer

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"weights")
    (run / "best.onnx").write_bytes(b"graph")
    (run / "best.onnx.json").write_text("{}")
    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=4))
    g.add("a", torch.randn(2, 4))
    g.save(run / "staff.pt")
    (run / "notes.txt").write_text("mine")
    with pytest.warns(UserWarning, match=r"--fresh keeps .*'best.onnx \(an export\)', "
                      r"'staff.pt \(a gallery\)'"):  # fmt: skip
        Checkpointer(run, "h").prepare(fresh=True)
    assert not (run / "best.pt").exists() and (run / "best.onnx").exists()
    with warnings.catch_warnings():  # nothing of an earlier training: nothing said
        warnings.simplefilter("error")
        Checkpointer(run, "h").prepare(fresh=True)


def test_a_locked_output_with_a_long_but_legal_name_is_written(tmp_path):
    """A gallery named with 250 bytes was refused as 'too long' although legal: its lock
    `.<name>.lock` was the name over 255 bytes (H24 F2). Such locks take a digest name, as
    temps do; a name really over the limit is said with its size."""
    from metaemb.core.locks import FileLock
    from metaemb.core.paths import output_error

    path = tmp_path / ("g" * 247 + ".pt")
    with FileLock(path, "gallery"):
        files.atomic_write_bytes(path, b"x")
    assert path.read_bytes() == b"x"
    too_long = tmp_path / ("x" * 248 + ".onnx.json")
    try:
        too_long.write_text("")
    except OSError as exc:
        said = str(output_error(exc, too_long, "export sidecar"))
    assert "this one is 258 bytes; file systems allow 255 per name" in said


def test_the_write_probes_of_killed_processes_are_swept(tmp_path):
    """A kill during the start-up write check left `.metaemb-probe.*.tmp` (4 KiB) beside a
    gallery for good, one per kill: nothing matched it (H24 F4). Probes carry their pid now
    and are swept as temps are: a dead writer's after a minute, a pid-less one after a day."""
    import os
    import subprocess
    import sys
    import time

    from metaemb.core.paths import ensure_writable

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = proc.pid
    stale = {f".metaemb-probe.{dead}.abc123.tmp": 120, ".metaemb-probe.old_one.tmp": 2 * 86400}
    alive = {f".metaemb-probe.{os.getpid()}.live.tmp": 120, f".metaemb-probe.{dead}.new.tmp": 5}
    for name, age in {**stale, **alive}.items():
        (tmp_path / name).write_bytes(b"\0" * 4096)
        os.utime(tmp_path / name, (time.time() - age, time.time() - age))
    ensure_writable(tmp_path / "g.pt", "gallery file")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(alive)


def test_a_lock_keeps_the_name_every_metaemb_gives_it_where_it_fits(tmp_path):
    """Locks of 201–249-byte names took a digest name, which an older metaemb sharing the
    gallery does not take: two locks for one file (R12 F8). The digest is for 250+ bytes."""
    from metaemb.core.locks import lock_name

    assert lock_name(tmp_path / ("g" * 246 + ".pt")) == "." + "g" * 246 + ".pt.lock"
    long = lock_name(tmp_path / ("g" * 247 + ".pt"))
    assert long.startswith(".metaemb-") and long.endswith(".lock")


def test_a_demo_generator_out_of_disk_is_said_to_be_out_of_disk(tmp_path, monkeypatch):
    """Writing a demo dataset onto a full disk said 'OSError: [Errno 28]' in a build error, or
    only 'LibsndfileError: System error.' for voices (H24 F8): the disk is named as full."""
    import dataclasses
    import errno
    import shutil

    from metaemb.core.errors import OutputError
    from metaemb.core.plugin.components import build
    from metaemb.core.plugin.manager import registry

    reg = registry("demo_data")

    def with_factory(factory):
        monkeypatch.setitem(reg._entries, "face", dataclasses.replace(reg.entry("face"),
                                                                       factory=factory))  # fmt: skip

    def full(out=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    with_factory(full)
    with pytest.raises(OutputError, match=r"the disk holding '.*demo' is full.*METAEMB_CACHE"):
        build("demo_data", "face", {}, out=tmp_path / "demo")

    def no_errno(out=None):  # libsndfile's "System error.": no errno, a disk with no room left
        raise RuntimeError("System error.")

    with_factory(no_errno)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10))
    with pytest.raises(OutputError, match="is full"):
        build("demo_data", "face", {}, out=tmp_path / "demo")
    monkeypatch.setattr(shutil, "disk_usage", real)  # room enough: the error as it is
    with pytest.raises(Exception, match="System error") as caught:
        build("demo_data", "face", {}, out=tmp_path / "demo")
    assert not isinstance(caught.value, OutputError)
