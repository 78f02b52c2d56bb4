"""Scanning a large `<identity>/<sample>` tree: full scan, cached manifest, and references.

Generates a tree of empty files (default 20 000, CI-sized; `--files 1000000` for the 1 M-file
measurement in docs/benchmarks.md), dates its folders back a minute (as for a tree that was not
just written), then times in fresh subprocesses, so each peak memory is its own:

- `os.walk`       the plain listing every scan must do (reference);
- `torchvision`   torchvision.datasets.folder.make_dataset, what ImageFolder users run (reference);
- `full`          metaemb's SampleFolder scan with the manifest off (sorted, links tracked);
- `first`         the same scan writing its manifest;
- `cached`        a second scan that reads the manifest;
- `changed`       a scan after one file was added to one identity folder (full rescan).

Prints seconds and the peak resident memory above the process's after-import baseline.

    python bench/scan.py                      # 20 000 files
    python bench/scan.py --files 1000000      # the 1 M-file tree (about 1 GB of inodes, minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, root: str) -> None:
    """One measurement in this process; prints JSON."""
    if mode == "torchvision":
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    else:
        from metaemb.plugins.vision.folder import ImageFolder
    base = rss_mb()
    t0 = time.perf_counter()
    if mode == "walk":
        n = sum(len(files) for _, _, files in os.walk(root))
    elif mode == "torchvision":
        _, idx = find_classes(root)
        n = len(make_dataset(root, idx, extensions=IMG_EXTENSIONS))
    else:
        n = len(ImageFolder(root).samples)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"mode": mode, "n": n, "seconds": seconds, "peak_mb": peak - base}))


def generate(root: Path, files: int, per_identity: int) -> float:
    t0 = time.perf_counter()
    identities = max(1, files // per_identity)
    made = 0
    for i in range(identities):
        d = root / f"id{i:06d}"
        d.mkdir(parents=True)
        k = per_identity if i < identities - 1 else files - made
        for j in range(k):
            open(d / f"{j:05d}.jpg", "wb").close()
        made += k
    past = time.time() - 60
    for dirpath, _, _ in os.walk(root):
        os.utime(dirpath, (past, past))
    return time.perf_counter() - t0


def run(mode: str, root: Path, cache: Path, manifest: bool) -> dict:
    env = {
        **os.environ,
        "METAEMB_CACHE": str(cache),
        "METAEMB_MANIFEST": "1" if manifest else "0",
        "METAEMB_MANIFEST_MIN_FILES": "0",
        "PYTHONWARNINGS": "ignore",
    }
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(root)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--per-identity", type=int, default=100)
    ap.add_argument("--dir", type=Path, default=None, help="where to build the tree (default: tmp)")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "ROOT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="metaemb-scan-", dir=args.dir))
    try:
        root, cache = work / "tree", work / "cache"
        gen = generate(root, args.files, args.per_identity)
        print(f"generated {args.files} empty files in {args.files // args.per_identity} identity "
              f"folders in {gen:.1f} s")  # fmt: skip
        rows = [
            ("os.walk (reference)", run("walk", root, cache, False)),
            ("torchvision make_dataset (reference)", run("torchvision", root, cache, False)),
            ("metaemb full scan (no manifest)", run("scan", root, cache, False)),
            ("metaemb first scan (writes manifest)", run("scan", root, cache, True)),
            ("metaemb cached scan (reads manifest)", run("scan", root, cache, True)),
        ]
        open(root / "id000000" / "new.jpg", "wb").close()
        rows.append(("metaemb after one file added (rescan)", run("scan", root, cache, True)))
        manifests = list((cache / "manifests").glob("*.manifest"))
        size = sum(p.stat().st_size for p in manifests) / 2**20
        print(f"{'':40s} {'samples':>9s} {'seconds':>9s} {'peak MB':>9s}")
        for name, r in rows:
            print(f"{name:40s} {r['n']:9d} {r['seconds']:9.2f} {r['peak_mb']:9.0f}")
        full, cached = rows[2][1]["seconds"], rows[4][1]["seconds"]
        print(f"manifest: {size:.1f} MB; cached / full scan time: {cached / full:.3f}; "
              f"full scan / torchvision: {full / rows[1][1]['seconds']:.2f}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
