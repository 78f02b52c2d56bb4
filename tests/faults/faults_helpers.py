"""Helpers of the fault catalogue (a uniquely named module: `conftest` is ambiguous when pytest
also collects the example plugins' tests)."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/helpers.py

import helpers


def expect_error(args: list, capsys, *fragments: str) -> str:
    """Run `metaemb ARGS`: exit status 2, no traceback, one paragraph naming `fragments`."""
    code, out, err = helpers.run_cli(args, capsys)
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = err.splitlines()  # warnings the command gave before it stopped come first
    start = next((i for i, line in enumerate(lines) if line.startswith("error: ")), 0)
    err = "\n".join(lines[start:])
    message = " ".join(err.split())
    assert message.startswith("error: "), err
    assert "\n\n" not in err.strip(), f"not one paragraph: {err!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def train_tiny(data: Path, runs: Path, *extra: str, capsys=None) -> tuple[int, str, str]:
    """One epoch of a tiny face model on `data` (CPU, no workers)."""
    args = ["train", "--modality", "face", "--data", data, "--runs", runs, "--workers", "0"]
    sets = ["train.epochs=1", "train.batch_size=8", "model.dim=8", "features.image_size=32"]
    sets += ["eval.max_targets=20", "eval.nontargets=20", f"data.cache_dir={runs / 'cache'}"]
    for s in [*sets, *extra]:
        args += ["--set", s]
    return helpers.run_cli(args, capsys)


def png16(path: Path, array: np.ndarray, color_type: int, size: tuple[int, int] | None = None):
    """A 16-bit PNG written by hand (PIL cannot write 16-bit colour): color type 0 grey, 2 RGB,
    4 grey+alpha, 6 RGBA. `size` overrides the header (for header-only huge images)."""
    h, w = array.shape[:2]
    raw = b"".join(b"\0" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    W, H = size or (w, h)
    header = struct.pack(">IIBBBBB", W, H, 16, color_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path
