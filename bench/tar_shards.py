"""Tar shards at scale: indexing time (cold, cached), index memory, and random-access reads
against the same images as loose files (`image-tar` against `image`).

Generates `--shards` × `--per-shard` samples (112 × 112 JPEG + `.cls`, 1000 identities) once
into `--dir`, and the first `--loose` of them as an `<identity>/<file>.jpg` tree. Each timing is
process CPU time (a shared machine's load inflates wall time) with the wall time beside it.

    python bench/tar_shards.py                                   # 20 × 5000 = 100 k samples
    python bench/tar_shards.py --shards 4 --per-shard 1000       # CI size
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import tarfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def generate(out: Path, shards: int, per_shard: int, loose: int) -> None:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(64):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buf, "JPEG")
        images.append(buf.getvalue())
    (out / "shards").mkdir(parents=True)
    k = 0
    for s in range(shards):
        with tarfile.open(out / "shards" / f"shard-{s:06d}.tar", "w") as tf:
            for _ in range(per_shard):
                ident, data = k % 1000, images[k % 64]
                for name, blob in ((f"{k:08d}.cls", str(ident).encode()), (f"{k:08d}.jpg", data)):
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    tf.addfile(info, io.BytesIO(blob))
                if k < loose:
                    d = out / "files" / f"{ident:04d}"
                    d.mkdir(parents=True, exist_ok=True)
                    (d / f"{k:08d}.jpg").write_bytes(data)
                k += 1


def timed(fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/metaemb-bench-tar"))
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--per-shard", type=int, default=5000)
    ap.add_argument("--loose", type=int, default=20000)
    ap.add_argument("--reads", type=int, default=20000)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in DataLoader workers
    from metaemb.plugins.vision.folder import ImageFolder
    from metaemb.plugins.vision.tarshards import ImageTarFolder

    tag = f"{args.shards}x{args.per_shard}"
    data = args.dir / tag
    if not (data / "shards").exists():
        generate(data, args.shards, args.per_shard, args.loose)
    n = args.shards * args.per_shard
    size = sum(p.stat().st_size for p in (data / "shards").iterdir())
    print(f"{n} samples in {args.shards} shards ({size / 1e9:.2f} GB), {os.cpu_count()} CPUs")
    cache = args.dir / f"cache-{tag}"
    for workers in ("1", ""):
        shutil.rmtree(cache, ignore_errors=True)
        os.environ["METAEMB_INDEX_WORKERS"] = workers
        _, c, w = timed(lambda: ImageTarFolder(data / "shards", cache_dir=cache))
        label = "1 process" if workers else "default processes"
        print(f"cold index ({label}): {w:.2f} s wall, {c:.2f} s CPU of this process, {n / w:,.0f} samples/s")  # fmt: skip
    os.environ.pop("METAEMB_INDEX_WORKERS", None)
    folder, c, w = timed(lambda: ImageTarFolder(data / "shards", cache_dir=cache))
    assert folder.index_hits == args.shards
    tracemalloc.start()
    again = ImageTarFolder(data / "shards", cache_dir=cache)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del again
    print(f"cached index: {w:.2f} s wall, {c:.2f} s CPU; Python memory of folder + index {peak / n:.0f} B/sample")  # fmt: skip
    loose = ImageFolder(data / "files")
    rand = random.Random(0)
    ti = [rand.randrange(len(folder)) for _ in range(args.reads)]
    li = [rand.randrange(len(loose)) for _ in range(args.reads)]
    m = min(5000, args.reads)
    for rep in range(2):
        _, c1, _ = timed(lambda: [folder.read_bytes(folder.abspath(folder.samples[i])) for i in ti])
        _, c2, _ = timed(lambda: [loose.abspath(loose.samples[i]).read_bytes() for i in li])
        _, c3, _ = timed(lambda: [folder.load(folder.abspath(folder.samples[i])) for i in ti[:m]])
        _, c4, _ = timed(lambda: [loose.load(loose.abspath(loose.samples[i])) for i in li[:m]])
        print(
            f"pass {rep + 1}: raw reads/s (CPU) tar {args.reads / c1:,.0f}, files {args.reads / c2:,.0f} "
            f"(ratio {c2 / c1:.2f}); decoded samples/s tar {m / c3:,.0f}, files {m / c4:,.0f} "
            f"(ratio {c4 / c3:.2f})"
        )


if __name__ == "__main__":
    main()
