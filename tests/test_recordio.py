"""InsightFace RecordIO (train.rec/train.idx) read without MXNet, on small generated shards."""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from metaemb.core.errors import DataError
from metaemb.core.plugin.components import build
from metaemb.plugins.vision.recordio import (
    MAGIC,
    RecordFile,
    RecordIOFolder,
    encode_record,
    pack_image,
    write_recordio,
)


def jpeg(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def decoded(data: bytes) -> torch.Tensor:
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


@pytest.fixture
def shard(tmp_path):
    items = [(label, jpeg(10 * label + i)) for label in (0, 1, 2, 7) for i in range(3)]
    write_recordio(tmp_path / "train", items)
    return tmp_path, items


def test_reads_every_image_with_its_identity(shard):
    root, items = shard
    folder = RecordIOFolder(root)
    assert len(folder) == 12
    assert folder.identities == ["0000000", "0000001", "0000002", "0000007"]
    assert [s.path for s in folder.samples][:4] == ["0000000/1", "0000000/2", "0000000/3", "0000001/4"]  # fmt: skip
    for sample, (label, data) in zip(folder.samples, items, strict=True):
        assert sample.identity == f"{label:07d}"
        img = folder.load(folder.abspath(sample))
        assert img.dtype == torch.uint8 and img.shape == (3, 16, 16)
        assert torch.equal(img, decoded(data))


def test_the_files_follow_the_dmlc_and_mxnet_layouts_byte_for_byte(shard):
    root, items = shard
    idx = [line.split("\t") for line in (root / "train.idx").read_text().splitlines()]
    assert [int(k) for k, _ in idx] == list(range(1 + 12 + 4))
    raw = (root / "train.rec").read_bytes()
    off = int(idx[1][1])  # the first image record, parsed by hand
    magic, lrec = struct.unpack_from("<II", raw, off)
    assert magic == MAGIC == 0xCED7230A and lrec >> 29 == 0
    flag, label, key, _ = struct.unpack_from("<IfQQ", raw, off + 8)
    assert (flag, label, key) == (0, 0.0, 1)
    assert raw[off + 32 : off + 8 + (lrec & 0x1FFFFFFF)] == items[0][1]
    # header record 0: flag 2, labels (first identity-range key, end)
    flag, _, _, _ = struct.unpack_from("<IfQQ", raw, 8)
    assert flag == 2 and np.frombuffer(raw, np.float32, 2, 32).tolist() == [13.0, 17.0]


def test_a_payload_holding_the_magic_word_is_split_and_joined(tmp_path):
    magic = struct.pack("<I", MAGIC)
    payload = b"abcd" + magic + b"efgh" + magic + magic + b"xyz"
    data = encode_record(payload)
    flags = []
    pos = 0
    while pos < len(data):
        m, lrec = struct.unpack_from("<II", data, pos)
        assert m == MAGIC
        flags.append(lrec >> 29)
        n = lrec & 0x1FFFFFFF
        pos += 8 + n + (-n % 4)
    assert flags == [1, 2, 2, 3]
    (tmp_path / "x.rec").write_bytes(b"\0" * 4 + data)
    assert RecordFile(tmp_path / "x.rec").read(4) == payload
    # an unaligned magic word is data, not a boundary
    odd = b"ab" + magic + b"cd"
    assert struct.unpack_from("<I", encode_record(odd), 4)[0] >> 29 == 0


def test_label_arrays_and_a_file_without_header_record(tmp_path):
    # key 0 is an image (flag 0: no InsightFace header); key 1 carries a label array
    recs = [pack_image(3, jpeg(2), 0), pack_image([5.0, 1.0], jpeg(1), 1)]
    pos, lines = 0, []
    with open(tmp_path / "train.rec", "wb") as f:
        for k, r in enumerate(recs):
            lines.append(f"{k}\t{pos}\n")
            d = encode_record(r)
            f.write(d)
            pos += len(d)
    (tmp_path / "train.idx").write_text("".join(lines))
    folder = RecordIOFolder(tmp_path)
    assert [(s.path, s.identity) for s in folder.samples] == [("0000003/0", "0000003"), ("0000005/1", "0000005")]  # fmt: skip
    assert torch.equal(folder.load(folder.abspath(folder.samples[1])), decoded(jpeg(1)))


def test_survives_pickling_for_workers_and_splits_by_identity(shard):
    root, _ = shard
    folder = RecordIOFolder(root)
    folder.load(folder.abspath(folder.samples[0]))  # opens the file in this process
    clone = pickle.loads(pickle.dumps(folder))
    assert clone.rec._fd is None
    assert torch.equal(clone.load(clone.abspath(clone.samples[5])), folder.load(folder.abspath(folder.samples[5])))  # fmt: skip
    train, val = folder.split(0.5, seed=0)
    assert not set(train.identities) & set(val.identities)
    assert len(train) + len(val) == 12
    s = val.samples[0]
    assert val.load(val.abspath(s)).shape == (3, 16, 16)


def test_registered_in_the_vision_plugin(shard):
    root, _ = shard
    folder = build("sample_folders", "recordio", {"name": "train"}, root=root)
    assert isinstance(folder, RecordIOFolder) and len(folder) == 12


def test_bad_files_are_named(shard, tmp_path):
    root, _ = shard
    with pytest.raises(DataError, match=r"other\.rec' does not exist"):
        RecordIOFolder(root, name="other")
    (root / "train.idx").write_text("0\t3\n")  # not a record boundary
    with pytest.raises(DataError, match=r"no RecordIO record at byte 3 \(record 0\)"):
        RecordIOFolder(root)
    (root / "train.idx").write_text("zero 1\n")
    with pytest.raises(DataError, match=r"train\.idx', line 1"):
        RecordIOFolder(root)
    (root / "train.idx").unlink()
    with pytest.raises(DataError, match=r"train\.idx' does not exist"):
        RecordIOFolder(root)


def test_a_run_trained_on_recordio_embeds_plain_files_and_folders(shard, tmp_path_factory, capsys):
    """Trained on MS1M-style RecordIO, a model must embed ordinary files and folders: every
    command read them through the RecordIO folder ("RecordIO file '.../train.rec' does not
    exist"), so a model trained on a large corpus could not enroll or identify anyone."""
    from helpers import run_cli

    from metaemb.core.eval.retrieval import Collection

    root, items = shard
    base = tmp_path_factory.mktemp("plain")
    plain = base / "faces"
    for k, (label, data) in enumerate(items):
        (plain / f"id{label}").mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(data)).save(plain / f"id{label}" / f"{k}.png")
    runs = base / "runs"
    args = ["train", "--modality", "face", "--data", root, "--runs", runs, "--workers", "0"]
    for item in ("data.folder=recordio", "model.frontend=none", "train.epochs=1",
                 "features.image_size=16", "model.dim=8", "model.backbone=tinycnn",
                 "train.batch_size=4", "data.val_fraction=0.5"):  # fmt: skip
        args += ["--set", item]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    [run] = list((runs / "face").iterdir())
    with pytest.warns(UserWarning, match="so read as plain files with sample folder 'image'"):
        code, _, err = run_cli(["embed", run, plain, "--out", base / "c.pt", "--workers", "0"],
                               capsys)  # fmt: skip
    assert code == 0, err
    coll = Collection.load(base / "c.pt")
    assert len(coll) == 12 and set(coll.identities) == {"id0", "id1", "id2", "id7"}
    probe = sorted(plain.glob("id7/*.png"))[0]
    with pytest.warns(UserWarning, match="the sample files given: not in the form of the run's"):
        code, _, err = run_cli(["embed", run, probe, "--out", base / "p.pt", "--workers", "0"],
                               capsys)  # fmt: skip
    assert code == 0, err
    # a flat folder of photos (no identity folders): the plain folder's error, as warned (H15
    # F14: it said "reading it as plain files", then failed with "train.rec does not exist")
    with pytest.warns(UserWarning, match="so read as plain files"):
        code, _, err = run_cli(["embed", run, plain / "id7", "--out", base / "f.pt", "--workers",
                                "0"], capsys)  # fmt: skip
    assert code == 2 and "has no identity sub-folders" in " ".join(err.split()), err
    one = Collection.load(base / "p.pt")
    row = coll.paths.index(probe.relative_to(plain).as_posix())
    torch.testing.assert_close(one.embeddings[0], coll.embeddings[row], atol=1e-5, rtol=1e-5)


def _plain_pack(root, labels, payload=None):
    """A .rec without header record 0: record k is an image with label labels[k]."""
    pos, lines = 0, []
    with open(root / "train.rec", "wb") as f:
        for k, label in enumerate(labels):
            lines.append(f"{k}\t{pos}\n")
            d = encode_record(payload(k) if payload else pack_image(label, jpeg(k), k))
            f.write(d)
            pos += len(d)
    (root / "train.idx").write_text("".join(lines))
    return lines


@pytest.mark.parametrize("bad", [2.5, -1.0, float("nan"), float("inf")])
def test_a_label_that_is_not_a_class_number_is_named(tmp_path, bad):
    """2.5 was read as class 2 (two identities merged), -1 became identity '-000001', NaN and
    inf gave a bare ValueError/OverflowError (H15 F1, F2, F7)."""
    _plain_pack(tmp_path, [0.0, 1.0, bad, 2.0])
    with pytest.raises(DataError, match=rf"train\.rec': record 2 has label {bad:g}, not a class "
                       r"number \(a whole number ≥ 0\)"):  # fmt: skip
        RecordIOFolder(tmp_path)


def test_damaged_index_lines_are_named(shard):
    """A negative key overwrote the last record (numpy indexing), a key listed twice replaced
    another record, and a huge key tried to allocate 745 GiB (H15 F3, F6)."""
    root, _ = shard
    lines = (root / "train.idx").read_text().splitlines()
    offset_of = {int(k): int(o) for k, o in (ln.split("\t") for ln in lines)}
    for extra, expected in [
        (f"-1\t{offset_of[0]}", r"line 18: key and offset are not negative"),
        (f"10\t{offset_of[5]}", r"lines 11 and 18: key 10 is listed twice with different offsets"),
        (f"99999999999\t{offset_of[0]}", r"line 18: key 99999999999 is far beyond the 18 records"),
    ]:
        (root / "train.idx").write_text("\n".join([*lines, extra]) + "\n")
        with pytest.raises(DataError, match=expected):
            RecordIOFolder(root)
    (root / "train.idx").write_text("\n".join([*lines, lines[3]]) + "\n")  # the same line twice
    assert len(RecordIOFolder(root)) == 12


def test_an_index_missing_image_keys_the_header_announces_is_warned_about(shard):
    """Header record 0 says how many images there are; 3 lost .idx lines dropped 3 images
    silently (H15 F4)."""
    root, _ = shard
    lines = (root / "train.idx").read_text().splitlines()
    (root / "train.idx").write_text("\n".join(lines[:4] + lines[7:]) + "\n")  # keys 4, 5, 6
    with pytest.warns(UserWarning, match=r"lacks 3 of the 12 image records header record 0 "
                      r"announces \(first: key 4\)"):  # fmt: skip
        assert len(RecordIOFolder(root)) == 9


def test_a_header_record_overstating_the_images_is_named(shard):
    """Identity-range records were read as one-image identities, then failed as unreadable
    images (H15 F5)."""
    root, items = shard
    rec = (root / "train.rec").read_bytes()
    n = len(items) + 1
    first = encode_record(pack_image([n, n + 4], b""))
    assert rec.startswith(first)
    lied = encode_record(pack_image([n + 2, n + 6], b""))  # the same length
    (root / "train.rec").write_bytes(lied + rec[len(first) :])
    with pytest.raises(DataError, match=rf"record {n} holds no image, only labels \(header record "
                       rf"0 says images are records 1 to {n + 1}\)"):  # fmt: skip
        RecordIOFolder(root)


def test_a_corrupt_label_count_and_an_unreadable_image_are_named(tmp_path):
    def payload(k):
        record = pack_image(float(k), jpeg(k) if k != 2 else b"not a jpeg", k)
        return struct.pack("<I", 0xFFFF) + record[4:] if k == 1 else record

    _plain_pack(tmp_path, [0.0, 1.0, 2.0], payload)
    with pytest.raises(DataError, match=r"record 1's header says it holds 65535 labels, more "
                       r"than its \d+ bytes can"):  # fmt: skip
        RecordIOFolder(tmp_path)
    _plain_pack(tmp_path, [0.0, 1.0, 2.0], lambda k: pack_image(float(k), jpeg(k) if k != 2 else b"x" * 40, k))  # fmt: skip
    folder = RecordIOFolder(tmp_path)
    with pytest.raises(DataError, match=r"train\.rec#2' is not a readable image \(no image format "
                       r"PIL knows\)\.$"):  # fmt: skip
        folder.load(folder.abspath(folder.samples[2]))
