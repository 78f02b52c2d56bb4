"""Samples/s the training DataLoader path delivers, against plain PyTorch references.

metaemb: the engine's own path — SampleFolder.load (decode) → frontend (cached) →
features.prepare (resize + augmentation for images, random crop for audio) → Features.collate —
through `EpochLoader` (what `Trainer.train_epoch` uses: with workers, one loader whose workers
persist across epochs, reseeded per epoch), on the modality's demo data, shuffled batches.

references, the same files, same batch size and worker counts, default DataLoader:
- images: torchvision `ImageFolder` + v2 transforms (decode, resize to the backbone's input size,
  float, normalise) — what a user of torchvision writes;
- audio:  a plain soundfile Dataset (`soundfile.read` float32 + the same random crop) and the
  default collate.

For 0, 1 and 2 workers, each loader is iterated for two passes (epochs). The reference builds a
new default DataLoader per pass (workers start again); with workers a third row, "reference
(persistent)", keeps one DataLoader with persistent_workers=True. Pass 1 includes worker start-up;
"vs ref" compares pass 2 with the default reference's pass 2. The loaders alternate, so load from
other processes hits all alike; --repeat runs everything again and prints each repeat. "cpu us"
is pass 2's CPU time of the benchmark's own process per sample: with 0 workers the whole item's
cost, steadier than wall time on a shared machine; with workers only the main process's share.

    python bench/data_pipeline.py                 # CI-sized demo data
    python bench/data_pipeline.py --full-data     # the default demo datasets
    python bench/data_pipeline.py --modality speaker --set 'demo.seconds=[4.0, 12.0]'
                                                  # VoxCeleb-like utterance lengths (mean 8 s)
"""

from __future__ import annotations

import argparse
import random
import time

import soundfile as sf
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from metaemb.core.config import resolve
from metaemb.core.data.loaders import EpochLoader
from metaemb.core.data.pipeline import Components, data_root

SMALL = {
    "face": ["demo.identities=40", "demo.images_per_identity=8"],
    "speaker": ["demo.speakers=40", "demo.utterances_per_speaker=8"],
}


class SoundfileCrops(Dataset):
    """The plain reference: read a WAV with soundfile, take one random crop (tiled if short)."""

    def __init__(self, paths: list, labels: list[int], crop: int) -> None:
        self.paths, self.labels, self.crop = paths, labels, crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        wave, _ = sf.read(self.paths[i], dtype="float32")
        x = torch.from_numpy(wave)
        if x.numel() < self.crop:
            x = x.repeat(self.crop // x.numel() + 1)
        start = random.randint(0, x.numel() - self.crop)
        return x[start : start + self.crop], self.labels[i]


def reference(
    modality: str, parts: Components, workers: int, batch: int, persistent: bool = False
) -> DataLoader:
    folder = parts.folder
    kw = {"num_workers": workers, "batch_size": batch, "shuffle": True}
    if workers > 0:
        kw["prefetch_factor"] = 4
        kw["persistent_workers"] = persistent
    if modality == "face":
        from torchvision import datasets
        from torchvision.transforms import v2

        size = parts.features.image_size
        tf = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize((size, size), antialias=True),
                v2.ToDtype(torch.float32, scale=True),
                v2.RandomHorizontalFlip(),
                v2.Normalize([0.5] * 3, [0.5] * 3),
            ]
        )
        return DataLoader(datasets.ImageFolder(str(parts.root), transform=tf), **kw)
    paths = [folder.abspath(s) for s in folder.samples]
    ds = SoundfileCrops(paths, folder.labels, parts.features.crop_samples)
    return DataLoader(ds, **kw)


def one_pass(loader) -> tuple[int, float, float]:
    """(samples, wall seconds, CPU seconds of this process) of one pass."""
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for b in loader:
        n += len(b[1]) if isinstance(b, (list, tuple)) else len(b)
    return n, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--modality", nargs="+", default=["face", "speaker"])
    ap.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--full-data", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="run the whole comparison this often")
    ap.add_argument("--set", action="append", default=[], help="a config setting (repeatable)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'modality':8s} {'loader':26s} {'workers':>7s} {'samples':>7s} "
          f"{'pass1 /s':>9s} {'pass2 /s':>9s} {'vs ref':>7s} {'cpu us':>7s}")  # fmt: skip
    for _ in range(args.repeat):
        for modality in args.modality:
            sets = [*([] if args.full_data else SMALL[modality]), *args.set]
            cfg = resolve(modality, None, [f"train.batch_size={args.batch_size}", *sets])
            parts = Components.build(cfg, data_root(cfg))
            for workers in args.workers:
                compare(modality, parts, workers, args.batch_size)


def compare(modality: str, parts: Components, workers: int, batch: int) -> None:
    """Two interleaved passes of each loader; one line per loader."""
    names = ["metaemb (train)", "reference"] + (["reference (persistent)"] if workers else [])
    rates: dict[str, list[float]] = {name: [] for name in names}
    counts: dict[str, int] = {}
    cpu: dict[str, float] = {}  # pass 2, µs per sample, this process only
    ds = parts.dataset(parts.folder, train=True)
    ours = EpochLoader(ds, workers, BatchSampler(RandomSampler(ds), batch, False), seed=0)
    persistent = reference(modality, parts, workers, batch, persistent=True) if workers else None
    try:
        for epoch in range(2):  # interleaved passes
            for name in names:
                if name == "metaemb (train)":
                    loader = ours(epoch)
                elif name == "reference":
                    loader = reference(modality, parts, workers, batch)
                else:
                    loader = persistent
                n, s, c = one_pass(loader)
                counts[name] = n
                rates[name].append(n / s)
                cpu[name] = c / n * 1e6
    finally:
        ours.close()
        del persistent
    ref = rates["reference"][1]
    for name, r in rates.items():
        print(f"{modality:8s} {name:26s} {workers:7d} {counts[name]:7d} "
              f"{r[0]:9.0f} {r[1]:9.0f} {r[1] / ref:7.2f} {cpu[name]:7.0f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
