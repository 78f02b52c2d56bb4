"""One training step of the real engine against a hand-written PyTorch loop, interleaved.

For each (modality, objective) the engine is built exactly as `metaemb train` builds it
(`resolve` + `Trainer.setup()`: configured model, head, objective, classifier, sampler, optimizer,
scheduler), a few batches are drawn once through the engine's own sampler and DataLoader, and then

- engine: `Trainer.train_batch(batch)` (device transfer, autocast context, TrainStep with its
  augmenter/teacher hooks, finiteness check, backward, clipping, optimizer and scheduler);
- plain:  a hand-written loop over a deep copy of the same model and classifier and the same
  batch: `model(x)` → loss → `zero_grad` / `backward` / `step` with the same optimizer class and
  hyper-parameters, and the same gradient clipping. The loss is `F.cross_entropy(classifier(embedding), labels)` for softmax (fully
  hand-written) and the objective's own loss function for the others (so the ratio is the
  engine's overhead, not a different loss);

alternate step by step (engine, plain, engine, plain …), so load from other processes hits both
alike. Reported per step: the median wall time and the median process CPU time; the engine/plain
ratio is plain time ÷ engine time (1.00 = parity; the goal is ≥ 0.97). Each objective's engine
step is also interleaved with a softmax engine step of the same modality (its own trainer and
batches), and their ratio is the "vs softmax" column (GME goal ≤ 1.2×), in wall and CPU time.

    python bench/train_step.py                               # CI-sized: tiny demo data, 12 steps
    python bench/train_step.py --modality face --steps 40 --full-data
"""

from __future__ import annotations

import argparse
import copy
import inspect
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from metaemb.core.config import resolve
from metaemb.core.data.loaders import make_loader
from metaemb.core.plugin.manager import registry
from metaemb.core.train.engine import Trainer

GME = ("gme-bxe", "gme-pseudolikelihood", "gme-softmax")
SKIP = {"distill": "needs a trained teacher run"}
SMALL = {
    "face": ["demo.identities=24", "demo.images_per_identity=8", "demo.image_size=64"],
    "speaker": ["demo.speakers=24", "demo.utterances_per_speaker=8"],
}


def build(modality: str, objective: str, sets: list[str], runs: Path) -> Trainer:
    extra = ["model.head=gme"] if objective in GME else []
    cfg = resolve(modality, None, [f"train.objective={objective}", *extra, *sets])
    trainer = Trainer(cfg, runs_root=runs, device="cpu", console=Console(quiet=True), workers=0)
    trainer.setup()
    return trainer


def batches(trainer: Trainer, n: int) -> list:
    loader = make_loader(trainer.train_set, 0, batch_sampler=trainer.sampler)
    out = []
    while len(out) < n:
        for b in loader:
            if len(b) >= 2:
                out.append(b)
            if len(out) == n:
                break
    return out


def plain_step_fn(trainer: Trainer, name: str):
    """A hand-written step over copies of the engine's model and classifier."""
    model = copy.deepcopy(trainer.model).train()
    classifier = copy.deepcopy(trainer.classifier)
    objective = trainer.objective
    params = list(model.parameters()) + (list(classifier.parameters()) if classifier else [])
    cls = type(trainer.optimizer)
    accepted = inspect.signature(cls).parameters  # defaults may hold keys __init__ does not take
    opt = cls(params, **{k: v for k, v in trainer.optimizer.defaults.items() if k in accepted})
    clip = trainer.config.train.grad_clip

    def step(batch) -> float:
        x = batch.inputs
        lengths = batch.lengths
        out = model(x, lengths)
        if name == "softmax":
            loss = F.cross_entropy(classifier(out), batch.labels)
        else:
            loss = objective(out, batch.labels, classifier)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:  # the same recipe: gradient clipping when the config asks for it
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        return float(loss.detach())

    return step


def measure(
    modality: str, name: str, sets: list[str], steps: int, runs: Path, softmax: tuple | None
) -> dict:
    """Interleaved medians of the engine step, the plain step and (when given) the softmax
    engine step of the same modality — the reference of the "vs softmax" column."""
    trainer = build(modality, name, sets, runs)
    data = batches(trainer, min(steps, 8))
    plain = plain_step_fn(trainer, name)
    trainer.step_module.train()
    fns = [("engine", trainer.train_batch, data), ("plain", plain, data)]
    if softmax is not None:
        reference, ref_data = softmax
        fns.append(("softmax", reference.train_batch, ref_data))
    wall: dict[str, list[float]] = {who: [] for who, _, _ in fns}
    cpu: dict[str, list[float]] = {who: [] for who, _, _ in fns}
    for _ in range(2):  # warm-up (allocator, first-call paths)
        for _, fn, d in fns:
            fn(d[0])
    for i in range(steps):
        for who, fn, d in fns[i % len(fns) :] + fns[: i % len(fns)]:  # rotate the order
            t0, c0 = time.perf_counter(), time.process_time()
            fn(d[i % len(d)])
            wall[who].append(time.perf_counter() - t0)
            cpu[who].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in wall.items()}
    medc = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "batch": len(data[0]),
        "engine_s": med["engine"],
        "plain_s": med["plain"],
        "ratio": med["plain"] / med["engine"],
        "cpu_ratio": medc["plain"] / medc["engine"],
        "vs_softmax": med["engine"] / med["softmax"] if "softmax" in med else 1.0,
        "vs_softmax_cpu": medc["engine"] / medc["softmax"] if "softmax" in medc else 1.0,
        "sampler": trainer.config.train.sampler,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--modality", nargs="+", default=["face", "speaker"])
    ap.add_argument("--objectives", nargs="+", default=None, help="default: every registered one")
    ap.add_argument("--steps", type=int, default=12, help="interleaved steps per objective")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--full-data", action="store_true", help="the default demo data, not a small one"
    )
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra key=value")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier when shared)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.objectives or [e.name for e in registry("objectives").entries()]
    names.sort(key=lambda n: n != "softmax")  # softmax first: the others are compared with it
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; median of "
          f"{args.steps} interleaved steps")  # fmt: skip
    head = (f"{'modality':8s} {'objective':22s} {'sampler':8s} {'batch':>5s} {'engine ms':>9s} "
            f"{'plain ms':>9s} {'ratio':>6s} {'cpu ratio':>9s} {'vs softmax wall (cpu)':>21s}")  # fmt: skip
    print(head)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for modality in args.modality:
            sets = [f"train.batch_size={args.batch_size}", *args.sets]
            if not args.full_data:
                sets += SMALL.get(modality, [])
            ref = build(modality, "softmax", sets, Path(tmp))
            softmax = (ref, batches(ref, min(args.steps, 8)))
            for name in names:
                if name in SKIP:
                    print(f"{modality:8s} {name:22s} skipped: {SKIP[name]}")
                    continue
                try:
                    against = None if name == "softmax" else softmax
                    r = measure(modality, name, sets, args.steps, Path(tmp), against)
                except Exception as exc:  # report and go on: one objective must not hide the rest
                    print(f"{modality:8s} {name:22s} failed: {type(exc).__name__}: {exc}")
                    failed = True
                    continue
                rel = f"{r['vs_softmax']:.2f}× ({r['vs_softmax_cpu']:.2f}×)"
                print(f"{modality:8s} {name:22s} {r['sampler']:8s} {r['batch']:5d} "
                      f"{1000 * r['engine_s']:9.1f} {1000 * r['plain_s']:9.1f} "
                      f"{r['ratio']:6.2f} {r['cpu_ratio']:9.2f} {rel:>21s}")  # fmt: skip
                sys.stdout.flush()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
