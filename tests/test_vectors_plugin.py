"""The second example plugin, examples/vectors_plugin, as CI installs it: a whole new modality.

`pip install ./examples/vectors_plugin` (the README's test command does it) must make
`metaemb train --modality vectors` work out of the box, on its generated demo data, through the
entry point alone — no import of the plugin by the test.
"""

from __future__ import annotations

import json

from helpers import run_cli

from metaemb.core.plugin import manager

INSTALL = "install it: pip install ./examples/vectors_plugin"


def test_installed_plugin_is_listed_with_its_components(capsys, monkeypatch):
    manager.reset()
    code, out, _ = run_cli(["plugins", "--json"], capsys, monkeypatch)
    assert code == 0
    plugins = {p["name"]: p for p in json.loads(out)["plugins"]}
    assert "vectors" in plugins, INSTALL
    assert plugins["vectors"]["version"] == "0.1.0"
    assert plugins["vectors"]["components"] == {
        "backbones": ["identity", "mlp"],
        "demo_data": ["vectors"],
        "export_adapters": ["vector"],
        "features": ["vector"],
        "modalities": ["vectors"],
        "sample_folders": ["npy", "npy-matrix"],
    }


def test_train_modality_vectors_out_of_the_box(tmp_path, capsys, monkeypatch):
    """No --data: the modality's generator writes a small dataset into the cache, then it trains."""
    manager.reset()
    runs = tmp_path / "runs"
    sets = ["demo.identities=16", "demo.per_identity=5", "train.epochs=2"]
    sets.append(f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}")
    args = ["train", "--modality", "vectors", "--runs", runs, "--workers", "0"]
    for s in sets:
        args += ["--set", s]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, out + err
    assert "vectors" in out and "raw vectors" in out  # the modality's baseline is reported
    [demo] = list((tmp_path / "cache" / "demo").iterdir())
    assert len(list(demo.rglob("*.npy"))) == 16 * 5
    [run] = list((runs / "vectors").iterdir())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0.0 <= r["eer"] <= 1.0 for r in records)


def test_augmentations_are_checked_against_the_data_that_reaches_them():
    """Pass-through features ('none') hand on the folder's feature matrices: SpecAugment fits
    them (it was refused as acting on '='), waveform noise or speed does not, and is refused
    naming what flows there (it used to fail later, asking the features for a sample rate)."""
    import pytest

    from metaemb.core.config import resolve
    from metaemb.core.errors import ConfigError

    manager.reset()
    matrices = [
        "data.folder=npy-matrix",
        "model.features=none",
        "features.channels=20",
        "model.backbone=xvector",
    ]
    cfg = resolve("vectors", sets=[*matrices, 'train.augment=["specaugment"]'])
    assert cfg.train.augment == ["specaugment"]
    for waveform_only in ("noise", "speed"):
        with pytest.raises(ConfigError) as err:
            resolve("vectors", sets=[*matrices, f'train.augment=["{waveform_only}"]'])
        assert f"augmentation '{waveform_only}' (plugin 'audio') augments 'waveform'" in str(
            err.value
        )
        assert "take 'feature-matrix' (folder 'npy-matrix')" in str(err.value)
    speaker = resolve("speaker", sets=['train.augment=["noise", "specaugment"]'])
    assert speaker.train.augment == ["noise", "specaugment"]


def test_demo_data_seed_names_the_generators_own_seed_option(tmp_path, capsys, monkeypatch):
    """The vectors generator draws its data from an option `data_seed` (a demo generator's
    `seed` is what --seed fills): --seed says which option to set instead of "no seed"."""
    manager.reset()
    args = ["demo-data", "--modality", "vectors", "--out", str(tmp_path / "v"), "--seed", "5"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    message = " ".join(err.split())
    assert (
        code == 2 and "its option 'data_seed' draws another dataset: --set data_seed=5" in message
    )
