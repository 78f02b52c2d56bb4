"""Warm starts (`train.init_from`, `train.init_parts`), shape checks, softmax → GME fine-tuning,
rehearsal folders, forgetting measured, snapshots and the one-cycle schedule."""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path

import helpers
import pytest
import torch

from metaemb.core.config import resolve
from metaemb.core.train.engine import Trainer
from metaemb.core.train.warmstart import InitFrom, rehearsal_root

TINY = ["train.batch_size=16", "model.dim=16", "features.image_size=32", "eval.max_targets=30",
        "eval.nontargets=30"]  # fmt: skip


def split_faces(base: Path) -> tuple[Path, Path]:
    """Demo faces of 16 identities split into an 'old' folder (8) and a 'new' folder (8)."""
    every = helpers.demo_faces(base / "all", identities=16, images_per_identity=4, image_size=32)
    old, new = base / "old", base / "new"
    for k, d in enumerate(sorted(p for p in every.iterdir() if p.is_dir())):
        dest = (old if k < 8 else new) / d.name
        dest.mkdir(parents=True)
        for f in sorted(d.iterdir()):
            (dest / f.name).write_bytes(f.read_bytes())
    return old, new


def train(data: Path, runs: Path, capsys, *sets: str) -> tuple[int, str, str]:
    args = ["train", "--data", data, "--runs", runs, "--workers", "0"]
    for s in (*TINY, f"data.cache_dir={runs / 'cache'}", *sets):
        args += ["--set", s]
    return helpers.run_cli(args, capsys)


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("warm")
    old, new = split_faces(base)
    runs = base / "runs"
    assert train(old, runs, None, "train.epochs=1", "name=old")[0] == 0
    [run] = list((runs / "face").iterdir())
    return old, new, run


def built(data: Path, run: Path, tmp: Path, *sets: str) -> Trainer:
    cfg = resolve("face", None, [*TINY, f"data.root={json.dumps(str(data))}",
                                 f"data.cache_dir={json.dumps(str(tmp / 'c'))}", *sets])  # fmt: skip
    trainer = Trainer(cfg, runs_root=tmp / "r", device="cpu", workers=0)
    trainer.setup()
    return trainer


@pytest.mark.parametrize("parts", ["backbone", "backbone+head"])
def test_init_from_loads_exactly_the_chosen_parts(old_run, tmp_path, parts):
    _, new, run = old_run
    trainer = built(new, run, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    InitFrom(str(run), parts).on_setup(trainer)
    src = torch.load(run / "best.pt", weights_only=True)["model"]
    after = trainer.model.state_dict()
    for k, v in after.items():
        loaded = k.startswith(("features.", "backbone.")) or (
            parts != "backbone" and k.startswith("head.")
        )
        want = src[k] if loaded else before[k]
        assert torch.equal(v, want), k


def test_shape_mismatch_is_one_clear_error(old_run, tmp_path, capsys):
    _, new, run = old_run
    code, _, err = train(new, tmp_path / "runs", capsys, "train.epochs=1", "model.dim=8",
                         f"train.init_from={json.dumps(str(run))}")  # fmt: skip
    err = " ".join(err.split())
    assert code == 2 and "train.init_from" in err and "head." in err
    assert "[16, 512]" in err and "[8, 512]" in err and "train.init_parts=backbone" in err


def test_another_backbone_is_not_told_to_load_the_backbone_only(old_run, tmp_path, capsys):
    """init_parts=backbone cannot help when the backbones themselves differ: say that."""
    _, new, run = old_run
    code, _, err = train(new, tmp_path / "runs", capsys, "train.epochs=1",
                         "model.backbone=mobilenet_v3_small", "train.init_parts=backbone",
                         f"train.init_from={json.dumps(str(run))}")  # fmt: skip
    err = " ".join(err.split())
    assert code == 2 and "the backbones differ ('resnet18' there, 'mobilenet_v3_small' here)" in err
    assert "use train.init_parts=backbone" not in err


def test_another_objectives_classifier_is_named_not_other_classes(old_run, tmp_path):
    """init_parts=all from a softmax run into an ArcFace one said 'the classes differ'; the
    classes were the same, the classifiers were different objectives' modules (C1 F13)."""
    from metaemb.core.errors import ConfigError

    old, _, run = old_run
    trainer = built(old, run, tmp_path, "train.objective=arcface")
    with pytest.raises(ConfigError, match=r"the classifiers belong to different objectives "
                       r"\(objective 'softmax' there, 'arcface' here\) and init_parts=all needs "
                       r"the same one: use train.init_parts=backbone\+head"):  # fmt: skip
        InitFrom(str(run), "all").on_setup(trainer)


def test_softmax_to_gme_fine_tune_measures_forgetting(old_run, tmp_path, capsys):
    _, new, run = old_run
    code, text, err = train(new, tmp_path / "runs", capsys, "train.epochs=1", "model.head=gme",
                            "train.objective=gme-bxe", "model.dim=8", "train.init_parts=backbone",
                            f"train.init_from={json.dumps(str(run))}")  # fmt: skip
    assert code == 0, err
    flat = " ".join(text.split())
    assert "initialised backbone from" in flat and "forgetting (EER before → after)" in flat
    [gme_run] = list((tmp_path / "runs" / "face").iterdir())
    assert f"({gme_run / 'forgetting.json'})" in text.replace("\n", "")  # not a placeholder
    f = json.loads((gme_run / "forgetting.json").read_text())
    assert f["identities"] == {"old": 6, "new": 8}  # the old run's training ids; every new id
    for when in ("before", "after"):
        for which in ("old", "new"):
            assert 0.0 <= f[when][which]["eer"] <= 1.0 and f[when][which]["trials"] > 0
    assert f["change"]["old"] == pytest.approx(f["after"]["old"]["eer"] - f["before"]["old"]["eer"])


def test_rehearsal_folder_has_k_old_samples_per_old_identity(old_run, tmp_path):
    old, new, run = old_run
    root = rehearsal_root(new, str(run), 2, tmp_path / "cache")
    ids = sorted(p.name for p in root.iterdir() if p.is_dir())
    old_ids = sorted(p.name for p in old.iterdir() if p.is_dir())
    new_ids = sorted(p.name for p in new.iterdir() if p.is_dir())
    trained_old = [i for i in ids if i in old_ids]
    assert set(new_ids) <= set(ids) and len(trained_old) == 6  # the old run's training identities
    for i in trained_old:
        files = sorted((root / i).iterdir())
        assert len(files) == 2 and all(f.name.startswith("rehearsal-") for f in files)
    assert rehearsal_root(new, str(run), 2, tmp_path / "cache") == root  # built once


def test_rehearsal_names_new_identities_that_reuse_old_names(old_run, tmp_path):
    """Two demo draws both name their people id0000…: rehearsal merged different people by
    name without a word, and forgetting then found no new identity (D2 F1)."""
    import shutil
    import warnings

    old, new, run = old_run
    reused = tmp_path / "reused"
    shutil.copytree(new, reused)
    first_old = {p.name for p in old.iterdir() if p.is_dir()}
    built = rehearsal_root(new, str(run), 1, tmp_path / "c1")  # holds the old run's trained ids
    old_trained = sorted(p.name for p in built.iterdir() if p.is_dir() and p.name in first_old)
    (reused / sorted(p.name for p in new.iterdir() if p.is_dir())[0]).rename(
        reused / old_trained[0]
    )
    with pytest.warns(UserWarning, match=rf"rehearsal: 1 of the \d+ identities of .* have the "
                      rf"names of identities the init run trained on \('{old_trained[0]}'\)"):  # fmt: skip
        rehearsal_root(reused, str(run), 1, tmp_path / "c2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rehearsal_root(new, str(run), 1, tmp_path / "c3")  # distinct names: nothing to say


def test_snapshots_every_n_epochs(old_run, tmp_path, capsys):
    old, _, _ = old_run
    code, _, err = train(old, tmp_path / "runs", capsys, "train.epochs=2", "train.snapshot_every=1")
    assert code == 0, err
    [run] = list((tmp_path / "runs" / "face").iterdir())
    snaps = sorted(p.name for p in run.glob("snapshot-*.pt"))
    assert snaps == ["snapshot-epoch001.pt", "snapshot-epoch002.pt"]
    assert torch.load(run / snaps[0], weights_only=True)["epoch"] == 1


def test_onecycle_lr_and_cosine_momentum():
    from metaemb.core.config import TrainConfig
    from metaemb.core.train.optim import build_scheduler

    cfg = TrainConfig(epochs=4, lr=0.1, schedule="onecycle", warmup_epochs=1.0, optimizer="sgd")
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.1, "name": "model"}], lr=0.1, momentum=0.9)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs, moms = [opt.param_groups[0]["lr"]], [opt.param_groups[0]["momentum"]]
    for _ in range(39):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
    assert lrs[0] == pytest.approx(0.1 / 25) and lrs[10] == pytest.approx(0.1)
    end = 1 / (25 * 1e4)  # the last step, 29 of 30 into the descent (half cosine)
    assert max(lrs) == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(
        0.1 * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * 29 / 30)))
    )
    assert moms[0] == pytest.approx(0.95) and moms[10] == pytest.approx(0.85)
    assert moms[-1] == pytest.approx(0.95, abs=2e-3)
    mid = 0.1 / 25 + (0.1 - 0.1 / 25) * 0.5  # half way up: the cosine's midpoint
    assert lrs[5] == pytest.approx(mid)
    assert all(a <= b + 1e-12 for a, b in pairwise(lrs[:11]))
    assert all(a >= b - 1e-12 for a, b in pairwise(lrs[10:]))
    state = sched.state_dict()
    assert not any(k.startswith("_cfg") for k in state) and math.isfinite(state["last_epoch"])


def test_a_rehearsal_run_whose_cache_was_cleared_says_how_to_rebuild_it(old_run, tmp_path, capsys):
    """The rehearsal mix lives in the cache; once cleared, `evaluate RUN` told the user to
    point --data at a folder they never chose. Re-running the train command rebuilds it."""
    import shutil

    _, new, run = old_run
    runs = tmp_path / "runs"
    sets = ("train.epochs=1", f"train.init_from={json.dumps(str(run))}", "train.rehearsal=1")
    assert train(new, runs, capsys, *sets)[0] == 0
    [rehearsed] = list((runs / "face").iterdir())
    shutil.rmtree(runs / "cache" / "rehearsal")
    code, _, err = helpers.run_cli(["evaluate", rehearsed, "--workers", "0"], capsys)
    message = " ".join(err.split())
    assert (
        code == 2
        and "it is the rehearsal mix" in message
        and "Re-run the `metaemb train`" in message
    )
    code, text, err = train(new, runs, capsys, *sets)
    assert code == 0 and "complete" in " ".join(text.split()), err
    code, _, err = helpers.run_cli(["evaluate", rehearsed, "--workers", "0"], capsys)
    assert code == 0, err


def test_a_warm_start_says_that_the_margin_ramps_from_zero_again(old_run, tmp_path):
    """Large-margin fine-tuning from a run trained with a margin ramp trained with margin 0,
    the ramp counted from the new run's epoch 0, without a word (S6 F3)."""
    import io

    from rich.console import Console

    _, new, run = old_run
    for ramp, warned in ((3, True), (0, False)):
        sets = ["train.objective=arcface", f"objective.margin_warmup_epochs={ramp}"]
        trainer = built(new, run, tmp_path / str(ramp), *sets)
        out = io.StringIO()
        trainer.console = Console(file=out, width=300)
        InitFrom(str(run), "backbone+head").on_setup(trainer)
        said = " ".join(out.getvalue().split())
        assert ("the margin ramps from 0 again over this run's first 3 epochs" in said) is warned
        assert ("objective.margin_warmup_epochs=0" in said) is warned


def test_rehearsal_refuses_folders_that_do_not_hold_its_samples_as_files(
    old_run, tmp_path, monkeypatch
):
    """With a Kaldi data directory, rehearsal linked the old samples beside wav.scp, where the
    Kaldi folder never read them: the run trained on the new speakers alone, with a normal
    forgetting report; an old run read through a Kaldi folder crashed on its utterance ids as
    paths (S6 F8). Both are refused, named."""
    from types import SimpleNamespace

    from metaemb.core.errors import DataError
    from metaemb.core.train.warmstart import refuse_unread_rehearsal

    unread = SimpleNamespace(samples=[SimpleNamespace(path="spk1-utt1"), SimpleNamespace(path="x")])
    with pytest.raises(DataError, match="sample folder 'kaldi' reads none of them"):
        refuse_unread_rehearsal(unread, tmp_path, "kaldi")
    read = SimpleNamespace(samples=[SimpleNamespace(path="id0003/rehearsal-id0003_000.png")])
    refuse_unread_rehearsal(read, tmp_path, "image")

    _, new, run = old_run
    from metaemb.plugins.vision.folder import ImageFolder

    monkeypatch.setattr(ImageFolder, "abspath", lambda self, s: tmp_path / "utterance-id")
    with pytest.raises(DataError, match=r"names '.*', which is not a file"):
        rehearsal_root(new, str(run), 2, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "rehearsal").iterdir())  # no half-built folder


def test_rehearsal_from_python_or_on_a_missing_folder_is_said(old_run, tmp_path):
    """A Trainer with train.rehearsal set trained on the new data alone, silently: only the
    command mixed the old samples in (R12 F13); a --data that does not exist raised a
    FileNotFoundError traceback from the rehearsal's listing (H25 F10)."""
    from metaemb.core.errors import ConfigError, DataError

    _, new, run = old_run
    sets = [f"train.init_from={json.dumps(str(run))}", "train.rehearsal=2"]
    cfg = resolve("face", None, [*TINY, f"data.root={json.dumps(str(new))}", *sets])
    with pytest.raises(ConfigError, match="is not a rehearsal mix: `metaemb train` makes one"):
        Trainer(cfg, runs_root=tmp_path / "r0", device="cpu", workers=0).run()
    built(new, run, tmp_path, *sets)  # a sweep (lr-find) of the new data is no training (R13 F2)
    mixed = rehearsal_root(new, str(run), 2, tmp_path / "cache")
    # the message's advice, on a configuration that records where it read before: accepted,
    # as the folder training reads is checked (R13 F6)
    from metaemb.core.train.warmstart import refuse_unmixed_rehearsal

    cfg.data.root_absolute, cfg.data.root = str(new), str(mixed)
    refuse_unmixed_rehearsal(cfg)
    trainer = built(mixed, run, tmp_path / "mixed", *sets)
    assert len(trainer.parts.folder.samples) > len(list(new.glob("*/*")))
    with pytest.raises(DataError, match=r"data folder '.*nowhere' does not exist"):
        rehearsal_root(tmp_path / "nowhere", str(run), 2, tmp_path / "cache")
