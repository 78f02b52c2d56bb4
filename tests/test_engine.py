"""The engine's run-folder promises, driven through its public callbacks (core/train/callbacks.py):

- one trainer per run folder (a live lock refuses with "run in progress (pid N)", exit 2; a stale
  lock of a dead process is taken over);
- crash-safe first checkpoint: temp files of interrupted writes are removed, metrics.jsonl is
  trimmed to the checkpoint's epoch on resume and cleared on a restart with no checkpoint;
- `--fresh` reproduces a run bit for bit, and so does a restart after a crash before the first
  checkpoint (the cached baseline must not change the training random streams);
- train.epochs ≤ 0 is refused;
- kill-anywhere property: a training interrupted at random points and resumed each time ends with
  exactly the weights, optimizer state and metrics of an uninterrupted one.

A tiny CNN (the example plugin's `tinycnn`, installed with the test extra) on 16-pixel faces keeps
each training at a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import demo_faces, run_cli
from rich.console import Console

import metaemb
from metaemb.core.checkpoints import load_checkpoint
from metaemb.core.config import resolve
from metaemb.core.errors import ConfigError
from metaemb.core.locks import RunLock
from metaemb.core.train.callbacks import Callback
from metaemb.core.train.engine import Trainer

SETTINGS = [
    "model.backbone=tinycnn",
    "backbone.width=4",
    "features.image_size=16",
    "model.dim=8",
    "train.epochs=3",
    "train.batch_size=8",
    "eval.max_targets=20",
    "eval.nontargets=20",
]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return demo_faces(tmp_path_factory.mktemp("data") / "faces", 8, 4, image_size=16)


def config(data: Path, *extra: str):
    return resolve("face", sets=[f'data.root="{data}"', *SETTINGS, *extra])


def trainer(
    data: Path, runs: Path, *extra: str, fresh: bool = False, callbacks=(), workers: int = 0
) -> Trainer:
    return Trainer(config(data, *extra), runs_root=runs, device="cpu", fresh=fresh,
                   workers=workers, console=Console(quiet=True), callbacks=callbacks)  # fmt: skip


def cli_args(data: Path, runs: Path, *extra: str) -> list[str]:
    args = ["train", "--modality", "face", "--data", data, "--runs", runs, "--workers", "0"]
    for s in [*SETTINGS, *extra]:
        args += ["--set", s]
    return args


def epochs_in(run: Path) -> list[int]:
    lines = (
        (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    )
    return [json.loads(x)["epoch"] for x in lines]


def same_state(a: dict, b: dict) -> bool:
    """Equal tensors (bit for bit) in model, classifier, optimizer state; equal epoch/step/best."""
    for key in ("model", "classifier"):
        if a[key].keys() != b[key].keys():
            return False
        if not all(torch.equal(a[key][k], b[key][k]) for k in a[key]):
            return False
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for k in sa:
        for name, v in sa[k].items():
            w = sb[k][name]
            if isinstance(v, torch.Tensor) and not torch.equal(v, w):
                return False
    return (a["epoch"], a["step"], a["best"]) == (b["epoch"], b["step"], b["best"])


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in the engine catches it."""


class KillAt(Callback):
    """Interrupts the training at its n-th event (a step or an epoch end, 1-based)."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def _tick(self) -> None:
        self.seen += 1
        if self.seen == self.n:
            raise Killed

    def on_step(self, trainer, step, loss):
        self._tick()

    def on_epoch_end(self, trainer, epoch, record):
        self._tick()


class KillInEpoch2(Callback):
    """Interrupts the training as its second epoch starts (epoch 1 checkpointed)."""

    def on_epoch_start(self, trainer, epoch):
        if epoch == 1:
            raise Killed


# -- the lock ----------------------------------------------------------------------------------
def test_a_second_trainer_on_the_same_run_folder_exits_2(faces, tmp_path, capsys):
    run = trainer(faces, tmp_path).dir
    with RunLock(run):
        code, out, err = run_cli(cli_args(faces, tmp_path), capsys)
    assert code == 2, out + err
    assert f"run in progress (pid {os.getpid()})" in " ".join(err.split())
    assert not (run / "metrics.jsonl").exists() and not (run / "last.pt").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(faces, tmp_path):
    t = trainer(faces, tmp_path, "train.epochs=1")
    t.dir.mkdir(parents=True)
    (t.dir / ".lock").write_text(f"{dead_pid()}\n")
    t.run()
    assert epochs_in(t.dir) == [1]
    assert not (t.dir / ".lock").exists(), "released at the end"


def test_run_lock_refuses_while_held_and_frees_on_release(tmp_path):
    from metaemb.core.locks import RunInProgress

    lock = RunLock(tmp_path).acquire()
    with pytest.raises(RunInProgress, match=rf"run in progress \(pid {os.getpid()}\)"):
        RunLock(tmp_path).acquire()
    lock.release()
    RunLock(tmp_path).acquire().release()


# -- crash-safe files -----------------------------------------------------------------------------
def test_restart_without_checkpoint_clears_leftovers(faces, tmp_path):
    """A first attempt killed before (or while) writing its first checkpoint left a metrics line,
    a temp file and a lock; the restart starts clean and records each epoch once."""
    t = trainer(faces, tmp_path, "train.epochs=1")
    t.dir.mkdir(parents=True)
    (t.dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": -1.0}) + "\n")
    (t.dir / ".last.pt.x1y2z3.tmp").write_bytes(b"\0" * 1000)
    (t.dir / ".lock").write_text(f"{dead_pid()}\n")
    t.run()
    assert epochs_in(t.dir) == [1]
    assert json.loads((t.dir / "metrics.jsonl").read_text())["loss"] > 0
    assert not list(t.dir.glob(".*.tmp"))


def test_resume_trims_metrics_to_the_checkpoint(faces, tmp_path):
    """Killed after appending epoch 2's metrics but before last.pt was renamed: the resumed run
    drops that line and records epoch 2 once, for real."""

    with pytest.raises(Killed):
        trainer(faces, tmp_path, callbacks=[KillInEpoch2()]).run()
    run = trainer(faces, tmp_path).dir
    assert epochs_in(run) == [1]
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "loss": -1.0}) + "\n")
        f.write('{"epoch": 3, "lo')  # and a line torn by a kill in the middle of an append
    (run / ".last.pt.abc.tmp").write_bytes(b"half a checkpoint")
    trainer(faces, tmp_path).run()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(r["loss"] > 0 for r in records)
    assert not list(run.glob(".*.tmp"))


def test_a_record_torn_by_a_full_disk_is_written_back_from_the_checkpoint(faces, tmp_path):
    """Epoch 1's line torn (a full disk or a power cut during the append; a kill cannot tear
    it) was dropped on resume for good: plot drew the run without that epoch, although last.pt
    holds it (H24 F9). The resume writes it back from last.pt's history."""
    with pytest.raises(Killed):
        trainer(faces, tmp_path, callbacks=[KillInEpoch2()]).run()
    run = trainer(faces, tmp_path).dir
    whole = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(whole[:40])  # epoch 1's record torn
    trainer(faces, tmp_path).run()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[0] == json.loads(whole.splitlines()[0])  # the very record, from last.pt


# -- reproducibility ------------------------------------------------------------------------------
def test_fresh_reproduces_the_run_bit_for_bit(faces, tmp_path):
    first = trainer(faces, tmp_path, "train.epochs=2")
    first.run()
    a = load_checkpoint(first.dir / "last.pt")
    metrics_a = (first.dir / "metrics.jsonl").read_text()
    assert (first.dir / "baseline.json").exists()
    again = trainer(faces, tmp_path, "train.epochs=2", fresh=True)
    again.run()
    b = load_checkpoint(again.dir / "last.pt")
    assert same_state(a, b)
    strip = [{k: v for k, v in json.loads(x).items() if k not in ("seconds", "samples_per_s")}
             for x in metrics_a.splitlines()]  # fmt: skip
    again_lines = (again.dir / "metrics.jsonl").read_text().splitlines()
    assert strip == [
        {k: v for k, v in json.loads(x).items() if k not in ("seconds", "samples_per_s")}
        for x in again_lines
    ]


def test_a_cached_baseline_does_not_change_the_training(faces, tmp_path):
    """The issue's case: a restart that finds baseline.json (written by an attempt that died
    before its first checkpoint) must train exactly as a run that computed it."""
    ref = trainer(faces, tmp_path / "a", "train.epochs=1")
    ref.run()
    with pytest.raises(Killed):
        trainer(faces, tmp_path / "b", "train.epochs=1", callbacks=[KillAt(1)]).run()
    again = trainer(faces, tmp_path / "b", "train.epochs=1")
    assert (again.dir / "baseline.json").exists() and not (again.dir / "last.pt").exists()
    again.run()
    assert same_state(load_checkpoint(ref.dir / "last.pt"), load_checkpoint(again.dir / "last.pt"))


def test_best_pt_is_the_model_and_last_pt_the_resume_point(tiny_face_run):
    """best.pt leaves out the optimizer and scheduler (only a resume needs them) and keeps the
    rest of what last.pt holds."""
    _, run = tiny_face_run
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    resume_only = {"optimizer", "scheduler"}
    assert resume_only <= set(last) and set(best) == set(last) - resume_only
    assert best["model"].keys() == last["model"].keys()
    assert (run / "best.pt").stat().st_size < 0.6 * (run / "last.pt").stat().st_size


def test_features_that_prepare_other_inputs_than_at_training_are_warned_about(
    tiny_face_run, tmp_path
):
    """A plugin that changed a default of its features (here: the saved spec says 40 px, today's
    features give another size) would move every score silently; loading names the change.
    Keys the saved spec lacks (added by a later version) are not compared."""
    import warnings

    import torch

    from metaemb.core.deploy.loading import load_run

    _, run = tiny_face_run
    state = load_checkpoint(run / "best.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_run(run / "best.pt")  # unchanged: no warning
    size = state["input_spec"]["image_size"]
    state["input_spec"] = {**state["input_spec"], "image_size": size + 8}
    state["input_spec"].pop("color")  # an older spec without this key
    torch.save(state, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match=rf"features 'image' .*image_size {size + 8} → {size}\)"):
        load_run(tmp_path / "old.pt")


# -- refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize("epochs", [0, -2])
def test_no_epochs_is_refused(faces, tmp_path, capsys, epochs):
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        trainer(faces, tmp_path, f"train.epochs={epochs}")
    code, _, err = run_cli(cli_args(faces, tmp_path, f"train.epochs={epochs}"), capsys)
    assert code == 2 and "train.epochs" in err
    assert not list(tmp_path.rglob("*.pt"))


# -- callbacks ------------------------------------------------------------------------------------
def test_callbacks_see_every_event_in_order_and_can_stop(faces, tmp_path):
    events: list[tuple] = []

    class Log(Callback):
        def on_setup(self, t):
            events.append(("setup",))

        def on_train_start(self, t):
            events.append(("start", t.start_epoch, t.resumed))

        def on_epoch_start(self, t, epoch):
            events.append(("epoch", epoch))

        def on_step(self, t, step, loss):
            events.append(("step", step))
            assert loss > 0 and t.optimizer.param_groups[0]["lr"] > 0

        def on_epoch_end(self, t, epoch, record):
            events.append(("end", epoch, record["epoch"]))
            if epoch == 1:
                t.request_stop()

        def on_train_end(self, t, summary):
            events.append(("done", summary["epochs"]))

    t = trainer(faces, tmp_path, callbacks=[Log()])
    t.run()
    n = t.steps_per_epoch
    want = [("setup",), ("start", 0, False)]
    for e in range(2):
        want += [("epoch", e), *[("step", e * n + i + 1) for i in range(n)], ("end", e, e + 1)]
    assert events == [*want, ("done", 2)]
    assert epochs_in(t.dir) == [1, 2]  # stopped after epoch 2 of 3: resumable
    events.clear()
    trainer(faces, tmp_path, callbacks=[Log()]).run()
    assert events[1] == ("start", 2, True) and events[-1] == ("done", 3)


# -- kill anywhere, resume, same result -------------------------------------------------------------
HARD_PAIRS = ("train.sampler=hard-pairs", "train.objective=contrastive")


def kill_loop(
    faces: Path,
    runs: Path,
    seed: int,
    kills: int,
    extra: tuple = (),
    workers: int = 0,
    points: Callable[[int], list[int]] | None = None,
) -> None:
    """Train with `kills` interruptions at random events (each may leave a stale temp file and
    a dead process's lock, as SIGKILL would), resuming after each; then compare with a reference.
    `points(steps per epoch)` fixes the events instead (1-based: steps and epoch ends)."""
    reference = trainer(faces, runs / "reference", *extra, workers=workers)
    reference.run()
    want = load_checkpoint(reference.dir / "last.pt")
    events = 3 * (reference.steps_per_epoch + 1)
    rng = random.Random(seed)
    if points is None:
        points = sorted(rng.sample(range(1, events), kills))
    else:
        points = points(reference.steps_per_epoch)
    done = 0
    run = trainer(faces, runs / "killed", *extra).dir
    for point in points:
        with pytest.raises(Killed):
            trainer(
                faces, runs / "killed", *extra, workers=workers, callbacks=[KillAt(point - done)]
            ).run()
        # the epochs already completed are then replayed from last.pt; count from there
        done = sum(1 for _ in epochs_in(run)) * (reference.steps_per_epoch + 1)
        if rng.random() < 0.5:
            (run / f".last.pt.k{point}.tmp").write_bytes(os.urandom(64))
        if rng.random() < 0.5:
            (run / ".lock").write_text(f"{dead_pid()}\n")
        assert epochs_in(run) == list(range(1, len(epochs_in(run)) + 1))
    trainer(faces, runs / "killed", *extra, workers=workers).run()
    got = load_checkpoint(run / "last.pt")
    assert same_state(want, got), f"seed {seed}: kills at events {points} changed the result"
    assert epochs_in(run) == [1, 2, 3]
    assert not list(run.glob(".*.tmp"))


def test_killed_and_resumed_training_matches_an_uninterrupted_one(faces, tmp_path):
    """CI-sized: one seed, two kills, with the hard-pair sampler, whose mined pairs are not in
    the checkpoint and must be mined again on resume."""
    kill_loop(faces, tmp_path, seed=7, kills=2, extra=HARD_PAIRS)


def test_resume_with_persistent_workers_matches_an_uninterrupted_run(faces, tmp_path):
    """Two persistent DataLoader workers (kept across epochs, reseeded from the run seed, epoch
    and worker id at each epoch's start): killed in the middle of epoch 2, then right after
    epoch 2's checkpoint, the run resumes with new workers at epochs 2 and 3 and still ends
    with the weights of an uninterrupted run whose workers lived through all three epochs (the
    random flips and shifts of the face augmentation are drawn in the workers)."""
    kill_loop(faces, tmp_path, seed=0, kills=2, workers=2, points=lambda s: [s + 3, 2 * s + 2])


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), HARD_PAIRS], ids=["softmax", "hard-pairs"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_kill_loop_property_several_seeds(faces, tmp_path, seed, extra):
    kill_loop(faces, tmp_path, seed=seed, kills=3, extra=extra)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_sigkill_at_random_moments_resumes_to_the_same_weights(faces, tmp_path, seed):
    """The real thing: `metaemb train` in a subprocess, SIGKILLed after random delays (at import,
    in an epoch, during validation or a checkpoint write), re-run until it completes."""
    import signal
    import time

    reference = trainer(faces, tmp_path / "reference")
    reference.run()
    want = load_checkpoint(reference.dir / "last.pt")
    runs = tmp_path / "killed"
    cmd = [sys.executable, "-c", "from metaemb.cli import main; main()"]
    cmd += [str(a) for a in cli_args(faces, runs)]
    rng = random.Random(seed)
    for _ in range(4):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 15.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    run = trainer(faces, runs).dir
    assert same_state(want, load_checkpoint(run / "last.pt"))
    assert epochs_in(run) == [1, 2, 3]
    assert not list(run.glob(".*.tmp"))


class PickyScorers:
    """A scorer that needs more training identities than the demo faces have."""

    @metaemb.hookimpl
    def register_scorers(self, register):
        from metaemb.core.errors import DataError
        from metaemb.core.scoring.cosine import CosineScorer

        class Picky(CosineScorer):
            def __init__(self) -> None:
                super().__init__()
                self.requires_fit = True

            def check_fit_data(self, labels):
                n = int(torch.as_tensor(labels).unique().numel())
                raise DataError(f"picky needs 50 training identities, got {n}.")

            def fit(self, embeddings, labels):
                pass

        register("picky-test", Picky)


def test_a_scorer_that_cannot_fit_the_training_data_fails_before_training(faces, tmp_path, capsys):
    """A scorer that cannot fit the training identities failed only after an epoch."""
    from metaemb.core.plugin import manager

    with manager.plugin_registered(PickyScorers(), "picky"):
        code, out, err = run_cli(cli_args(faces, tmp_path, "eval.scorer=picky-test"), capsys)
    assert code == 2, out + err
    assert "picky needs 50 training identities, got 6" in " ".join(err.split())
    assert "epoch" not in out.lower()  # no training happened
    # nothing trained, so the run folder this start made is removed again
    assert not (tmp_path / "face").exists() or not any((tmp_path / "face").iterdir())


def test_a_run_that_lost_last_pt_is_not_silently_restarted(faces, tmp_path, capsys):
    """last.pt deleted from an unfinished run with two epochs: a restart would replace best.pt
    with epoch 1's weights and cut metrics.jsonl to one line. It is refused; nothing is
    touched. (Unfinished: its metrics lack the last epoch's record.)"""
    args = cli_args(faces, tmp_path, "train.epochs=2")
    assert run_cli(args, capsys)[0] == 0
    [run] = (tmp_path / "face").iterdir()
    (run / "last.pt").unlink()
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, _, err = run_cli(args, capsys)
    assert (
        code == 2
        and "holds 2 trained epochs (best.pt, metrics.jsonl) but no last.pt"
        in " ".join(err.split())
    )
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "train.log"}
    assert after == {k: v for k, v in before.items() if k != "train.log"}


def test_epoch_one_left_without_last_pt_is_trained_again_with_a_warning(faces, tmp_path, capsys):
    """An attempt stopped while saving its first checkpoint (best.pt written, last.pt not) was
    restarted without a word, its epoch 1 discarded: an epoch of a large model is hours (T1 F6)."""
    args = cli_args(faces, tmp_path, "train.epochs=2")
    assert run_cli(args, capsys)[0] == 0
    [run] = (tmp_path / "face").iterdir()
    (run / "last.pt").unlink()  # as if stopped after saving epoch 1's best.pt and record
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    best = torch.load(run / "best.pt", weights_only=False)
    torch.save({**best, "epoch": 1}, run / "best.pt")
    with pytest.warns(UserWarning, match="epoch 1 was trained but its last.pt is missing"):
        code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert (run / "last.pt").is_file() and len(metrics.read_text().splitlines()) == 2


def test_a_finished_run_whose_last_pt_was_removed_is_complete(faces, tmp_path, capsys):
    """last.pt (optimizer included) of a finished run is often deleted to save space: re-running
    its command retrained a 1-epoch run from scratch, deleting best.pt, or refused a longer
    one as 'cannot resume' (R5-10). It is complete; nothing is touched."""
    args = cli_args(faces, tmp_path, "train.epochs=1")
    assert run_cli(args, capsys)[0] == 0
    [run] = (tmp_path / "face").iterdir()
    (run / "last.pt").unlink()
    before = (run / "best.pt").read_bytes()
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "is complete" in out and "last.pt was removed" in " ".join(out.split())
    assert (run / "best.pt").read_bytes() == before and not (run / "last.pt").exists()


def test_the_same_relative_data_from_another_folder_is_not_resumed(faces, tmp_path, capsys):
    """Run folders are named by the configuration as typed: `--data data` in two project
    folders names one run. The second project's data (same file names, other pictures) must
    not resume or "complete" the first one's run, nor rewrite its config.toml."""
    runs = (tmp_path / "runs").resolve()
    for project in ("a", "b"):
        dest = tmp_path / project / "data"
        dest.parent.mkdir()
        shutil.copytree(faces, dest)
    args = lambda: cli_args(Path("data"), runs, "train.epochs=1")  # noqa: E731
    with helpers_cwd(tmp_path / "a"):
        assert run_cli(args(), capsys)[0] == 0
    [run] = (runs / "face").iterdir()
    config = (run / "config.toml").read_text()
    with helpers_cwd(tmp_path / "b"):
        code, _, err = run_cli(args(), capsys)
    flat = " ".join(err.split())
    assert code == 2 and f"it was trained on '{tmp_path / 'a' / 'data'}'" in flat
    assert "--set name=NEW" in flat and (run / "config.toml").read_text() == config


@contextlib.contextmanager
def helpers_cwd(folder: Path):
    """Run a command from `folder`, as a user in a project folder would."""
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def test_resuming_with_another_worker_count_is_said(faces, tmp_path, capsys):
    """Workers draw crops by worker id, so another --workers count changes the remaining
    epochs' draws; config.toml records the count used (it said 2 for --workers 0)."""

    t = trainer(faces, tmp_path, "train.epochs=2", callbacks=[KillInEpoch2()])
    with pytest.raises(Killed):
        t.run()
    assert "workers = 0" in (t.dir / "config.toml").read_text()
    args = cli_args(faces, tmp_path, "train.epochs=2")
    args[args.index("--workers") + 1] = "1"
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "trained with 0 data-loader worker(s) and resumes with 1" in " ".join(err.split())


def test_a_hand_edited_config_toml_is_said_to_be_rewritten(faces, tmp_path, capsys):
    """Editing RUN/config.toml (lr = 0.5) changed nothing and vanished silently on resume."""
    args = cli_args(faces, tmp_path, "train.epochs=1")
    assert run_cli(args, capsys)[0] == 0
    [run] = (tmp_path / "face").iterdir()
    config = run / "config.toml"
    original = config.read_text()
    config.write_text(original.replace("lr = ", "lr = 0.5 #", 1))
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    # the console may wrap the long run path inside a word: compare without whitespace
    assert "config.tomlwaseditedbyhand" in "".join(err.split())  # warnings: stderr
    assert config.read_text() == original
    code, out, err = run_cli(args, capsys)  # unedited: nothing to say
    assert code == 0 and "edited by hand" not in out + err
    edited = config.with_name("config.toml.edited")
    assert "lr = 0.5 #" in edited.read_text()  # the hand edit is kept beside it
    # an edit that no longer reads as a configuration vanished without a word (Q1 F22)
    config.write_text(original.replace("[train]", "[train]\nbogus_key = 1", 1))
    code, out, err = run_cli(args, capsys)
    said = "".join(err.split())
    assert code == 0 and "config.tomlnolongerreadsasaconfiguration" in said, err
    assert config.read_text() == original and "bogus_key = 1" in edited.read_text()


def test_a_teacher_trained_on_another_frontend_is_refused(tiny_face_run, tmp_path):
    """A teacher trained on aligned crops was fed the student's unaligned images, silently."""
    import torch

    from metaemb.core.config import from_dict
    from metaemb.core.plugin.components import build
    from metaemb.core.train.teacher import build_teacher

    _, run = tiny_face_run
    state = load_checkpoint(run / "best.pt")
    student = from_dict(state["config"])
    state["config"]["model"]["frontend"] = "align"
    state["config"]["frontend"] = {"crop_size": 32}
    torch.save(state, tmp_path / "teacher.pt")
    student.train.objective, student.train.teacher = "distill", str(tmp_path / "teacher.pt")
    objective = build("objectives", "distill", {})
    with pytest.raises(ConfigError, match=r"frontend 'align' .*--set model.frontend=align"):
        build_teacher(student, objective, torch.device("cpu"))
    student.train.teacher = str(run / "best.pt")  # the same pipeline: fine
    assert build_teacher(student, objective, torch.device("cpu")) is not None


def test_the_progress_bar_shows_no_loss_before_the_first_step():
    """It showed "loss nan" at 0/N, which reads as a diverged loss."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from metaemb.core.train.engine import Trainer

    out = io.StringIO()
    stub = SimpleNamespace(console=Console(file=out, width=100), dist=SimpleNamespace(main=True))
    with Trainer._progress(stub) as progress:
        progress.add_task("epoch 1/1", total=3, loss="–", rate=0.0)
    assert "loss –" in out.getvalue() and "nan" not in out.getvalue()


def test_a_resume_with_other_steps_per_epoch_continues_the_schedule_from_its_epoch(faces,
                                                                                   tmp_path):  # fmt: skip
    """A run begun on 2 ranks and resumed by one process has twice the steps per epoch; the
    schedule went on from the old step count: the LR jumped back up and never annealed
    (H14 F7). Here the checkpoint says it took twice the steps this run takes."""
    import io

    with pytest.raises(Killed):
        trainer(faces, tmp_path, callbacks=[KillInEpoch2()]).run()
    whole = trainer(faces, tmp_path / "whole")
    whole.run()
    final_lr = json.loads((whole.dir / "metrics.jsonl").read_text().splitlines()[-1])["lr"]
    run = trainer(faces, tmp_path).dir
    state = torch.load(run / "last.pt", weights_only=True)
    spe = state["steps_per_epoch"]
    assert state["world_size"] == 1 and state["step"] == spe
    state["steps_per_epoch"], state["step"], state["world_size"] = 2 * spe, 2 * spe, 2
    state["scheduler"]["last_epoch"] = 2 * spe  # as the 2-rank run's scheduler counted
    torch.save(state, run / "last.pt")
    out = io.StringIO()
    resumed = Trainer(config(faces), runs_root=tmp_path, device="cpu", workers=0,
                      console=Console(file=out, width=200))  # fmt: skip
    resumed.run()
    said = " ".join(out.getvalue().split())
    assert (
        f"resumes on 1 rank(s) instead of 2 with {spe} steps per epoch where it had {2 * spe}"
        in said
    )
    lrs = [json.loads(x)["lr"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] == pytest.approx(final_lr)  # annealed as the uninterrupted run


def test_sigterm_from_a_batch_scheduler_says_how_to_resume(faces, tmp_path):
    """SLURM/PBS send SIGTERM at the time limit: train ended with nothing on stderr or in
    train.log, while Ctrl-C says how to resume (H14 F8)."""
    import signal
    import time

    runs = tmp_path / "runs"
    cmd = [sys.executable, "-c", "from metaemb.cli import main; main()"]
    cmd += [str(a) for a in cli_args(faces, runs, "train.epochs=200")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = None
    for _ in range(600):  # until the first epoch is recorded
        time.sleep(0.2)
        log = next(runs.glob("face/*/train.log"), None)
        if (log is not None and "epoch 1:" in log.read_text()) or proc.poll() is not None:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "terminated by SIGTERM; re-run the same command to resume" in " ".join(err.split())
    last = log.read_text().rstrip().splitlines()[-1] if log is not None else ""
    assert "terminated by SIGTERM; re-run the same command to resume" in last  # (D2 F6)


def test_a_far_too_large_learning_rate_is_named_with_the_poisoned_statistics(faces, tmp_path):
    """lr = 1e8 overflowed the activations; the message sent the user to the input files and
    the augmentations only (H14 F11)."""
    from metaemb.core.errors import MetaembError

    with pytest.raises(MetaembError) as caught:
        trainer(faces, tmp_path, "train.lr=1e8", "train.grad_clip=0").run()
    message = " ".join(str(caught.value).split())
    assert "lower train.lr" in message and "1e+08" in message, message


def test_a_signal_nohup_ignores_stays_ignored():
    """Under nohup (SIGHUP ignored) closing the session stopped training once train took over
    SIGHUP unconditionally (R2-1): only signals at their default are taken."""
    import signal

    from metaemb.commands.signals import stopped_by_scheduler

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stopped_by_scheduler():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # taken: was default
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # given back
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_torchrun_rank_keeps_the_default_signals(monkeypatch):
    """A rank blocked in a collective runs no Python handler: SIGTERM from torchrun must end it
    at once, not after the backend's 30-minute timeout (R2-7)."""
    import signal

    from metaemb.commands.signals import stopped_by_scheduler

    monkeypatch.setenv("WORLD_SIZE", "2")
    with stopped_by_scheduler():
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_global_batch_larger_than_the_data_names_the_ranks():
    """Under torchrun, 2 ranks × batch 48 over 90 samples ran no step and advised raising
    train.batch_size, the opposite of the fix (D3 F9)."""
    from types import SimpleNamespace

    from metaemb.core.data.samplers import RandomSampler
    from metaemb.core.train.engine import Trainer

    assert [len(RandomSampler(list(range(90)), 48, rank=r, world_size=2)) for r in (0, 1)] == [0, 0]
    trainer = SimpleNamespace(
        config=SimpleNamespace(train=SimpleNamespace(batch_size=48)),
        dist=SimpleNamespace(world_size=2),
        train_folder=[None] * 90,
    )
    said = Trainer._no_step(trainer, 0)
    assert "2 ranks × train.batch_size 48 (per rank) = a global batch of 96" in said
    assert "Lower train.batch_size to at most 45" in said


def test_a_distributed_run_says_its_ranks_and_global_batch(tmp_path):
    """A torchrun run never said how many ranks or what global batch it trained with, though
    train.batch_size is per rank (T1 F3)."""
    from rich.console import Console

    from metaemb.core.config import resolve
    from metaemb.core.train.summary import describe_run

    class Folder(list):
        num_identities = 3

    cfg = resolve("face", sets=["train.batch_size=8"])
    console = Console(record=True, width=200)
    describe_run(
        console, cfg, tmp_path, tmp_path, Folder(range(30)), Folder(range(9)), 12, "cpu", 2
    )
    assert "ranks: 2 (torchrun), train.batch_size 8 per rank: a global batch of 16" in (
        console.export_text()
    )
    console = Console(record=True, width=200)
    describe_run(console, cfg, tmp_path, tmp_path, Folder(range(30)), Folder(range(9)), 12, "cpu")
    assert "ranks" not in console.export_text()


def test_each_rank_gets_its_own_random_streams_back_on_resume():
    """A torchrun run resumed after a kill diverged from the uninterrupted one: every rank
    restored rank 0's random state, so rank 1 drew other augmentations (T1 F9)."""
    from metaemb.core.train.random_state import rank_rng_states, restore_rng

    assert rank_rng_states(1) is None  # one process: the checkpoint's own `rng`
    streams = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        streams.append((torch.get_rng_state(), None))
    state = {"rng": streams[0][0], "rng_by_rank": streams}
    for rank, seed in ((0, 1), (1, 2)):
        restore_rng(state, rank, 2)
        want = torch.Generator().manual_seed(seed)
        assert torch.equal(torch.rand(3), torch.rand(3, generator=want))
    restore_rng(state, 1, 4)  # other ranks than saved: the saving rank's stream
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(1)))


def test_numpy_and_random_streams_are_kept_in_checkpoints():
    """An augmentation drawing from numpy.random or random in the training process drew other
    numbers after a resume, and even on a re-run: neither was seeded nor saved (R5-6)."""
    import io

    import numpy as np

    from metaemb.core.train.random_state import host_rng_state, restore_rng

    np.random.seed(3)
    random.seed(4)
    state = {"rng": torch.get_rng_state(), "host_rng": host_rng_state()}
    want = (np.random.rand(), random.random())
    buffer = io.BytesIO()
    torch.save(state, buffer)  # as checkpoints are read: weights only
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    np.random.rand(5), random.random()
    restore_rng(state, 0, 1)
    assert (np.random.rand(), random.random()) == want


def test_validation_embeds_in_float32_under_amp(faces, tmp_path):
    """With train.amp (bf16 autocast on CUDA; CPU autocast stands in for it here) training steps
    run in bf16, but validation embeds in float32, as `evaluate RUN` does: the EER that picks
    best.pt is the one evaluate reproduces."""
    from metaemb.core.data.embed import extract

    t = trainer(faces, tmp_path / "runs")
    t.setup()
    t.amp = True
    ds = t.parts.dataset(t.train_folder, train=False)
    emb, _ = t.embed(ds)
    t.model.eval()
    fp32, _, _ = extract(t.model, ds, t.device, batch_size=8, workers=0)
    bf16, _, _ = extract(t.model, ds, t.device, batch_size=8, workers=0, autocast=True)
    assert torch.allclose(emb, fp32, atol=1e-6)
    assert not torch.allclose(bf16, fp32, atol=1e-4)  # bf16 rounding is visible at this size
