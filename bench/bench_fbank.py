"""Fbank throughput: metaemb's batched KaldiFbank vs torchaudio's per-utterance Kaldi fbank.

Same audio for both (random utterances of 2–8 s at 16 kHz, 80 bins, povey window, dither 0, no
CMN), on the CPU and — when present — on the GPU. Prints seconds of audio per second of compute
and the ratio batched / per-utterance, measured in the same run.

    python bench/bench_fbank.py [--utts 64] [--repeats 3] [--device cpu|cuda|all]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchaudio.compliance.kaldi as kaldi

from metaemb.plugins.audio.fbank import KaldiFbank

RATE = 16000


def make_batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2 * RATE, 8 * RATE + 1, (n,), generator=g)
    x = torch.zeros(n, int(lengths.max()))
    for i, n_i in enumerate(lengths.tolist()):
        x[i, :n_i] = 0.1 * torch.randn(n_i, generator=g)
    return x, lengths


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_times(fns: list, device: torch.device, repeats: int) -> list[float]:
    """Best-of-`repeats` wall time of each function, interleaved so that load from other
    processes on a shared machine hits all of them alike."""
    for fn in fns:
        fn()  # warm-up (FFT plans, CUDA kernels)
    sync(device)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def bench(device: torch.device, n_utts: int, repeats: int) -> dict[str, float]:
    x, lengths = make_batch(n_utts)
    x, lengths = x.to(device), lengths.to(device)
    fbank = KaldiFbank(cmn=False).to(device).eval()
    lens = lengths.tolist()

    def batched() -> None:
        with torch.no_grad():
            fbank(x, lengths)

    def per_utterance() -> None:
        for i, n in enumerate(lens):
            kaldi.fbank(x[i : i + 1, :n] * 32768.0, num_mel_bins=80, dither=0.0)

    audio_s = sum(lens) / RATE
    t_batched, t_ref = best_times([batched, per_utterance], device, repeats)
    return {
        "audio_s": audio_s,
        "batched_x_realtime": audio_s / t_batched,
        "torchaudio_x_realtime": audio_s / t_ref,
        "ratio": t_ref / t_batched,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utts", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    args = ap.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.utts} utterances"
    )
    for name in devices:
        if name == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        r = bench(torch.device(name), args.utts, args.repeats)
        label = torch.cuda.get_device_name() if name == "cuda" else "cpu"
        print(
            f"{label}: {r['audio_s']:.0f} s of audio | batched {r['batched_x_realtime']:.0f}× "
            f"real time | torchaudio per-utterance {r['torchaudio_x_realtime']:.0f}× real time | "
            f"ratio {r['ratio']:.2f}"
        )


if __name__ == "__main__":
    main()
