"""All-vs-all GME LLR: blocked `llr_matrix` against a naive [N1, N2, d] broadcast, same run.

    python bench/bench_gme.py [--n 1024] [--d 256] [--device cpu|cuda] [--dtype float32]

Prints time, pair throughput and peak extra memory of each, and the ratios (blocked / naive).
Peak memory: on CUDA torch.cuda.max_memory_allocated; on CPU the kernel's VmHWM (peak resident
set), reset through /proc/self/clear_refs before each run, minus the resident size before it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from metaemb.core.gme.algebra import GME, llr_matrix


def naive_matrix(f1: GME, f2: GME) -> torch.Tensor:
    """The whole [N1, N2, d] broadcast of the same stable formula at once."""
    a1, b1, a2, b2 = f1.a[:, None], f1.b[:, None], f2.a[None], f2.b[None]
    c1, c2 = 1 + b1, 1 + b2
    c12 = c1 + b2
    num = 2 * a1 * a2 * c1 * c2 - a1 * a1 * b2 * c2 - a2 * a2 * b1 * c1
    return 0.5 * (num / (c1 * c2 * c12) + torch.log1p(b1 * b2 / c12)).sum(-1)


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def measure(fn: Callable[[], torch.Tensor], device: str) -> tuple[float, int, torch.Tensor]:
    """(seconds, peak extra bytes, result) of one call."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        base = _status("VmRSS")
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status("VmHWM")
    return time.perf_counter() - start, peak - base, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1024, help="GMEs per side (naive needs n²·d·~6 floats)")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)

    def make() -> GME:
        a = torch.randn(args.n, args.d, generator=gen, dtype=dtype)
        return GME(a, torch.rand(args.n, args.d, generator=gen, dtype=dtype) * 3).to(args.device)

    f1, f2 = make(), make()
    shared = GME(f1.a, f1.b[:1].expand_as(f1.b)), GME(f2.a, f2.b[:1].expand_as(f2.b))
    runs = {  # naive last: its large freed blocks must not hide the others' peaks
        "blocked": lambda: llr_matrix(f1, f2),
        "shared-b (matmul path)": lambda: llr_matrix(*shared),
        "naive": lambda: naive_matrix(f1, f2),
    }
    pairs = args.n * args.n
    results = {}
    print(f"all-vs-all {args.n} x {args.n}, d={args.d}, {args.dtype}, {args.device}")
    for name, fn in runs.items():
        # Memory from the first (cold) call: later calls reuse heap pages already resident.
        _, extra, out = measure(fn, args.device)
        sec = min(measure(fn, args.device)[0] for _ in range(args.repeats))
        results[name] = (sec, extra, out)
        print(
            f"  {name:24s} {sec:8.3f} s  {pairs / sec / 1e6:9.3f} Mpairs/s  "
            f"peak +{extra / 2**20:8.1f} MB"
        )
    (tb, mb, ob), (tn, mn, on) = results["blocked"], results["naive"]
    err = (ob - on).abs().max().item()
    print(
        f"blocked/naive: time ratio {tb / tn:.2f}, throughput ratio {tn / tb:.2f}, "
        f"peak-memory ratio {mb / max(mn, 1):.3f}; max |difference| {err:.2e}"
    )


if __name__ == "__main__":
    main()
