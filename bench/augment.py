"""Throughput of augmented training batches against unaugmented ones, on the training device.

    python bench/augment.py [--device cuda] [--batch 64] [--seconds 2.0] [--repeats 20]

Each row times one batch of `batch` × `seconds` 16 kHz waveforms through the fbank features
(the unaugmented reference, measured in the same run), then through each augmentation followed by
the features, then the full speaker recipe chain (speed → reverb → noise → features →
SpecAugment). It prints utterances per second and the ratio to the reference; a training step of
the default x-vector is timed too, so the augmentation cost can be read against the whole step.
Ratios, not absolute times, are the result: they hold across machines of one kind.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metaemb.core.plugin.components import build


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after two warm-up runs."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    n, t = args.batch, round(args.seconds * 16000)
    x = (0.1 * torch.randn(n, t)).to(dev)
    lengths = torch.full((n,), t, device=dev)
    labels = torch.arange(n, device=dev) % max(2, n // 2)
    feats = build("features", "fbank", {}).to(dev).train()
    spec = feats.input_spec()

    def aug(name: str, **opts: object) -> torch.nn.Module:
        a = build("augmentations", name, opts).to(dev).train()
        a.setup(spec)
        a.num_classes(n)
        return a

    chain = {
        "noise (coloured/babble, p=1)": [aug("noise", p=1.0)],
        "reverb (simulated rooms, p=1)": [aug("reverb", p=1.0)],
        "speed 0.9/1.0/1.1": [aug("speed")],
        "telephone (p=1)": [aug("telephone", p=1.0)],
    }
    specaug = aug("specaugment", p=1.0)
    recipe = [aug("speed"), aug("reverb"), aug("noise")]

    def run(waves: list[torch.nn.Module], masks: bool = False) -> Callable[[], object]:
        def go() -> object:
            with torch.no_grad():
                y, ylen, lab = x, lengths, labels
                for a in waves:
                    y, ylen, lab = a(y, ylen, lab)
                f, flen = feats(y, ylen)
                if masks:
                    f, flen, lab = specaug(f, flen, lab)
                return f

        return go

    ref = timed(run([]), dev, args.repeats)
    print(f"device {dev}, batch {n} × {args.seconds:g} s; utterances/s (ratio to fbank only)")
    print(f"{'fbank only (reference)':<34} {n / ref:>9.0f}   1.00")
    for name, waves in chain.items():
        s = timed(run(waves), dev, args.repeats)
        print(f"{name + ' + fbank':<34} {n / s:>9.0f}   {ref / s:.2f}")
    s = timed(run([], masks=True), dev, args.repeats)
    print(f"{'fbank + specaugment (p=1)':<34} {n / s:>9.0f}   {ref / s:.2f}")
    s_recipe = timed(run(recipe, masks=True), dev, args.repeats)
    print(f"{'speaker defaults chain':<34} {n / s_recipe:>9.0f}   {ref / s_recipe:.2f}")

    model = build("backbones", "xvector", {"channels": 256, "pool_channels": 768},
                  in_channels=80).to(dev)  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    f, flen = feats(x, lengths)

    def step() -> None:
        opt.zero_grad()
        model(f, flen).square().mean().backward()
        opt.step()

    s_step = timed(step, dev, max(3, args.repeats // 3))
    share = (s_recipe - ref) / (s_step + s_recipe)
    print(f"x-vector (256/768) training step: {s_step * 1000:.0f} ms; the augmentation chain adds "
          f"{(s_recipe - ref) * 1000:.0f} ms ({100 * share:.0f} % of an augmented step)")  # fmt: skip


if __name__ == "__main__":
    main()
