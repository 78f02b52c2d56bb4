"""What one training epoch of each speaker recipe costs on this device, measured.

For each example config (x-vector + PLDA, ECAPA + AAM, GME) the engine is built as `metaemb
train --config FILE` builds it (`resolve` + `Trainer.setup()`), a few batches of the recipe's
batch size are drawn once from small demo data, and full training steps (`Trainer.train_batch`:
augmentation chain on the device, fbank, network, loss, backward, optimizer) are timed, with the
recipe's augmentation and with `train.augment = []` interleaved. From the median step it prints
crops/s and what one epoch of VoxCeleb2 dev (1,092,009 utterances, one crop each) would cost in
compute alone; the data pipeline (bench/data_pipeline.py) must keep up for that to hold.

The classifier is sized by the demo's speakers, not VoxCeleb2's 5,994 (17,982 with speed
perturbation); at these embedding sizes that matrix is a small part of a step.

    python bench/recipe_cost.py                       # CUDA when present, else CPU (slow)
    python bench/recipe_cost.py --steps 20 --configs examples/configs/speaker-ecapa-aam.toml
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metaemb.core.config import resolve
from metaemb.core.data.loaders import make_loader
from metaemb.core.train.engine import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [
    ROOT / "examples/configs/speaker-xvector-plda.toml",
    ROOT / "examples/configs/speaker-ecapa-aam.toml",
    ROOT / "examples/configs/speaker-gme.toml",
]
VOXCELEB2_DEV = 1_092_009
DEMO = ["demo.speakers=64", "demo.utterances_per_speaker=8"]


def build(config: Path, sets: list[str], device: str, runs: Path) -> Trainer:
    cfg = resolve("speaker", config, [*DEMO, *sets])
    trainer = Trainer(cfg, runs_root=runs, device=device, console=Console(quiet=True), workers=0)
    trainer.setup()
    trainer.step_module.train()
    return trainer


def draw(trainer: Trainer, n: int) -> list:
    loader = make_loader(trainer.train_set, 0, batch_sampler=trainer.sampler)
    out: list = []
    while len(out) < n:
        out.extend(b for b in loader if len(b) >= 2)
    return out[:n]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--configs", nargs="+", type=Path, default=CONFIGS)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    ap.add_argument("--batch-size", type=int, default=0, help="0: the recipe's own")
    args = ap.parse_args()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({name}), torch {torch.__version__}; median of {args.steps} steps")
    print(f"{'recipe':22s} {'augment':8s} {'batch':>5s} {'ms/step':>8s} {'crops/s':>8s} "
          f"{'VoxCeleb2 epoch':>16s}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            sets = [f"train.batch_size={args.batch_size}"] if args.batch_size else []
            variants = {
                "recipe": build(config, sets, args.device, Path(tmp)),
                "none": build(config, [*sets, "train.augment=[]"], args.device, Path(tmp)),
            }
            data = {k: draw(t, min(args.steps, 4)) for k, t in variants.items()}
            times: dict[str, list[float]] = {k: [] for k in variants}
            for k, t in variants.items():  # warm-up: cuDNN autotuning, allocator
                for b in data[k][:2]:
                    t.train_batch(b)
            for i in range(args.steps):
                for k, t in variants.items():
                    batch = data[k][i % len(data[k])]
                    sync(t.device)
                    t0 = time.perf_counter()
                    t.train_batch(batch)
                    sync(t.device)
                    times[k].append(time.perf_counter() - t0)
            for k, t in variants.items():
                step = statistics.median(times[k])
                batch = len(data[k][0])
                rate = batch / step
                minutes = VOXCELEB2_DEV / rate / 60
                label = f"{config.stem.removeprefix('speaker-')} ({t.config.model.backbone})"
                aug = "recipe" if k == "recipe" else "off"
                print(f"{label:22s} {aug:8s} {batch:5d} {1000 * step:8.1f} {rate:8.0f} "
                      f"{minutes:12.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()
