"""metaemb from Python (docs/python.md): the library's calls take what a notebook passes and
answer in the library's terms."""

from __future__ import annotations

import pytest


def test_evaluation_takes_its_options_as_a_dict_or_as_the_command_lines_strings(tmp_path):
    """`load_run(folder_options={…})` took a dict and `Evaluation(folder_options=…)` only
    'KEY=VALUE' strings, a dict being iterated into '--folder-set expects key=value … got
    'extensions'' (L3 F3): both take both, and one bare string is named."""
    from metaemb.core.errors import ConfigError
    from metaemb.core.eval.evaluate import Evaluation

    as_dict = Evaluation(tmp_path, scorer_options={"wccn": False},
                         folder_options={"sample_rate": 8000})  # fmt: skip
    as_strings = Evaluation(tmp_path, scorer_options=["wccn=false"],
                            folder_options=["sample_rate=8000"])  # fmt: skip
    assert as_dict.scorer_set == as_strings.scorer_set == {"wccn": False}
    assert as_dict.folder_options == as_strings.folder_options == {"sample_rate": 8000}
    with pytest.raises(ConfigError, match=r"scorer_options takes \{key: value\} or a list"):
        Evaluation(tmp_path, scorer_options="wccn=false")
    # a key given twice was a typo taken without a word (H22 F8): the one used is said
    with pytest.warns(UserWarning, match="--scorer-set gives lda_dim more than once: the last"):
        twice = Evaluation(tmp_path, scorer_options=["lda_dim=2", "lda_dim=3"])
    assert twice.scorer_set == {"lda_dim": 3}
    # every key given twice is named, with the value used (R11 F11b)
    with pytest.warns(
        UserWarning, match=r"gives lda_dim, wccn more than once.*lda_dim \(3\); wccn"
    ):
        Evaluation(tmp_path, scorer_options=["wccn=true", "lda_dim=2", "lda_dim=3", "wccn=false"])
    # a numpy boolean (a comparison's result) set by hand on a Config is a bool (R11 F11c)
    import numpy as np

    from metaemb.core.config import resolve
    from metaemb.core.config.checks import check_types

    cfg = resolve("face", None, [])
    cfg.train.amp = np.float64(0.2) > 0.5
    check_types(cfg)
    assert cfg.train.amp is False


def test_collection_retrieval_takes_a_collection_in_memory_as_its_file(tmp_path):
    """docs/python.md's `collection_retrieval(collection)` failed with a bare TypeError on the
    Collection it had just made: only a file path worked (L3 F13)."""
    import torch

    from metaemb.core.deploy.neighbours import collection_retrieval
    from metaemb.core.eval.retrieval import Collection

    torch.manual_seed(0)
    centres = torch.randn(4, 8)
    emb = torch.cat([c + 0.3 * torch.randn(3, 8) for c in centres])
    names = [f"id{i}" for i in range(4) for _ in range(3)]
    c = Collection([f"{n}/{j}.png" for j, n in enumerate(names)], names, emb)
    c.save(tmp_path / "c.npz")
    assert collection_retrieval(c) == collection_retrieval(tmp_path / "c.npz")


def test_training_from_python_leaves_the_callers_random_streams_alone(tiny_face_run, tmp_path):
    """`Trainer.run()` seeded torch, numpy and random with train.seed and left them so: in a
    notebook, every draw after the training cell followed the run's seed, whatever the user
    had seeded (L3 F5)."""
    import io
    import random

    import numpy as np
    import torch
    from rich.console import Console

    from metaemb.core.config import resolve
    from metaemb.core.train.engine import Trainer

    data, _ = tiny_face_run
    sets = [f'data.root="{data}"', "train.epochs=1", "train.batch_size=16", "model.dim=8",
            "features.image_size=32", f'data.cache_dir="{tmp_path / "cache"}"']  # fmt: skip
    cfg = resolve("face", None, sets)

    def draws():
        return np.random.rand(), torch.rand(1).item(), random.random()

    for seed in (1, 2):
        np.random.seed(seed), torch.manual_seed(seed), random.seed(seed)
        expected = draws()
        np.random.seed(seed), torch.manual_seed(seed), random.seed(seed)
        quiet = Console(file=io.StringIO())
        Trainer(cfg, runs_root=tmp_path / "runs", device="cpu", workers=0, console=quiet).run()
        assert draws() == expected


def test_a_config_changed_by_hand_is_checked_before_a_run_folder_is_made(tmp_path):
    """`cfg.train.lr = -1` or `cfg.train.epochs = "2"` on a resolved Config reached torch's
    'Invalid learning rate' or a TypeError, after a run folder had been made (L3 F4): the
    Trainer checks the values as resolve does, naming the key, before anything is written."""
    from metaemb.core.config import resolve
    from metaemb.core.errors import ConfigError
    from metaemb.core.train.engine import Trainer

    for key, value, said in (("lr", -1.0, "train.lr"), ("epochs", "2", "train.epochs")):
        cfg = resolve("speaker", None, ["train.epochs=1"])
        setattr(cfg.train, key, value)
        with pytest.raises(ConfigError, match=said):
            Trainer(cfg, runs_root=tmp_path / "runs", device="cpu", workers=0)
    # a component option set by hand is checked as resolve checks it, not blamed on a file
    # (H23 F7); what a notebook naturally gives (a Path, a numpy integer) is taken
    import numpy as np

    cfg = resolve("face", None, ["train.epochs=1"])
    cfg.components["features"]["image_size"] = 32.5
    with pytest.raises(ConfigError, match=r"features\.image_size"):
        Trainer(cfg, runs_root=tmp_path / "runs", device="cpu", workers=0)
    for whole in (32.0, np.int64(32)):  # whole numbers are kept as ints (R11 F8)
        cfg = resolve("face", None, ["train.epochs=1"])
        cfg.components["features"]["image_size"] = whole
        Trainer(cfg, runs_root=tmp_path / "runs", device="cpu", workers=0)
        assert type(cfg.components["features"]["image_size"]) is int
    cfg = resolve("face", None, ["train.epochs=1"])
    cfg.data.root, cfg.train.batch_size = tmp_path / "nowhere", np.int64(16)
    trainer = Trainer(cfg, runs_root=tmp_path / "runs", device="cpu", workers=0)
    assert cfg.data.root == str(tmp_path / "nowhere") and type(cfg.train.batch_size) is int
    assert not (tmp_path / "runs").exists()
    # ... and a mistake found once training sets up (no data there) leaves no run folder
    from metaemb.core.errors import MetaembError

    with pytest.raises(MetaembError, match="nowhere"):
        trainer.run()
    assert not list((tmp_path / "runs").rglob("run-*"))


def test_python_callers_are_told_the_python_spelling_too():
    """Calls from Python answered with command-line advice only: pass --merge, --device,
    --on-bad-sample skip (L3 F2)."""
    import torch

    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.stamp import ModelStamp
    from metaemb.core.errors import GalleryError, MetaembError
    from metaemb.core.train.device import pick_device

    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=4, config_hash="abcd1234", epoch=1))
    g.add("alice", torch.randn(1, 4))
    g.add("bob", torch.randn(1, 4))
    with pytest.raises(GalleryError, match=r"--merge \(merge=True from Python\)"):
        g.rename("alice", "bob")
    with pytest.raises(MetaembError, match=r"^device 'gpu' \(--device\) is not a device"):
        pick_device("gpu")
