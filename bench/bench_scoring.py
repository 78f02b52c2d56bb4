"""All-vs-all cosine and PLDA scoring of N × N embeddings (default 20,000) against a plain numpy
reference that builds the whole matrix in one go, measured in the same run.

    python bench/bench_scoring.py [--n 20000] [--dim 256] [--threads 0]

Prints times, the ratio reference/metaemb (> 1: metaemb is faster), the largest difference, and
the peak resident memory metaemb needed beyond its output matrix. Run metaemb first so its peak
is not hidden by the reference's.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from metaemb.core.scoring.cosine import CosineScorer
from metaemb.core.scoring.scorers import PLDAScorer


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def synthetic(rng: np.random.Generator, n_spk: int, per: int, dim: int) -> tuple[np.ndarray, ...]:
    centres = rng.standard_normal((n_spk, dim)).astype(np.float32)
    labels = np.repeat(np.arange(n_spk), per)
    x = centres[labels] + 0.8 * rng.standard_normal((len(labels), dim)).astype(np.float32)
    return x + 0.5, labels


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    train, labels = synthetic(rng, 1000, 8, args.dim)
    emb, _ = synthetic(rng, args.n // 10, 10, args.dim)
    emb_t = torch.from_numpy(emb)
    n = emb.shape[0]
    print(f"{n} x {n} scores, dim {args.dim}, torch threads {torch.get_num_threads()}")

    # ---- metaemb first (peak memory) --------------------------------------------------------
    base = peak_mb()
    cos = CosineScorer(subtract_mean=True)
    cos.fit(torch.from_numpy(train), torch.from_numpy(labels))
    out = torch.empty(n, n, dtype=torch.float32)
    _, t_cos = timed(lambda: cos.score_matrix(emb_t, emb_t, out=out))
    cos_ours = out.numpy().copy()
    plda = PLDAScorer(lda_dim=200, iterations=10)
    _, t_fit = timed(lambda: plda.fit(torch.from_numpy(train), torch.from_numpy(labels)))
    _, t_plda = timed(lambda: plda.score_matrix(emb_t, emb_t, out=out))
    extra = peak_mb() - base - 2 * out.numel() * 4 / 2**20  # minus output + the cosine copy
    plda_ours = out.numpy()

    # ---- plain numpy reference: the whole matrix at once ------------------------------------
    def cosine_ref():
        m = train.astype(np.float32).mean(0)
        u = emb - m
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        return u @ u.T

    cos_ref, r_cos = timed(cosine_ref)
    psi = plda.backend.plda.psi.numpy()

    def plda_ref():
        z = plda.backend.diagonal(emb_t).numpy()  # same transform; reference is the LLR algebra
        s1 = 1.0 + psi / (psi + 1.0)
        s0 = 1.0 + psi
        a = psi / (psi + 1.0)
        const = 0.5 * np.sum(np.log(s0) - np.log(s1))
        q_test = (z * z) @ (0.5 / s0 - 0.5 / s1)
        q_enr = (z * z) @ (-0.5 * a * a / s1) + const
        s = (z * (a / s1)) @ z.T
        s += q_enr[:, None]
        s += q_test[None, :]
        return s

    plda_r, r_plda = timed(plda_ref)

    print(f"PLDA fit (8,000 x {args.dim}, LDA 200, 10 EM iterations): {t_fit:.2f} s")
    rows = [
        ("cosine", t_cos, r_cos, np.abs(cos_ours - cos_ref).max()),
        ("plda", t_plda, r_plda, np.abs(plda_ours - plda_r).max()),
    ]
    print(f"{'scorer':8} {'metaemb s':>10} {'numpy s':>10} {'ratio':>7} {'max |diff|':>11}")
    for name, ours, ref, diff in rows:
        print(f"{name:8} {ours:10.2f} {ref:10.2f} {ref / ours:7.2f} {diff:11.2e}")
    print(f"metaemb peak memory beyond its outputs: {max(extra, 0.0):.0f} MB")


if __name__ == "__main__":
    main()
