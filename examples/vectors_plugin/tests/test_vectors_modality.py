"""The vectors modality end to end: registration, demo data, resolve, and a short training run."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from metaemb_vectors.synthetic import MANIFEST, generate_vectors

from metaemb import cli
from metaemb.core import DataError
from metaemb.core.plugin.manager import registry


def run(args: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", ["metaemb", *map(str, args)])
    try:
        cli.main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    return 0


def test_every_component_is_registered_under_the_plugin(vectors_plugin):
    expected = {
        "sample_folders": "npy",
        "features": "vector",
        "backbones": "mlp",
        "demo_data": "vectors",
        "modalities": "vectors",
    }
    for kind, name in expected.items():
        assert registry(kind).entry(name).plugin == "vectors"
    assert registry("backbones").entry("identity").plugin == "vectors"


def test_demo_data_is_deterministic_idempotent_and_refuses_foreign_folders(tmp_path):
    a = generate_vectors(tmp_path / "a", identities=3, per_identity=2, size=5, data_seed=1)
    b = generate_vectors(tmp_path / "b", identities=3, per_identity=2, size=5, data_seed=1)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.npy"))
    assert files == ["id0/000.npy", "id0/001.npy", "id1/000.npy", "id1/001.npy", "id2/000.npy",
                     "id2/001.npy"]  # fmt: skip
    for f in files:
        assert np.array_equal(np.load(a / f), np.load(b / f))
    assert json.loads((a / MANIFEST).read_text())["data_seed"] == 1
    stamp = (a / files[0]).stat().st_mtime_ns
    generate_vectors(tmp_path / "a", identities=3, per_identity=2, size=5, data_seed=1)
    assert (a / files[0]).stat().st_mtime_ns == stamp  # left alone
    with pytest.raises(DataError, match="not a complete demo vectors dataset"):
        generate_vectors(tmp_path / "a", identities=4, per_identity=2, size=5, data_seed=1)


def test_identity_is_learnable_and_raw_cosine_is_a_weak_baseline(tmp_path):
    """Class means separate identities far better than raw-vector cosine (the channel hurts)."""
    from metaemb.core.eval.metrics import eer

    root = generate_vectors(tmp_path / "d", identities=40, per_identity=6)
    xs, ys = [], []
    for i, d in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for f in sorted(d.glob("*.npy")):
            xs.append(np.load(f))
            ys.append(i)
    x, y = np.stack(xs), np.array(ys)
    x = x - x.mean(0)
    # LDA direction set from the generating model is unknown here: use within-class whitening.
    within = x - np.stack([x[y == c].mean(0) for c in y])
    w = np.linalg.inv(np.linalg.cholesky(np.cov(within.T) + 1e-6 * np.eye(x.shape[1])))
    pairs_same = y[:, None] == y[None, :]
    upper = np.triu(np.ones_like(pairs_same), 1).astype(bool)

    def cos_eer(z):
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        s = z @ z.T
        return eer(s[upper & pairs_same], s[upper & ~pairs_same])

    raw, whitened = cos_eer(x), cos_eer(x @ w.T)
    assert raw > 0.2 and whitened < raw / 2, (raw, whitened)


def test_train_with_the_modality_defaults(vectors_plugin, demo, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    args = ["train", "--modality", "vectors", "--data", demo, "--runs", runs, "--workers", "0"]
    assert run([*args, "--set", "train.epochs=2"], monkeypatch) == 0, capsys.readouterr().err
    [run_dir] = list((runs / "vectors").iterdir())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert (run_dir / "best.pt").is_file()
    # the plugin's export adapter makes the run deployable: vectors [N, 32] → embeddings [N, 16]
    assert run(["export", run_dir, "--format", "torchscript"], monkeypatch) == 0
    graph = torch.jit.load(str(run_dir / "best.torchscript.pt"))
    assert graph(torch.randn(3, 32)).shape == (3, 16)


def test_wrong_vector_size_is_one_clear_error(vectors_plugin, demo, tmp_path, monkeypatch, capsys):
    args = ["train", "--modality", "vectors", "--data", demo, "--runs", tmp_path / "runs"]
    code = run([*args, "--workers", "0", "--set", "features.size=10"], monkeypatch)
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Traceback" not in err
    assert "features.size=32" in err


def test_resolve_refuses_components_that_do_not_fit_before_reading_data(vectors_plugin):
    """The declared kinds (folder yields `vector`, …) are checked by resolve, naming both sides."""
    from metaemb.core import ConfigError
    from metaemb.core.config import resolve

    resolve("vectors", None, [])  # the modality's own chain fits
    with pytest.raises(ConfigError) as err:
        resolve("vectors", None, ["model.backbone=xvector"])
    message = str(err.value)
    assert "backbone 'xvector'" in message and "features 'vector'" in message
    with pytest.raises(ConfigError, match="folder 'npy'"):
        resolve("speaker", None, ["data.folder=npy"])


def write_matrices(root, identities=8, per_identity=4, channels=12, seed=0):
    """[channels, frames] matrices of varying length: a per-identity spectral shape + noise."""
    rng = np.random.default_rng(seed)
    for i in range(identities):
        shape = rng.normal(0, 1, (channels, 1))
        (root / f"spk{i}").mkdir(parents=True)
        for k in range(per_identity):
            frames = int(rng.integers(30, 60))
            m = shape + 0.5 * rng.normal(0, 1, (channels, frames))
            np.save(root / f"spk{i}" / f"{k}.npy", m.astype(np.float32))
    return root


def test_feature_matrices_train_with_builtin_features_and_the_audio_backbone(
    vectors_plugin, tmp_path, monkeypatch, capsys
):
    """A plugin's folder combined with core and audio components: npy-matrix → none → xvector."""
    data = write_matrices(tmp_path / "mats")
    sets = ["data.folder=npy-matrix", "model.features=none", "features.channels=12"]
    sets += ["model.backbone=xvector", "backbone.channels=32", "backbone.pool_channels=64"]
    sets += ["backbone.embedding_dim=32", "train.epochs=1"]
    args = ["train", "--modality", "vectors", "--data", data, "--runs", tmp_path / "runs"]
    args += ["--workers", "0"]
    for s in sets:
        args += ["--set", s]
    assert run(args, monkeypatch) == 0, capsys.readouterr().err
    [run_dir] = list((tmp_path / "runs" / "vectors").iterdir())
    assert (run_dir / "best.pt").is_file()


def test_feature_matrices_are_not_taken_for_waveforms(vectors_plugin, tmp_path):
    """The fbank features refuse a feature-matrix folder at resolve time, naming both sides."""
    from metaemb.core import ConfigError
    from metaemb.core.config import resolve

    data = write_matrices(tmp_path / "mats", identities=4, per_identity=2)
    sets = [f"data.root={json.dumps(str(data))}", "data.folder=npy-matrix", "model.frontend=none"]
    sets.append("model.features=fbank")  # the case: no VAD, fbank on a matrix
    with pytest.raises(ConfigError) as err:
        resolve("speaker", None, sets)
    message = str(err.value)
    assert "features 'fbank'" in message and "folder 'npy-matrix'" in message
