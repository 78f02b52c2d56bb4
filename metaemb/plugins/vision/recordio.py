"""InsightFace's MXNet RecordIO datasets (`train.rec` + `train.idx`), read without MXNet.

MS1M-ArcFace, Glint360K, WebFace42M and the other InsightFace training sets ship as one large
`.rec` file of JPEG records and a text `.idx` file (`key<TAB>byte offset` per line). The formats,
parsed here with `struct`:

- dmlc RecordIO record: uint32 magic 0xCED7230A, uint32 `lrecord` (upper 3 bits: continuation
  flag, lower 29: payload length), the payload, zero padding to 4 bytes. A payload that contains
  the magic word at a 4-byte-aligned position is split there into parts flagged 1 (first),
  2 (middle), 3 (last); the reader joins them with the magic word in between.
- MXNet image record payload (`mx.recordio.pack`): header `IfQQ` (flag, label, id, id2; 24 bytes),
  then `flag` float32 labels when flag > 0 (then the first is the identity), then the JPEG bytes.
- InsightFace convention: record 0 is a header record with flag > 0 whose labels are
  (first identity-range key, end): image records are keys 1 … label[0] − 1, the keys after them
  describe identity ranges (not images). Without such a header every indexed key is an image.

Samples are `<identity>/<key>` (virtual paths: identity = the zero-padded integer label), so
splits by identity, trial lists and skipped-sample lists work as for folders. The images are
already aligned (112 × 112): use `model.frontend = "none"`. The index is an in-memory int64
array of offsets; each process opens the `.rec` file once and reads records with `os.pread`,
so DataLoader workers and DDP ranks (the engine's sampler shards the indices) read in parallel.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metaemb.core.errors import DataError
from metaemb.core.plugin.interfaces import Sample, SampleFolder
from metaemb.plugins.vision.imageio import to_rgb8
from metaemb.plugins.vision.jpeg import Decode, check_decode, encoded_jpeg, folder_yields

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_IR = struct.Struct("<IfQQ")  # MXNet IRHeader: flag, label, id, id2


def _split(payload: bytes) -> list[bytes]:
    """Parts of a payload cut at every 4-byte-aligned magic word (the dmlc writer's rule)."""
    parts, start = [], 0
    for pos in range(0, len(payload) - 3, 4):
        if payload[pos : pos + 4] == _MAGIC_BYTES:
            parts.append(payload[start:pos])
            start = pos + 4
    parts.append(payload[start:])
    return parts


def encode_record(payload: bytes) -> bytes:
    """One dmlc RecordIO record (split into flagged parts where the payload holds the magic)."""
    parts = _split(payload)
    out = bytearray()
    for i, part in enumerate(parts):
        flag = 0 if len(parts) == 1 else 1 if i == 0 else 3 if i == len(parts) - 1 else 2
        out += struct.pack("<II", MAGIC, (flag << 29) | len(part)) + part
        out += b"\0" * (-len(part) % 4)
    return bytes(out)


def pack_image(label: float | Sequence[float], image: bytes, key: int = 0) -> bytes:
    """An MXNet image record payload (what `mx.recordio.pack` writes)."""
    if isinstance(label, (int, float)):
        return _IR.pack(0, float(label), key, 0) + image
    labels = np.asarray(label, dtype=np.float32)
    return _IR.pack(len(labels), 0.0, key, 0) + labels.tobytes() + image


def write_recordio(prefix: str | Path, items: Iterable[tuple[int, bytes]]) -> None:
    """Write `prefix.rec` / `prefix.idx` in InsightFace's layout from (identity, JPEG bytes):
    header record 0, image records 1…N, then one identity-range record per identity."""
    items = list(items)
    ranges: dict[int, list[int]] = {}
    for k, (label, _) in enumerate(items, 1):
        ranges.setdefault(label, [k, k + 1])[1] = k + 1
    n = len(items) + 1
    records = [pack_image([n, n + len(ranges)], b"")]
    records += [pack_image(label, jpeg, k) for k, (label, jpeg) in enumerate(items, 1)]
    records += [pack_image(r, b"", n + i) for i, r in enumerate(ranges.values())]
    prefix = Path(prefix)
    offsets, pos = [], 0
    with open(prefix.with_suffix(".rec"), "wb") as f:
        for rec in records:
            data = encode_record(rec)
            offsets.append(pos)
            f.write(data)
            pos += len(data)
    prefix.with_suffix(".idx").write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offsets)))


class RecordFile:
    """Random access to the records of one `.rec` file (opened lazily, once per process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_fd": None, "_pid": -1}  # each worker opens its own

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise DataError(f"cannot open RecordIO file '{self.path}': {exc}.") from None
            self._pid = os.getpid()
        return self._fd

    def read(self, offset: int, key: int | str = "?") -> bytes:
        """The payload of the record at `offset` (multi-part records joined)."""
        fd, parts, pos = self._handle(), [], int(offset)
        while True:
            head = os.pread(fd, 8, pos)
            if len(head) < 8:
                raise DataError(f"'{self.path}': record {key} at byte {pos} is past the end of the file.")  # fmt: skip
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise DataError(
                    f"'{self.path}': no RecordIO record at byte {pos} (record {key}); the .idx "
                    "file does not belong to this .rec file, or the file is corrupt."
                )
            flag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            data = os.pread(fd, length, pos + 8)
            if len(data) < length:
                raise DataError(f"'{self.path}': record {key} is truncated.")
            parts.append(data)
            pos += 8 + length + (-length % 4)
            if flag in (0, 3):
                return _MAGIC_BYTES.join(parts)
            if flag not in (1, 2):
                raise DataError(f"'{self.path}': record {key} has an invalid flag {flag}.")

    def header(self, offset: int, key: int | str = "?") -> tuple[int, np.ndarray, bool]:
        """(flag, labels, whether an image follows the header) of the record at `offset`,
        reading only its first bytes (a scan of millions of records must not read the
        images)."""
        head = os.pread(self._handle(), 8 + 64, int(offset))
        rec, whole = b"", True
        if len(head) >= 8 and struct.unpack_from("<I", head)[0] == MAGIC:
            lrec = struct.unpack_from("<I", head, 4)[0]
            length = lrec & ((1 << 29) - 1)
            first = head[8 : 8 + length]
            if len(first) >= _IR.size and len(first) >= _IR.size + 4 * _IR.unpack_from(first)[0]:
                rec, whole = first, lrec >> 29 == 0
                size = length if whole else None  # a multi-part record: an image follows
        if not rec:  # split inside the header, or a bad record: the full read decides
            rec = self.read(offset, key)
            size = len(rec)
        if len(rec) < _IR.size:
            raise DataError(f"'{self.path}': record {key} is too short for an image header.")
        flag, label, _, _ = _IR.unpack_from(rec)
        start = _IR.size + 4 * flag
        if flag > 0 and (size or len(rec)) < start:
            raise DataError(
                f"'{self.path}': record {key}'s header says it holds {flag} labels, more than "
                f"its {size or len(rec)} bytes can (a corrupt record?)."
            )
        labels = (
            np.frombuffer(rec, np.float32, flag, _IR.size)
            if flag > 0
            else np.array([label], np.float32)
        )
        return flag, labels, size is None or size > (start if flag > 0 else _IR.size)


def read_index(path: Path) -> dict[int, int]:
    """key → byte offset. Keys are record numbers: not negative, each once (the same line twice
    is tolerated), and not far beyond the number of records (a dense table holds them)."""
    if not path.is_file():
        raise DataError(f"RecordIO index '{path}' does not exist (expected beside the .rec file).")
    out: dict[int, int] = {}
    lines: dict[int, int] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            key_text, offset_text = line.split("\t") if "\t" in line else line.split()
            key, offset = int(key_text), int(offset_text)
        except ValueError:
            raise DataError(f"'{path}', line {lineno}: expected 'key<TAB>offset', got {line!r}.") from None  # fmt: skip
        if key < 0 or offset < 0:
            raise DataError(f"'{path}', line {lineno}: key and offset are not negative, got {line!r}.")  # fmt: skip
        if key in out and out[key] != offset:
            raise DataError(
                f"'{path}', lines {lines[key]} and {lineno}: key {key} is listed twice with "
                "different offsets; the index is damaged or two indexes were joined."
            )
        out[key], lines[key] = offset, lineno
    if not out:
        raise DataError(f"RecordIO index '{path}' is empty.")
    biggest = max(out)
    if biggest > 4 * len(out) + 1024:
        raise DataError(
            f"'{path}', line {lines[biggest]}: key {biggest} is far beyond the {len(out)} records "
            "the index lists (keys number the records from 0); the line is damaged."
        )
    return out


class RecordIOFolder(SampleFolder):
    """The images of an InsightFace `<name>.rec` / `<name>.idx` pair in `root` (no MXNet needed)."""

    plain: ClassVar[str] = "image"  # loose files and plain folders, after training
    what: ClassVar[str] = "image"
    yields = staticmethod(folder_yields)  # image: RGB uint8 [3, H, W]; jpeg (decode="device")
    hash_neutral: ClassVar[dict[str, str]] = {"decode": "cpu"}  # runs from before the option
    internal: ClassVar[frozenset[str]] = frozenset({"samples"})

    def __init__(self, root: str | Path, name: str = "train", samples: Sequence[Sample] | None = None, decode: Decode = "cpu") -> None:  # fmt: skip
        root = Path(root)
        self.name = name
        self.decode = check_decode(decode)
        self.rec = RecordFile(root / f"{name}.rec")
        if not self.rec.path.is_file():
            raise DataError(f"RecordIO file '{self.rec.path}' does not exist.")
        index = read_index(root / f"{name}.idx")
        self.offsets = np.full(max(index) + 1, -1, dtype=np.int64)
        for k, o in index.items():
            self.offsets[k] = o
        super().__init__(root, samples)

    def _scan(self) -> list[Sample]:
        keys = np.flatnonzero(self.offsets >= 0)
        images_end = None
        if keys.size and keys[0] == 0:
            flag, labels, _ = self.rec.header(int(self.offsets[0]), 0)
            if flag > 0:  # InsightFace's header record: images are 1 … labels[0] − 1
                images_end = int(labels[0])
                keys = keys[(keys >= 1) & (keys < images_end)]
                self._warn_missing_keys(images_end, len(keys))
        samples = []
        for k in keys.tolist():
            _, labels, has_image = self.rec.header(int(self.offsets[k]), k)
            if not has_image:
                where = f" (header record 0 says images are records 1 to {images_end - 1})" if images_end else ""  # fmt: skip
                raise DataError(
                    f"'{self.rec.path}': record {k} holds no image, only labels{where}; the "
                    ".rec and .idx files do not match, or record 0 is wrong."
                )
            identity = f"{self._class_of(float(labels[0]), k):07d}"
            samples.append(Sample(f"{identity}/{k}", identity, -1))
        if not samples:
            raise DataError(f"RecordIO file '{self.rec.path}' holds no image records.")
        return samples

    def _class_of(self, label: float, key: int) -> int:
        """An image's label is its class number: a whole number ≥ 0 stored as a float."""
        if not math.isfinite(label) or label < 0 or label != int(label):
            raise DataError(
                f"'{self.rec.path}': record {key} has label {label:g}, not a class number (a "
                "whole number ≥ 0); distinct labels would merge into one identity."
            )
        return int(label)

    def _warn_missing_keys(self, images_end: int, found: int) -> None:
        expected = images_end - 1
        if found < expected:
            listed = set(np.flatnonzero(self.offsets >= 0).tolist())
            first = next(k for k in range(1, images_end) if k not in listed)
            warnings.warn(
                f"'{self.rec.path.with_suffix('.idx')}' lacks {expected - found} of the "
                f"{expected} image records header record 0 announces (first: key {first}); "
                "those images are left out. Is the index cut short?",
                stacklevel=2,
            )

    def load(self, path: Path) -> Tensor:
        key = int(Path(path).name)
        if not 0 <= key < len(self.offsets) or self.offsets[key] < 0:
            raise DataError(f"'{self.rec.path}': no record {key} in its index.")
        rec = self.rec.read(int(self.offsets[key]), key)
        flag = _IR.unpack_from(rec)[0]
        start = _IR.size + 4 * flag
        where = f"{self.rec.path}#{key}"
        if self.decode == "device":  # JPEG bytes, decoded on the training GPU (jpeg.py)
            return encoded_jpeg(rec[start:], where)
        try:
            with Image.open(io.BytesIO(rec[start:])) as img:
                img.load()
                array = to_rgb8(img, Path(where))
        except UnidentifiedImageError:
            raise DataError(f"image record '{where}' is not a readable image (no image format PIL knows).") from None  # fmt: skip
        except (OSError, ValueError) as exc:
            raise DataError(f"image record '{where}' is not a readable image ({exc}).") from None
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
