"""folder.decode = "device": JPEG bytes through the DataLoader, decoded where the model runs.

The CUDA decoder (nvJPEG) cannot run here (no GPU); these tests prove the plumbing and the CPU
fallback: bytes → padded batch → torchvision decode → the same network input as PIL decoding in
the workers, with and without training augmentation."""

from __future__ import annotations

import io
import json

import helpers
import numpy as np
import pytest
import torch
from PIL import Image

from metaemb.core.config import resolve
from metaemb.core.data.collate import Collate
from metaemb.core.data.dataset import PreparedDataset
from metaemb.core.errors import ConfigError, DataError
from metaemb.core.plugin.components import build
from metaemb.core.plugin.interfaces import IdentityFrontend
from metaemb.plugins.vision import jpeg as jpeg_module
from metaemb.plugins.vision.recordio import RecordIOFolder, write_recordio


def jpeg(seed: int, h: int = 40, w: int = 48) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def jpeg_folder(tmp_path):
    for i in range(3):
        (tmp_path / f"id{i}").mkdir()
        for j in range(3):  # mixed sizes: the per-image resize path
            (tmp_path / f"id{i}" / f"{j}.jpg").write_bytes(jpeg(3 * i + j, 40 + 8 * j, 48))
    return tmp_path


def batches(root, features, train: bool, **folder_opts):
    out = []
    for decode in ("cpu", "device"):
        folder = build("sample_folders", "image", {"decode": decode, **folder_opts}, root=root)
        ds = PreparedDataset(folder, IdentityFrontend(), features, train=train)
        out.append(Collate(ds.features)([ds[i] for i in range(len(ds))]))
    return out


def test_device_decoding_on_cpu_gives_the_workers_input(jpeg_folder, monkeypatch):
    monkeypatch.setattr(jpeg_module, "_noticed", False)  # the notice is given once per process
    features = build("features", "image", {"image_size": 32}).eval()
    cpu, dev = batches(jpeg_folder, features, train=False)
    assert cpu.inputs.shape == (9, 3, 32, 32) and cpu.lengths is None
    assert dev.inputs.dtype == torch.uint8 and dev.inputs.dim() == 2
    files = sorted(jpeg_folder.glob("*/*.jpg"))
    assert dev.lengths.tolist() == [p.stat().st_size for p in files]
    assert bytes(dev.inputs[0, : dev.lengths[0]].tolist()) == files[0].read_bytes()
    with pytest.warns(UserWarning, match="decoded on the CPU in the main process"):
        x, lengths = features(dev.inputs, dev.lengths)
    assert lengths is None and x.shape == cpu.inputs.shape
    assert torch.allclose(x, features(cpu.inputs)[0], atol=2 / 127.5)  # ≤ 2 grey levels
    # a decoded batch goes through untouched
    assert features(cpu.inputs)[0] is cpu.inputs


def test_training_augmentation_on_the_device_draws_as_the_workers_do(tmp_path, monkeypatch):
    monkeypatch.setattr(jpeg_module, "_noticed", False)
    for i in range(2):
        (tmp_path / f"id{i}").mkdir()
        for j in range(3):  # one size: the batched resize path
            (tmp_path / f"id{i}" / f"{j}.jpg").write_bytes(jpeg(10 + 3 * i + j))
    opts = {"image_size": 32, "color_jitter": 0.2, "occlusion": 0.5, "shift": 0.1}
    features = build("features", "image", opts).train()
    torch.manual_seed(3)
    cpu, _ = batches(tmp_path, features, train=True)
    _, dev = batches(tmp_path, features, train=True)
    torch.manual_seed(3)  # the same draws, in the same order, now in forward
    with pytest.warns(UserWarning):
        x, _ = features(dev.inputs, dev.lengths)
    assert torch.allclose(x, cpu.inputs, atol=2 / 127.5)
    eval_x, _ = features.eval()(dev.inputs, dev.lengths)
    assert not torch.allclose(x, eval_x, atol=0.1)  # augmentation did run


def test_tar_and_recordio_folders_pass_jpeg_bytes(tmp_path):
    import tarfile

    data = [jpeg(i) for i in range(4)]
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "s.tar", "w") as tf:
        for i, d in enumerate(data):
            for name, blob in ((f"{i}.cls", str(i % 2).encode()), (f"{i}.jpg", d)):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))
    opts = {"decode": "device"}
    tar = build("sample_folders", "image-tar", opts, root=tmp_path / "shards", cache_dir=tmp_path / "c")  # fmt: skip
    got = {bytes(tar.load(tar.abspath(s)).tolist()) for s in tar.samples}
    assert got == set(data)
    (tmp_path / "rec").mkdir()
    write_recordio(tmp_path / "rec" / "train", [(i % 2, d) for i, d in enumerate(data)])
    rec = RecordIOFolder(tmp_path / "rec", decode="device")
    assert [bytes(rec.load(rec.abspath(s)).tolist()) for s in rec.samples] == data


def test_non_jpeg_files_and_bad_options_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    folder = build("sample_folders", "image", {"decode": "device"}, root=tmp_path)
    with pytest.raises(DataError, match=r"x\.png' is PNG, not JPEG: folder\.decode = 'device'"):
        folder.load(folder.abspath(folder.samples[0]))
    (tmp_path / "a" / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"x\.png' is corrupt or not a readable image"):
        folder.load(folder.abspath(folder.samples[0]))
    with pytest.raises(ConfigError, match=r"'folder\.decode': 'gpu' is not one of 'cpu', 'device'"):
        resolve("face", None, ["folder.decode=gpu"])
    with pytest.raises(ConfigError, match=r"frontend 'align' accepts image, but folder 'image' yields jpeg"):  # fmt: skip
        resolve("face", None, ["folder.decode=device", "model.frontend=align"])
    # the default keeps the run hash of runs made before the option; "device" is another run
    default = resolve("face").hash()
    assert resolve("face", None, ["folder.decode=cpu"]).hash() == default
    assert resolve("face", None, ["folder.decode=device"]).hash() != default


def test_train_with_device_decoding_on_cpu(tmp_path, capsys, monkeypatch):
    faces = helpers.demo_faces(tmp_path / "png", identities=8, images_per_identity=4, image_size=32)  # fmt: skip
    data = tmp_path / "jpg"
    for p in sorted(faces.glob("*/*.png")):
        (data / p.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("RGB").save(data / p.parent.name / (p.stem + ".jpg"), quality=95)
    args = ["train", "--data", data, "--runs", tmp_path / "runs", "--workers", "0"]
    for s in ["folder.decode=device", "train.epochs=1", "train.batch_size=8", "model.dim=8",
              "features.image_size=32", "eval.max_targets=50", "eval.nontargets=20"]:  # fmt: skip
        args += ["--set", s]
    code, out, err = helpers.run_cli(args, capsys, monkeypatch)
    assert code == 0, out + err
    [run] = list((tmp_path / "runs" / "face").iterdir())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics and np.isfinite(metrics[-1]["loss"])
    assert 'decode = "device"' in (run / "config.toml").read_text()
