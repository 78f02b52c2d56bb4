"""`metaemb embed` and `metaemb demo-data`: embeddings of a folder or loose files, and the
built-in synthetic datasets written as ordinary sample folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from metaemb.commands.console import make_console
from metaemb.commands.options import (
    DEFAULT_MODALITY,
    DataFolder,
    DataFolderSet,
    Device,
    FeaturesSet,
    FilesRoot,
    FrontendSet,
    Workers,
)

console = make_console()


def embed(
    checkpoint: Annotated[Path, typer.Argument(help="run directory or checkpoint")],
    data: Annotated[
        list[Path],
        typer.Argument(help="<identity>/<sample> folder (or tar-shard pattern), or sample files"),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="output .pt file, or .npz (paths, identities, and embeddings; a GME run's a and b)"
        ),
    ],
    device: Device = "auto",
    workers: Workers = 2,
    root: FilesRoot = None,
    frontend_set: FrontendSet = None,
    features_set: FeaturesSet = None,
    folder: DataFolder = None,
    folder_set: DataFolderSet = None,
    on_bad_sample: Annotated[
        str,
        typer.Option(
            "--on-bad-sample",
            help="error (default) or skip: leave samples that cannot be read out, with a warning",
        ),
    ] = "error",
) -> None:
    """Embed every sample of a folder, or the given sample files, with a trained model."""
    from metaemb.core.data.pipeline import use_features_set, use_folder_set, use_frontend_set
    from metaemb.core.deploy.stamp import same_model
    from metaemb.core.eval.collect import embed_inputs
    from metaemb.core.eval.retrieval import check_format
    from metaemb.core.paths import ensure_writable

    if on_bad_sample not in ("error", "skip"):
        from metaemb.core.errors import ConfigError

        raise ConfigError(f"--on-bad-sample must be error or skip, got '{on_bad_sample}'.")
    use_frontend_set(frontend_set)
    use_features_set(features_set)
    use_folder_set(folder, folder_set)
    ensure_writable(out, "embeddings file")  # before any embedding: a folder, a run's file
    check_format(out)
    earlier = _earlier_collection(out)
    collection = embed_inputs(checkpoint, list(data), device=device, workers=workers, root=root,
                              skip_bad=on_bad_sample == "skip")  # fmt: skip
    collection.save(out)
    console.print(f"wrote {len(collection)} embeddings to {out}", markup=False)
    if earlier is not None and not same_model(
        earlier.meta.get("model_digest"), collection.meta.get("model_digest")
    ):  # a collection of another model replaced: said, as galleries refuse another model
        console.print(
            f"note: this replaced the {len(earlier)} embeddings of another model that '{out}' "
            "held.",
            markup=False,
        )


def _earlier_collection(out: Path) -> Any:
    """The embeddings file `out` already holds (None when there is none): an existing --out is
    replaced only when it is one. A TorchScript export named .pt, or any other file, is kept
    (it was overwritten by embeddings)."""
    if not out.is_file():
        return None
    from metaemb.core.errors import MetaembError, OutputError
    from metaemb.core.eval.retrieval import Collection

    try:
        return Collection.load(out)
    except MetaembError:
        raise OutputError(
            f"'{out}' exists and is not an embeddings file written by `metaemb embed` (a model, "
            "an export or another file), which this would replace: move it, or choose another "
            "--out."
        ) from None


def demo_data(
    modality: Annotated[str, typer.Option(help="face, speaker, …")] = DEFAULT_MODALITY,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("demo-data"),
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="generator option, e.g. identities=40 (face) or speakers=40 (speaker); "
            "`metaemb list demo_data` lists them",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="another draw of the dataset (training's is the default)", min=0),
    ] = None,
) -> None:
    """Write a modality's built-in synthetic dataset as a normal <identity>/<sample> folder."""
    from metaemb.core.config import parse_set
    from metaemb.core.data.pipeline import generate_demo
    from metaemb.core.paths import ensure_writable_dir
    from metaemb.core.plugin.components import validate_options
    from metaemb.core.plugin.manager import registry

    ensure_writable_dir(out, "demo data folder")
    name = registry("modalities").get(modality).demo_data
    if not name:
        from metaemb.core.errors import ConfigError

        raise ConfigError(f"modality '{modality}' has no built-in demo dataset.")
    items = dict(parse_set(s) for s in set_ or [])  # `demo.identities=2`, as train takes it, too
    items = {k.removeprefix("demo."): v for k, v in items.items()}
    if "seed" in items:
        from metaemb.core.errors import ConfigError

        raise ConfigError("the demo dataset's seed is not a --set option: use --seed N.")
    opts = validate_options("demo_data", name, items, "demo")
    generate_demo(name, opts, out, seed)
    console.print(f"wrote the {modality} demo dataset to {out}", markup=False)
