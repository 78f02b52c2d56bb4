"""Memory and time of one training step of the classifier at a million identities, on the CPU:
full ArcFace against Partial FC at several sample rates (each in its own process, so each peak
resident memory is its own).

The centre matrix (classes × dim float32), its gradient and the optimizer state are the same
for both; what Partial FC saves is the logits matrix and its softmax (batch × sampled classes).

    python bench/partial_fc.py                         # 1 M classes, dim 128, batch 128
    python bench/partial_fc.py --classes 100000        # CI-sized
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(rate: float, classes: int, dim: int, batch: int, steps: int) -> None:
    import torch

    from metaemb.core.train.objectives.margin import ArcFaceObjective
    from metaemb.core.train.objectives.partial_fc import PartialFCObjective

    torch.manual_seed(0)
    objective = ArcFaceObjective() if rate == 0 else PartialFCObjective(sample_rate=rate)
    classifier = objective.build_classifier(dim, classes)
    opt = torch.optim.SGD(classifier.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, dim, requires_grad=True)
    labels = torch.randint(0, classes, (batch,))
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
    print(json.dumps({"peak_mb": peak, "base_mb": base, "step_s": min(times)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--classes", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rates", default="0,1.0,0.1,0.01", help="0 = plain ArcFace")
    ap.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        child(a.child, a.classes, a.dim, a.batch, a.steps)
        return
    centres = a.classes * a.dim * 4 / 2**20
    print(f"{a.classes} classes × dim {a.dim} (centres {centres:.0f} MB float32), batch {a.batch}")
    print(f"{'objective':28s} {'peak RSS MB':>12s} {'above centres':>14s} {'best step s':>12s}")
    for rate in (float(r) for r in a.rates.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(rate), "--classes", str(a.classes),
             "--dim", str(a.dim), "--batch", str(a.batch), "--steps", str(a.steps)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        name = "arcface (full)" if rate == 0 else f"partial-fc sample_rate={rate:g}"
        extra = r["peak_mb"] - r["base_mb"]
        print(f"{name:28s} {r['peak_mb']:12.0f} {extra:14.0f} {r['step_s']:12.3f}")


if __name__ == "__main__":
    main()
