"""Training samples/s of the engine on the best device, one switch at a time, against a plain
bf16 PyTorch loop on the same device.

Switches (the config keys the engine reads): `train.amp` (bf16 autocast, CUDA only),
`train.channels_last` (image models, CUDA only), `train.compile` (torch.compile of the backbone),
and — measured separately, the engine switch being `folder.decode = "device"` — JPEG decoding
with `torchvision.io.decode_jpeg` on the CPU against `device="cuda"`. Audio fbank features always
run on the training device (Features.forward), so the speaker rows include them.

On a machine without CUDA the script still runs: GPU-only switches are skipped (and said so),
the rest is measured on the CPU, so CI can run it. Batches are drawn once through the engine's
own DataLoader and reused, so the numbers are the device's, not the data pipeline's
(bench/data_pipeline.py measures that).

    python bench/gpu_throughput.py                     # auto device, CI-sized
    python bench/gpu_throughput.py --steps 50 --batch-size 128 --compile
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from metaemb.core.config import resolve
from metaemb.core.data.loaders import make_loader
from metaemb.core.train.engine import Trainer

SMALL = {
    "face": ["demo.identities=24", "demo.images_per_identity=8"],
    "speaker": ["demo.speakers=24", "demo.utterances_per_speaker=8"],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_rate(modality, sets, device, steps, runs) -> tuple[float, list, Trainer]:
    cfg = resolve(modality, None, sets)
    trainer = Trainer(cfg, runs_root=runs, device=str(device), console=Console(quiet=True),
                      workers=0)  # fmt: skip
    trainer.setup()
    loader = make_loader(trainer.train_set, 0, batch_sampler=trainer.sampler)
    data = [b for _, b in zip(range(4), loader, strict=False) if len(b) >= 2]
    trainer.step_module.train()
    for b in data[:2]:  # warm-up (and compilation)
        trainer.train_batch(b)
    sync(device)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        trainer.train_batch(data[i % len(data)])
        sync(device)
        times.append(time.perf_counter() - t0)
    return len(data[0]) / statistics.median(times), data, trainer


def plain_rate(trainer: Trainer, data: list, device, steps: int, image: bool) -> float:
    """A hand-written softmax loop: bf16 autocast (+ channels_last for images) on CUDA."""
    model = copy.deepcopy(trainer.model).to(device).train()
    fc = torch.nn.Linear(trainer.config.model.dim, trainer.num_classes).to(device)
    cuda = device.type == "cuda"
    if cuda and image:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(list(model.parameters()) + list(fc.parameters()), lr=0.01, momentum=0.9)

    def step(b):
        x = b.inputs.to(device, non_blocking=True)
        if cuda and image:
            x = x.contiguous(memory_format=torch.channels_last)
        lengths = b.lengths.to(device) if b.lengths is not None else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(fc(model(x, lengths)).float(), b.labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in data[:2]:
        step(b)
    sync(device)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(data[i % len(data)])
        sync(device)
        times.append(time.perf_counter() - t0)
    return len(data[0]) / statistics.median(times)


def jpeg_rates(root: Path, device: torch.device, limit: int = 256) -> dict[str, float]:
    from torchvision.io import decode_jpeg, read_file

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:limit]
    if not files:
        return {"(no JPEG files in the data: decoding not measured)": float("nan")}
    blobs = [read_file(str(p)) for p in files]
    out = {}
    t0 = time.perf_counter()
    for b in blobs:
        decode_jpeg(b)
    out["decode_jpeg cpu"] = len(blobs) / (time.perf_counter() - t0)
    if device.type == "cuda":
        decode_jpeg(blobs[:8], device="cuda")
        sync(device)
        t0 = time.perf_counter()
        decode_jpeg(blobs, device="cuda")  # batched
        sync(device)
        out["decode_jpeg cuda (batched)"] = len(blobs) / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--modality", nargs="+", default=["face", "speaker"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--compile", action="store_true", help="also measure train.compile (slow start)"
    )
    ap.add_argument("--full-data", action="store_true")
    args = ap.parse_args()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not cuda:
        print("no CUDA: bf16 autocast, channels_last and GPU JPEG decoding are skipped")
    with tempfile.TemporaryDirectory() as tmp:
        for modality in args.modality:
            image = modality == "face"
            base = [f"train.batch_size={args.batch_size}"]
            base += [] if args.full_data else SMALL.get(modality, [])
            variants = [
                ("engine, all switches off", ["train.amp=false", "train.channels_last=false"])
            ]
            if cuda:
                variants.append(
                    ("engine, amp (bf16)", ["train.amp=true", "train.channels_last=false"])
                )
                if image:
                    variants.append(("engine, amp + channels_last", ["train.amp=true", "train.channels_last=true"]))  # fmt: skip
            if args.compile:
                variants.append(("engine, defaults + compile", ["train.compile=true"]))
            plain = None
            for label, sets in variants:
                rate, data, trainer = engine_rate(modality, [*base, *sets], device, args.steps,
                                                  Path(tmp))  # fmt: skip
                if plain is None:
                    plain = plain_rate(trainer, data, device, args.steps, image)
                    what = "plain loop (bf16 + channels_last)" if cuda else "plain loop (fp32)"
                    print(f"{modality:8s} {what:36s} {plain:9.1f} samples/s  1.00")
                print(f"{modality:8s} {label:36s} {rate:9.1f} samples/s  {rate / plain:.2f}")
            if image:
                for k, v in jpeg_rates(trainer.parts.root, device).items():
                    print(f"{modality:8s} {k:36s} {v:9.1f} images/s")


if __name__ == "__main__":
    main()
