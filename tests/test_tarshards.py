"""WebDataset-style tar shards (xyz.jpg + xyz.cls, xyz.flac + xyz.json) read without webdataset,
on small generated shards: labels and bytes round-trip, the index cache, corrupt shards, training."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
import subprocess
import tarfile
from pathlib import Path

import helpers
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from metaemb.core.data import tarshards
from metaemb.core.data.tar_index import expand_braces, split_name
from metaemb.core.errors import DataError
from metaemb.core.plugin.components import build
from metaemb.plugins.audio import io as audio_io
from metaemb.plugins.audio.tarshards import AudioTarFolder
from metaemb.plugins.vision.tarshards import ImageTarFolder


def jpeg(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def flac(seed: int, rate: int = 16000, fmt: str = "FLAC") -> bytes:
    wave = 0.1 * np.random.default_rng(seed).standard_normal(rate // 4).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def pil(data: bytes) -> torch.Tensor:
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def image_shards(tmp_path):
    """3 shards of 4 samples; identities 0, 1, 2, 7 spread over the shards."""
    root = tmp_path / "shards"
    root.mkdir()
    expected = {}
    for s in range(3):
        members = []
        for i in range(4):
            key, label = f"s{s}-{i:02d}", (0, 1, 2, 7)[(s + i) % 4]
            data = jpeg(10 * s + i)
            members += [(f"{key}.cls", f"{label}\n".encode()), (f"{key}.jpg", data)]
            expected[f"{label:07d}/shard-{s:06d}.tar/{key}"] = data
        write_tar(root / f"shard-{s:06d}.tar", members)
    return root, expected


def folder(root, tmp_path, cls=ImageTarFolder, **opts):
    return cls(root, cache_dir=tmp_path / "cache", **opts)


def test_images_and_labels_round_trip(image_shards, tmp_path):
    root, expected = image_shards
    f = build("sample_folders", "image-tar", {}, root=root, cache_dir=tmp_path / "cache")
    assert isinstance(f, ImageTarFolder) and len(f) == 12
    assert f.identities == ["0000000", "0000001", "0000002", "0000007"]
    assert sorted(s.path for s in f.samples) == sorted(expected)
    assert [s.path for s in f.samples][:2] == ["0000000/shard-000000.tar/s0-00", "0000001/shard-000000.tar/s0-01"]  # fmt: skip
    for s in f.samples:
        data, ext, where = f.read_bytes(f.abspath(s))
        assert data == expected[s.path] and ext == "jpg" and where.endswith(f"#{s.path.split('/')[-1]}.jpg")  # fmt: skip
        img = f.load(f.abspath(s))
        assert img.dtype == torch.uint8 and img.shape == (3, 16, 16)
        assert torch.equal(img, pil(expected[s.path]))
        assert s.label == f.identities.index(s.identity)
    train, val = f.split(0.5, seed=0)
    assert not set(train.identities) & set(val.identities) and len(train) + len(val) == 12
    assert torch.equal(val.load(val.abspath(val.samples[0])), pil(expected[val.samples[0].path]))


def test_audio_with_json_and_text_labels(tmp_path, monkeypatch):
    root = tmp_path / "a"
    root.mkdir()
    audio = [flac(1), flac(2), flac(3, fmt="WAV")]
    write_tar(root / "shard-000000.tar", [
        ("spk/u1.flac", audio[0]), ("spk/u1.json", json.dumps({"identity": "alice", "x": 1}).encode()),
        ("spk/u2.json", b'{"identity": 42}'), ("spk/u2.flac", audio[1]),
        ("u3.txt", b"bob\n"), ("u3.wav", audio[2]),
    ])  # fmt: skip
    f = build("sample_folders", "audio-tar", {}, root=root, cache_dir=tmp_path / "cache")
    assert isinstance(f, AudioTarFolder)
    got = {s.path: s.identity for s in f.samples}
    assert got == {"alice/shard-000000.tar/spk/u1": "alice", "0000042/shard-000000.tar/spk/u2": "0000042",
                   "bob/shard-000000.tar/u3": "bob"}  # fmt: skip
    for s, data in zip(f.samples, audio, strict=True):
        wave = f.load(f.abspath(s))
        ref, rate = sf.read(io.BytesIO(data), dtype="float32")
        assert rate == 16000 and wave.dtype == torch.float32
        assert torch.allclose(wave, torch.from_numpy(ref))
    # the identity under another JSON key; resampling to another rate as audio files are
    write_tar(root / "shard-000000.tar", [("u.flac", flac(5, rate=8000)), ("u.json", b'{"speaker": "c"}')])  # fmt: skip
    f = AudioTarFolder(root, json_key="speaker", sample_rate=16000, cache_dir=tmp_path / "cache")
    assert f.identities == ["c"]
    monkeypatch.setattr(audio_io, "_warned_rates", set())  # warned once per process
    with pytest.warns(UserWarning, match="resampled"):
        assert f.load(f.abspath(f.samples[0])).shape == (4000,)  # 2000 samples at 8 kHz
    with pytest.raises(DataError, match="has no key 'identity' \\(it holds: speaker\\)"):
        AudioTarFolder(root, cache_dir=tmp_path / "cache")


def test_brace_patterns_globs_and_single_files_select_shards(image_shards, tmp_path):
    root, _ = image_shards
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{train,val}-{8..10}.tar") == [
        "train-8.tar", "train-9.tar", "train-10.tar", "val-8.tar", "val-9.tar", "val-10.tar"]  # fmt: skip
    assert expand_braces("x{a}y") == ["x{a}y"]
    assert split_name("./d/xyz.seg.PNG") == ("d/xyz", "seg.png") and split_name("README") is None
    two = folder(root / "shard-{000001..000002}.tar", tmp_path)
    assert {s.path.split("/")[1] for s in two.samples} == {"shard-000001.tar", "shard-000002.tar"}
    assert len(two) == 8 and two.load(two.abspath(two.samples[0])).shape == (3, 16, 16)
    assert len(folder(root / "shard-00000[02].tar", tmp_path)) == 8
    assert len(folder(root / "shard-000001.tar", tmp_path)) == 4
    assert len(folder(root, tmp_path, shards="shard-00000{0,1}.tar")) == 8
    with pytest.raises(DataError, match=r"1 shard\(s\) of .* do not exist: '.*shard-000003\.tar'"):
        folder(root / "shard-{000000..000003}.tar", tmp_path)
    with pytest.raises(DataError, match=r"does not exist: give a folder of \.tar shards"):
        folder(tmp_path / "nowhere", tmp_path)


def test_the_index_is_reused_and_rebuilt_when_a_shard_changes(image_shards, tmp_path):
    root, _ = image_shards
    first = folder(root, tmp_path)
    assert first.index_hits == 0
    assert len(list((tmp_path / "cache" / "tar-index").glob("*.tsv"))) == 3
    again = folder(root, tmp_path)
    assert again.index_hits == 3 and [s.path for s in again.samples] == [s.path for s in first.samples]  # fmt: skip
    # rewrite shard 1 with other labels and images: only it is indexed again
    new = jpeg(99, size=8)
    write_tar(root / "shard-000001.tar", [("z.cls", b"5"), ("z.jpg", new)])
    st = os.stat(root / "shard-000001.tar")
    os.utime(root / "shard-000001.tar", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = folder(root, tmp_path)
    assert changed.index_hits == 2 and len(changed) == 9
    s = next(s for s in changed.samples if s.identity == "0000005")
    assert torch.equal(changed.load(changed.abspath(s)), pil(new))
    # other label options are another index (the identities depend on them)
    assert folder(root, tmp_path, label="txt,cls").index_hits == 0
    # an index an older reader wrote is rebuilt: its rules (a class of -1 read as an identity)
    # would otherwise outlive the upgrade that refuses them (H15 F15)
    import metaemb.core.data.tar_index as tar_index

    older = tmp_path / "older"
    old_format = tar_index.FORMAT
    try:
        tar_index.FORMAT = old_format - 1
        assert folder(root, older).index_hits == 0  # written by the "older" reader
        assert folder(root, older).index_hits == 3
    finally:
        tar_index.FORMAT = old_format
    assert folder(root, older).index_hits == 0  # read by today's: rebuilt
    # a shard rewritten after indexing is refused when it is opened, not read wrongly
    write_tar(root / "shard-000000.tar", [("q.cls", b"1"), ("q.jpg", jpeg(3))])
    os.utime(root / "shard-000000.tar", ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    stale = next(s for s in changed.samples if "shard-000000" in s.path)
    with pytest.raises(DataError, match="changed after it was indexed"):
        changed.load(changed.abspath(stale))


def test_shards_indexed_in_parallel_processes_give_the_same_index(image_shards, tmp_path, monkeypatch):  # fmt: skip
    root, _ = image_shards
    serial = folder(root, tmp_path / "one")
    monkeypatch.setenv("METAEMB_INDEX_WORKERS", "2")
    parallel = folder(root, tmp_path / "two")
    assert parallel.index_hits == 0 and parallel.samples == serial.samples
    assert np.array_equal(parallel._offset, serial._offset)
    assert np.array_equal(parallel._size, serial._size)
    assert folder(root, tmp_path / "two").index_hits == 3  # the workers wrote the cache
    (root / "shard-000002.tar").write_bytes(b"x" * 600)  # an error in a worker reaches the caller
    with pytest.raises(DataError, match=r"shard-000002\.tar' is truncated or corrupt"):
        folder(root, tmp_path / "three")


def test_workers_open_their_own_handles(image_shards, tmp_path, monkeypatch):
    root, expected = image_shards
    f = folder(root, tmp_path)
    s = f.samples[5]
    f.load(f.abspath(s))
    assert len(f.handles._fds) == 1
    clone = pickle.loads(pickle.dumps(f))
    assert not clone.handles._fds
    assert torch.equal(clone.load(clone.abspath(s)), pil(expected[s.path]))
    f.handles._pid = -1  # as in a forked worker: inherited handles are closed, not shared
    inherited = list(f.handles._fds.values())
    closed: list[int] = []
    real_close = os.close
    monkeypatch.setattr(os, "close", lambda fd: (closed.append(fd), real_close(fd)))
    f.load(f.abspath(s))
    assert closed == inherited and f.handles._fds and f.handles._pid == os.getpid()
    monkeypatch.setattr(os, "close", real_close)
    monkeypatch.setattr(tarshards, "MAX_OPEN", 2)
    for s in f.samples:
        f.load(f.abspath(s))
    assert len(f.handles._fds) == 2  # least recently used shard closed
    # a loose file (embedding files with a run trained on shards) decodes as a file
    loose = tmp_path / "loose" / "x.jpg"
    loose.parent.mkdir()
    loose.write_bytes(jpeg(7))
    assert torch.equal(f.load(loose), pil(jpeg(7)))


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            "cut-data",
            r"is truncated or corrupt after member 's0-03\.jpg' \(unexpected end of data\)",
        ),
        (
            "cut-member",
            r"ends at byte \d+, after member 's0-03\.jpg', without tar's end-of-archive",
        ),
        ("header", r"has an unreadable header at byte 1024, after member 's0-00\.cls'"),
        ("gzip", r"is gzip-compressed; random access needs a plain tar"),
    ],
)
def test_corrupt_shards_are_named(image_shards, tmp_path, damage, message):
    root, _ = image_shards
    path = root / "shard-000000.tar"
    raw = path.read_bytes()
    end = raw.index(b"\0" * 1024, len(raw) - 10240 + 1)  # start of the end-of-archive blocks
    if damage == "cut-data":
        raw = raw[: end - 300]
    elif damage == "cut-member":
        raw = raw[:end]
    elif damage == "header":
        raw = raw[:1024] + b"garbage!" * 64 + raw[1536:]
    else:
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    with pytest.raises(DataError, match="shard '.*shard-000000.tar' " + message):
        folder(root, tmp_path)


MISSING_LABEL = (
    r"sample 'a' is missing its label \(\.jpg found; expected one of \.cls, \.txt, \.json"
)
TWICE = [("a.cls", b"1"), ("a.jpg", b"x"), ("b.cls", b"1"), ("b.jpg", b"x"), ("a.cls", b"1"), ("a.png", b"x")]  # fmt: skip


@pytest.mark.parametrize(
    "members, message",
    [
        ([("a.jpg", b"x")], MISSING_LABEL),
        ([("a.cls", b"1")], r"sample 'a' has no data member \(\.cls found"),
        ([("a.cls", b"one"), ("a.jpg", b"x")], r"#a\.cls' holds 'one', not an integer class"),
        ([("a.txt", b"x/y"), ("a.jpg", b"x")], r"#a\.txt' names the identity 'x/y'"),
        (TWICE, r"sample key 'a' appears twice"),
        # -1 (many tools' "unlabelled") became identity '-000001'; two images, one dropped
        ([("a.cls", b"-1"), ("a.jpg", b"x")], r"#a\.cls' holds -1, not a class number \(≥ 0\)"),
        ([("a.cls", b"1"), ("a.jpg", b"x"), ("a.png", b"x")],
         r"sample 'a' has 2 data members \(\.cls, \.jpg, \.png\)"),
    ],
)  # fmt: skip
def test_malformed_samples_are_named(tmp_path, members, message):
    write_tar(tmp_path / "s.tar", members)
    with pytest.raises(DataError, match=message):
        folder(tmp_path, tmp_path)


def test_a_corrupt_image_member_names_shard_and_member(tmp_path):
    write_tar(tmp_path / "s.tar", [("a.cls", b"1"), ("a.jpg", b"not a jpeg")])
    f = folder(tmp_path, tmp_path)
    with pytest.raises(DataError, match=r"image '.*s\.tar#a\.jpg' is corrupt"):
        f.load(f.abspath(f.samples[0]))


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs the tar program")
def test_the_documented_tar_recipe(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    for i in range(6):
        (staging / f"img{i}.jpg").write_bytes(jpeg(i))
        (staging / f"img{i}.cls").write_text(str(i % 3))
    names = sorted(p.name for p in staging.iterdir())  # LC_ALL=C sort
    (tmp_path / "list-000000").write_text("\n".join(names) + "\n")
    (tmp_path / "shards").mkdir()
    subprocess.run(["tar", "-cf", str(tmp_path / "shards/shard-000000.tar"), "-C", str(staging),
                    "-T", str(tmp_path / "list-000000")], check=True)  # fmt: skip
    f = folder(tmp_path / "shards", tmp_path)
    assert len(f) == 6 and f.identities == ["0000000", "0000001", "0000002"]
    s = next(s for s in f.samples if s.path.endswith("/img4"))
    assert s.identity == "0000001" and torch.equal(f.load(f.abspath(s)), pil(jpeg(4)))


def test_train_end_to_end_on_tar_shards(tmp_path, capsys, monkeypatch):
    faces = helpers.demo_faces(tmp_path / "faces", identities=8, images_per_identity=4, image_size=32)  # fmt: skip
    shards = tmp_path / "shards"
    shards.mkdir()
    files = sorted(faces.glob("*/*.png"))
    for n in range(2):  # two shards, identities spread over both
        members = []
        for k, p in enumerate(files[n::2]):
            buf = io.BytesIO()
            Image.open(p).convert("RGB").save(buf, "JPEG", quality=95)
            members += [(f"{k:05d}.jpg", buf.getvalue()), (f"{k:05d}.txt", p.parent.name.encode())]
        write_tar(shards / f"train-{n:06d}.tar", members)
    args = ["train", "--data", shards / "train-{000000..000001}.tar", "--runs", tmp_path / "runs",
            "--workers", "0"]  # fmt: skip
    for s in ["data.folder=image-tar", "train.epochs=1", "train.batch_size=8", "model.dim=8",
              "features.image_size=32", "eval.max_targets=50", "eval.nontargets=20",
              f"data.cache_dir={tmp_path / 'cache'}"]:  # fmt: skip
        args += ["--set", s]
    code, out, err = helpers.run_cli(args, capsys, monkeypatch)
    assert code == 0, out + err
    [run] = list((tmp_path / "runs" / "face").iterdir())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(np.isfinite(m.get("loss", 0.0)) for m in metrics)
    assert "image-tar" in (run / "config.toml").read_text()
    assert len(list((tmp_path / "cache" / "tar-index").glob("*.tsv"))) == 2
    # evaluated without --data: the pattern names the shards the run trained on, though no
    # file is called that (it was "does not exist (moved or deleted?)", D3 F10)
    code, out, err = helpers.run_cli(["evaluate", run, "--out", tmp_path / "ev", "--workers", "0"],
                                     capsys, monkeypatch)  # fmt: skip
    assert code == 0, out + err
    assert (tmp_path / "ev" / "metrics.json").is_file()
    # embed takes the same pattern as its data: every sample of the shards, where the pattern
    # was called "a sample file that does not exist" (H18 F12)
    pattern = shards / "train-{000000..000001}.tar"
    code, out, err = helpers.run_cli(["embed", run, pattern, "--out", tmp_path / "e.npz",
                                      "--workers", "0"], capsys, monkeypatch)  # fmt: skip
    assert code == 0, out + err
    assert "wrote 32 embeddings" in out
    code, out, err = helpers.run_cli(["embed", run, shards / "train-000000.tar", "--out",
                                      tmp_path / "one.npz", "--workers", "0"], capsys, monkeypatch)  # fmt: skip
    assert code == 0, out + err
    assert "wrote 16 embeddings" in out
    # shards named with --folder are read with it or refused by it, not by plain files (H20 F3)
    missing = shards / "train-{000000..000002}.tar"
    code, out, err = helpers.run_cli(["embed", run, missing, "--folder", "image-tar", "--out",
                                      tmp_path / "m.npz", "--workers", "0"], capsys, monkeypatch)  # fmt: skip
    said = " ".join(err.split())
    assert code == 2 and "1 shard(s) of" in said and "train-000002.tar" in said, said
    assert "not in the form" not in said and "Nor is it" not in said
    # the shell expanded an unquoted pattern: said how to give the shards (R6 F9)
    code, out, err = helpers.run_cli(["embed", run, *sorted(shards.glob("*.tar")), "--out",
                                      tmp_path / "two.npz", "--workers", "0"], capsys, monkeypatch)  # fmt: skip
    assert code == 2 and "which the shell expanded: give them as one quoted pattern" in err

    # enrolled from the shards: each sample is known by its shard and key, which exist, so no
    # identity is called gone (every enroll warned so, advising unenroll), and a moved shard
    # folder is followed (H21 F8)
    import warnings

    from metaemb.core.deploy.gallery import Gallery

    gallery = tmp_path / "g.pt"
    enroll = ["enroll", run, "--gallery", gallery, "--workers", "0", "--data"]
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            code, out, err = helpers.run_cli([*enroll, shards], capsys, monkeypatch)
        assert code == 0, out + err
    g = Gallery.load(gallery)
    assert len(g.samples) == 32 and all(".tar#" in s for s in g.sources)
    shards.rename(tmp_path / "moved")
    with pytest.warns(UserWarning, match=r"32 enrolled sample\(s\) were found moved"):
        code, out, err = helpers.run_cli([*enroll, tmp_path / "moved"], capsys, monkeypatch)
    assert code == 0, out + err
    assert len(Gallery.load(gallery).samples) == 32


def test_keys_in_folders_are_sources_and_sessions_of_their_own(tmp_path):
    """`tar cf shard.tar alice/0001.jpg bob/0001.jpg` gives keys with folders: the source was
    the key's last part, so alice/0001 and bob/0001 were one file to galleries (R8 F1); and
    --cross-session took the shard for a session (R8 F8). Sessions are the key's folders."""
    root = tmp_path / "shards"
    root.mkdir()
    members = []
    for who in ("alice", "bob"):
        for video in ("v1", "v2"):
            key = f"{who}/{video}/0001"
            members += [(f"{key}.jpg", jpeg(len(members))), (f"{key}.txt", who.encode())]
    write_tar(root / "shard-000000.tar", members)
    f = folder(root, tmp_path)
    sources = [f.source_of(s) for s in f.samples]
    assert len(set(sources)) == 4 and all(".tar#" in s for s in sources)
    assert sorted(f.session_of(s) for s in f.samples) == ["v1", "v1", "v2", "v2"]
    from metaemb.core.eval.trial_generation import make_trials

    tar = [t for t in make_trials(f, n_nontarget=2, cross_session=True) if t.label]
    assert len(tar) == 2 and all(t.enroll[0].split("/")[-2] != t.test.split("/")[-2] for t in tar)
    flat = tmp_path / "flat"
    flat.mkdir()
    write_tar(flat / "a.tar", [(f"{k}.{e}", jpeg(i) if e == "jpg" else k[0].encode())
                               for i, k in enumerate(("a0", "a1", "b2", "b3"))
                               for e in ("jpg", "txt")])  # fmt: skip
    with pytest.raises(DataError, match="cross-session targets need sessions"):
        make_trials(folder(flat, tmp_path), cross_session=True)


def test_a_gallery_that_knew_tar_members_by_their_keys_last_part_follows_them(tmp_path):
    """For a while a tar member was enrolled as `<shard>#<last part of its key>`; its whole key
    is its name now, and nothing mapped the one to the other: the next enroll of the same
    shards enrolled every sample a second time (R9 F1). A short name that stands for one member
    takes the whole key; one shared by two members (the collision that made the change) is
    left alone."""
    import types

    import torch

    from metaemb.core.deploy.enrollment import _renew_sources
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.stamp import ModelStamp

    shard = "/data/shards/train-000000.tar"
    new = [f"{shard}#alice/v1/0001", f"{shard}#alice/v2/0002", f"{shard}#bob/v1/0003",
           f"{shard}#carol/v1/0009", f"{shard}#carol/v2/0009"]  # fmt: skip
    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=4, config_hash="abcd1234", epoch=1))
    g.add("alice", torch.randn(2, 4), [f"{shard}#0001", f"{shard}#0002"])
    g.add("bob", torch.randn(1, 4), [f"{shard}#0003"])
    g.add("carol", torch.randn(1, 4), [f"{shard}#0009"])
    folder = types.SimpleNamespace(root=tmp_path, samples=[
        types.SimpleNamespace(path=f"{n.split('#')[1].split('/')[0]}/x/{i}",
                              identity=n.split("#")[1].split("/")[0]) for i, n in enumerate(new)
    ])  # fmt: skip
    assert _renew_sources(g, folder, new) == 3
    assert g.sources == [*new[:3], f"{shard}#0009"]
    # a short name is given only a key of the identity whose row it is: with bob's member gone
    # (or left out by --identities), alice's alice/v1/0005 is not bob's shard.tar#0005 (R10 F3)
    g.add("bob", torch.randn(1, 4), [f"{shard}#0005"])
    alice = [f"{shard}#alice/v1/0005"]
    only_alice = types.SimpleNamespace(root=tmp_path, samples=[
        types.SimpleNamespace(path="alice/x/0", identity="alice")])  # fmt: skip
    assert _renew_sources(g, only_alice, alice) == 0 and f"{shard}#0005" in g.sources


def test_members_re_sharded_under_other_shard_names_are_followed(tmp_path):
    """Members re-packed into shards of other names (two merged into one, train-* renamed) were
    neither followed as moved nor warned about as copies: every sample was enrolled a second
    time without a word (H22 F4). A member is known by its key, whichever shard holds it."""
    import types

    import torch

    from metaemb.core.deploy.enrollment import _follow_moved
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.stamp import ModelStamp

    keys = ["alice/v1/0001", "alice/v2/0002", "bob/v1/0003"]
    emb = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=4, config_hash="abcd1234", epoch=1))
    for k, key in enumerate(keys):
        g.add(key.split("/")[0], emb[k : k + 1], [f"/gone/shard-00000{k % 2}.tar#{key}"])
    new = [f"{tmp_path}/all-000000.tar#{key}" for key in keys]
    folder = types.SimpleNamespace(root=tmp_path, samples=[
        types.SimpleNamespace(identity=key.split("/")[0], path=key) for key in keys])  # fmt: skip
    with pytest.warns(UserWarning, match="found moved"):
        keep, _, moved = _follow_moved(g, folder, new, [0, 1, 2], emb, {"alice": "alice",
                                                                         "bob": "bob"})  # fmt: skip
    assert moved == 3 and keep == []


def test_a_folder_of_shards_read_as_plain_files_says_what_it_holds(tmp_path):
    """A folder of tar shards given to a run of plain folders was 'no identity sub-folders',
    while a pattern of the same shards was named as packed files (H22 F8)."""
    from metaemb.core.errors import DataError
    from metaemb.core.plugin.components import build

    (tmp_path / "shard-000000.tar").write_bytes(b"")
    with pytest.raises(
        DataError,
        match=r"holds 1 packed file\(s\) \('shard-000000.tar'.*--folder NAME, or --set data.folder=NAME to train",
    ):
        build("sample_folders", "image", {}, root=tmp_path)
