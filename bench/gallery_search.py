"""Per-request search time of a large gallery: one probe at a time, as a service asks, with the
pooled models kept between searches (the engine's default since they are cached per scorer
state) against pooling again for every request (the cache dropped each time).

    python bench/gallery_search.py [--identities 100000] [--dim 128] [--requests 20] [--faiss]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from metaemb.core.deploy.gallery import Gallery
from metaemb.core.deploy.stamp import ModelStamp


def per_request(g: Gallery, probes: torch.Tensor, backend: str, cold: bool) -> float:
    times = []
    for p in probes:
        if cold:
            g.search_cache.clear()
        t0 = time.perf_counter()
        g.search(p[None], k=5, backend=backend)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])  # the first request fills the cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--identities", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--faiss", action="store_true")
    args = ap.parse_args()
    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=args.dim, config_hash="", epoch=0))
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(args.identities, args.dim, generator=gen)
    # one sample per identity (MegaFace-style distractors), set whole: an add per identity
    # would take minutes
    g.identities = [f"id{i}" for i in range(args.identities)]
    g.sources = [""] * args.identities
    g.owner = torch.arange(args.identities)
    g.data = {"embeddings": emb}
    probes = torch.randn(args.requests, args.dim, generator=gen)
    for backend in ["torch", *(["faiss"] if args.faiss else [])]:
        cold = per_request(g, probes, backend, cold=True)
        warm = per_request(g, probes, backend, cold=False)
        print(
            f"{backend:6s} {args.identities} identities × {args.dim}: pooled per request "
            f"{1000 * cold:8.1f} ms, kept {1000 * warm:8.1f} ms  ratio {cold / warm:6.1f}×"
        )


if __name__ == "__main__":
    main()
