"""Synthetic "x-vectors": a deterministic demo dataset for the vectors modality.

Each vector is x = m + A·y + C·c + σ·ε: y ~ N(0, I) is the identity (fixed per identity, in an
`id_rank`-dimensional subspace), c ~ N(0, I) a per-recording channel/session offset in another
subspace, ε isotropic noise. The channel is deliberately strong, so the cosine of raw vectors (the
modality's no-learning baseline) is a mediocre verifier and a learned projection — LDA/PLDA, or a
network trained by metaemb — is clearly better: the task is real and learnable, like x-vectors
from a real extractor.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from metaemb.core import DataError

MANIFEST = "vectors.json"  # at the root, outside every identity folder: the scan ignores it
VERSION = 1  # bump when the output changes, so cached demo data regenerates


def generate_vectors(
    out: Path,
    identities: int = 80,
    per_identity: int = 8,
    size: int = 32,
    id_rank: int = 8,
    channel_rank: int = 4,
    channel_scale: float = 1.5,
    noise: float = 0.5,
    data_seed: int = 0,
) -> Path:
    """Write `out/<identity>/<k>.npy` (float32 [size]) and a manifest; idempotent and atomic.

    A complete dataset with the same parameters is left alone; files are written into a temporary
    sibling folder renamed into place at the end, so an interruption never leaves a half dataset.
    """
    out = Path(out)
    if identities < 2 or per_identity < 1 or size < 1 or id_rank < 1 or channel_rank < 0:
        raise DataError(
            "demo vectors need identities ≥ 2, per_identity ≥ 1, size ≥ 1, id_rank ≥ 1 and "
            f"channel_rank ≥ 0; got {identities}, {per_identity}, {size}, {id_rank}, {channel_rank}."
        )
    params = {
        "version": VERSION,
        "identities": identities,
        "per_identity": per_identity,
        "size": size,
        "id_rank": id_rank,
        "channel_rank": channel_rank,
        "channel_scale": channel_scale,
        "noise": noise,
        "data_seed": data_seed,
    }
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text()) == params:
                return out
        except (OSError, ValueError):
            pass
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"'{out}' exists and is not a complete demo vectors dataset with these parameters; "
            "delete it or choose another output folder."
        )
    rng = np.random.default_rng(data_seed)
    mean = rng.normal(0.0, 1.0, size)
    load_id = rng.normal(0.0, 1.0 / np.sqrt(id_rank), (size, id_rank))
    load_ch = rng.normal(0.0, channel_scale / np.sqrt(max(channel_rank, 1)), (size, channel_rank))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        width = len(str(identities - 1))
        for i in range(identities):
            y = rng.normal(0.0, 1.0, id_rank)
            folder = tmp / f"id{i:0{width}d}"
            folder.mkdir()
            for k in range(per_identity):
                c = rng.normal(0.0, 1.0, channel_rank)
                x = mean + load_id @ y + load_ch @ c + noise * rng.normal(0.0, 1.0, size)
                np.save(folder / f"{k:03d}.npy", x.astype(np.float32))
        (tmp / MANIFEST).write_text(json.dumps(params, indent=2))
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


generate_vectors.version = VERSION  # part of the demo cache key: a bump regenerates
