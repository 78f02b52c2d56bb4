"""Memory and time of one training step of the classifier at a million identities, on the CPU:
full ArcFace against Partial FC at several sample rates (each in its own process, so each peak
resident memory is its own).

In one process the centre matrix (classes × dim float32), its gradient and the optimizer state
are the same for both; what Partial FC saves is the logits matrix and its softmax (batch ×
sampled classes). With `--world 2` the centres are sharded over 2 gloo ranks on this machine
(InsightFace's model-parallel Partial FC, core/train/shard.py): each rank holds C/2 centres and
their state, and its logits cover the global batch (2 × batch) × its sampled C/2 · rate.

    python bench/partial_fc.py                         # 1 M classes, dim 128, batch 128
    python bench/partial_fc.py --world 1,2 --rates 0.1 # sharded over 2 ranks (per-rank memory)
    python bench/partial_fc.py --classes 100000        # CI-sized
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(rate: float, classes: int, dim: int, batch: int, steps: int, world: int) -> None:
    """One row: in this process (world 1), or as `world` gloo ranks spawned from it."""
    if world == 1:
        print(json.dumps(measure(0, 1, rate, classes, dim, batch, steps)))
        return
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as sock:  # gloo over the loopback, on a free port
        sock.bind(("127.0.0.1", 0))
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(sock.getsockname()[1]))
    with tempfile.TemporaryDirectory() as tmp:
        args = (world, rate, classes, dim, batch, steps, tmp)
        mp.spawn(rank_main, args=args, nprocs=world, join=True)
        rows = [json.loads((Path(tmp) / f"{r}.json").read_text()) for r in range(world)]
    worst = max(rows, key=lambda r: r["peak_mb"])  # the rank with the highest peak
    print(json.dumps({**worst, "step_s": max(r["step_s"] for r in rows)}))


def rank_main(rank: int, world: int, rate: float, classes: int, dim: int, batch: int,
              steps: int, tmp: str) -> None:  # fmt: skip
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = measure(rank, world, rate, classes, dim, batch, steps)
        (Path(tmp) / f"{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def measure(rank: int, world: int, rate: float, classes: int, dim: int, batch: int,
            steps: int) -> dict:  # fmt: skip
    import torch

    from metaemb.core.train.objectives.margin import ArcFaceObjective
    from metaemb.core.train.objectives.partial_fc import PartialFCObjective

    torch.manual_seed(0)
    objective = ArcFaceObjective() if rate == 0 else PartialFCObjective(sample_rate=rate)
    if world > 1:
        objective.distribute(rank, world)
    classifier = objective.build_classifier(dim, classes)
    opt = torch.optim.SGD(classifier.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(batch, dim, generator=g, requires_grad=True)
    labels = torch.randint(0, classes, (batch,), generator=g)
    base = rss_mb()  # centres allocated; gradient and momentum come with the first step
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = objective(x, labels, classifier)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sampled = objective.stats.get("sampled_classes", classes)
    return {"peak_mb": peak, "base_mb": base, "step_s": min(times), "centres": classifier.weight.shape[0],
            "sampled": sampled}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--classes", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rates", default="0,1.0,0.1,0.01", help="0 = plain ArcFace")
    ap.add_argument("--world", default="1", help="ranks to shard the centres over, e.g. 1,2")
    ap.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        child(a.child, a.classes, a.dim, a.batch, a.steps, int(a.world))
        return
    centres = a.classes * a.dim * 4 / 2**20
    print(f"{a.classes} classes × dim {a.dim} (centres {centres:.0f} MB float32), "
          f"batch {a.batch} per rank")  # fmt: skip
    print(f"{'objective':28s} {'ranks':>5s} {'centres/rank':>12s} {'sampled/rank':>12s} "
          f"{'peak RSS MB':>12s} {'above centres':>14s} {'best step s':>12s}")  # fmt: skip
    for world in (int(w) for w in a.world.split(",")):
        for rate in (float(r) for r in a.rates.split(",")):
            if rate == 0 and world > 1:
                continue  # plain ArcFace is not sharded: every rank holds what one process does
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(rate), "--classes", str(a.classes),
                 "--dim", str(a.dim), "--batch", str(a.batch), "--steps", str(a.steps),
                 "--world", str(world)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            name = "arcface (full)" if rate == 0 else f"partial-fc sample_rate={rate:g}"
            extra = r["peak_mb"] - r["base_mb"]
            print(f"{name:28s} {world:5d} {r['centres']:12d} {int(r['sampled']):12d} "
                  f"{r['peak_mb']:12.0f} {extra:14.0f} {r['step_s']:12.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
