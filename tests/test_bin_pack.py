"""InsightFace verification packs (`metaemb unpack-bin`): the published pairs of CFP-FP or
AgeDB-30 come as pickles of (encoded images, is-same flags); they are unpacked without running
code and scored like any list (F4 F4)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from helpers import run_cli

from metaemb.core.errors import DataError
from metaemb.plugins.vision.bin_pack import read_pack, write_pack


def pairs_of(data, n: int) -> tuple[list[bytes], list[bool]]:
    """n pairs of the folder's files, alternately same and different identities."""
    ids = sorted(p for p in data.iterdir() if p.is_dir())
    images, flags = [], []
    for k in range(n):
        a = ids[k % len(ids)]
        b = a if k % 2 == 0 else ids[(k + 1) % len(ids)]
        fa, fb = sorted(a.iterdir())[0], sorted(b.iterdir())[1]
        images += [fa.read_bytes(), fb.read_bytes()]
        flags.append(k % 2 == 0)
    return images, flags


def test_a_pack_unpacks_in_its_order_and_evaluates_in_its_folds(tiny_face_run, tmp_path, capsys):
    data, run = tiny_face_run
    images, flags = pairs_of(data, 12)
    pack = tmp_path / "cfp_fp.bin"
    write_pack(pack, images, flags)
    out = tmp_path / "cfp"
    code, text, err = run_cli(["unpack-bin", pack, "--out", out], capsys)
    assert code == 0, err
    listed = out / "pairs_list.txt"
    lines = listed.read_text().splitlines()
    assert [int(line.split()[0]) for line in lines] == [int(f) for f in flags]
    first = lines[0].split()
    assert (out / first[1]).read_bytes() == images[0] and (out / first[2]).read_bytes() == images[1]
    assert f"--trials {listed} --folds 10" in " ".join(text.split())
    code, _, err = run_cli(["evaluate", run, "--data", out, "--trials", listed, "--folds", "2",
                            "--out", tmp_path / "ev", "--workers", "0"], capsys)  # fmt: skip
    assert code == 0, err
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (result["n_target"], result["n_nontarget"], result["folds"]) == (6, 6, 2)
    # the pack given as a trial list is said to be one, with the way to unpack it
    code, _, err = run_cli(["evaluate", run, "--data", out, "--trials", pack, "--workers", "0"],
                           capsys)  # fmt: skip
    said = " ".join(err.split())
    assert code == 2 and "is a binary Python pickle" in said and "metaemb unpack-bin" in said


def test_numpy_arrays_of_bytes_and_flags_are_read(tmp_path):
    """Packs written from numpy hold arrays: rebuilt by numpy's own globals, allowed."""
    jpeg = b"\xff\xd8\xff\xe0" + bytes(20)
    pack = tmp_path / "p.bin"
    with open(pack, "wb") as f:
        arrays = [np.frombuffer(jpeg, dtype=np.uint8)] * 4
        pickle.dump((arrays, np.array([True, False])), f, protocol=2)
    images, flags = read_pack(pack)
    assert images == [jpeg] * 4 and flags == [True, False]


class Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_a_pack_that_would_run_code_is_refused_unrun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pack = tmp_path / "evil.bin"
    pack.write_bytes(pickle.dumps(([Payload()], [True])))
    with pytest.raises(DataError, match=r"holds a Python object of '(posix|os)\.system'.*refused"):
        read_pack(pack)
    assert not (tmp_path / "PWNED").exists()
    pack.write_bytes(pickle.dumps({"images": []}))
    with pytest.raises(DataError, match="holds a dict, not a verification pack"):
        read_pack(pack)
    write_pack(pack, [b"\xff\xd8"] * 3, [True])
    with pytest.raises(DataError, match="3 images for 1 pairs"):
        read_pack(pack)


def test_a_pack_asking_for_any_memory_or_holding_no_image_is_refused_before_writing(tmp_path):
    """A few bytes can make numpy's rebuild ask for terabytes (a MemoryError traceback), and an
    image that is not JPEG or PNG was found pair by pair, after files were written (R12 F9)."""
    from metaemb.plugins.vision.bin_pack import unpack

    huge = tmp_path / "huge.bin"

    class Huge:
        def __reduce__(self):
            from numpy._core.multiarray import _reconstruct

            return (_reconstruct, (np.ndarray, (10**13,), b"b"))

    huge.write_bytes(pickle.dumps(([Huge()], [True])))
    with pytest.raises(DataError, match=r"asks for more memory|not a readable pickle"):
        read_pack(huge)
    mixed = tmp_path / "mixed.bin"
    write_pack(mixed, [b"\xff\xd8", b"\xff\xd8", b"\xff\xd8", b"GIF89a"], [True, False])
    with pytest.raises(DataError, match="image 3 is neither JPEG nor PNG"):
        unpack(mixed, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
