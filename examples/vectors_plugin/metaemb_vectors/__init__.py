"""metaemb-vectors: an example plugin that adds a whole modality, `vectors`.

Precomputed embeddings (x-vectors from another toolkit, or any fixed-size feature vectors) stored
as `<identity>/…/<sample>.npy` are trained on with every head, objective and scorer of the core:
the "back-end only" workflow. Installed with `pip install ./examples/vectors_plugin`; its entry
point (group `metaemb`) makes `metaemb train --modality vectors` work. Imports happen inside the
hooks so that loading the plugin stays cheap.
"""

from __future__ import annotations

from metaemb import hookimpl
from metaemb.core import Register


@hookimpl
def register_sample_folders(register: Register) -> None:
    from metaemb_vectors.folder import NpyFolder, NpyMatrixFolder

    register("npy", NpyFolder, description="<identity>/…/<sample>.npy files, one 1-D vector each")
    register(
        "npy-matrix",
        NpyMatrixFolder,
        description="<identity>/…/<sample>.npy feature matrices [channels, frames]",
    )


@hookimpl
def register_features(register: Register) -> None:
    from metaemb_vectors.features import VectorFeatures

    register("vector", VectorFeatures, description="fixed-size vectors, checked (opt. length-norm)")


@hookimpl
def register_backbones(register: Register) -> None:
    from metaemb_vectors.backbones import IdentityBackbone, VectorMLP

    register("mlp", VectorMLP, description="residual MLP on fixed-size vectors")
    register(
        "identity", IdentityBackbone, description="no backbone: the head learns on the vectors"
    )


@hookimpl
def register_demo_data(register: Register) -> None:
    from metaemb_vectors.synthetic import generate_vectors

    register("vectors", generate_vectors, description="synthetic x-vector-like embeddings (.npy)")


@hookimpl
def register_export_adapters(register: Register) -> None:
    from metaemb_vectors.export import VectorExport

    # keyed by the features' input_spec()["kind"]
    register("vector", VectorExport, description="vectors [N, size] → embeddings")


@hookimpl
def register_modalities(register: Register) -> None:
    from metaemb.core import Modality

    register(
        "vectors",
        Modality(
            name="vectors",
            description="precomputed embeddings in .npy files (back-end training)",
            sample_folder="npy",
            frontend="none",
            features="vector",
            backbone="mlp",
            demo_data="vectors",
            baseline_name="raw vectors",
            defaults={
                "model.dim": 16,
                "train.epochs": 4,
                "train.batch_size": 64,
                "train.lr": 3e-3,
                "train.weight_decay": 1e-4,
                "train.warmup_epochs": 0.5,
            },
        ),
        description="back-end training on precomputed embeddings",
    )
