"""`metaemb plot`: the pictures of a run — training curves, a 2-D map of embeddings with chosen
identities highlighted, and the CMC curve — as PNG files (the `plots` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from metaemb.commands.console import make_console
from metaemb.commands.options import Device, Workers

console = make_console()


def plot(
    run: Annotated[Path, typer.Argument(help="run directory")],
    embeddings: Annotated[
        Path | None,
        typer.Option(help="data folder (embedded with the run) or a file from `metaemb embed`"),
    ] = None,
    highlight: Annotated[
        list[str] | None, typer.Option(help="identity to highlight on the map (repeatable)")
    ] = None,
    method: Annotated[
        str, typer.Option(help="auto (t-SNE if scikit-learn is installed), tsne, pca")
    ] = "auto",
    out: Annotated[Path | None, typer.Option(help="output folder (default: RUN/plots)")] = None,
    device: Device = "auto",
    workers: Workers = 0,
) -> None:
    """Training curves (loss, EER, minDCF per epoch); with --embeddings, a 2-D map coloured by
    identity and the leave-one-out CMC curve."""
    from metaemb.core.errors import MetaembError
    from metaemb.core.eval.plots import plot_run
    from metaemb.core.paths import ensure_writable, ensure_writable_dir, refuse_inside

    if embeddings is None and (highlight or method != "auto"):
        flag = "--highlight" if highlight else "--method"
        raise MetaembError(f"{flag} shapes the embedding map, which needs --embeddings (a data "
                           "folder or a file from `metaemb embed`): give it, or leave the "
                           f"{flag} out for the training curves alone.")  # fmt: skip
    folder = out or run / "plots"
    ensure_writable_dir(folder, "plots folder")
    names = ["training.png"] + (["embeddings_map.png", "cmc.png"] if embeddings else [])
    for name in names:  # a PNG that metaemb did not draw (a photo) is never replaced
        ensure_writable(folder / name, "plot")
    if out is not None:
        for root in (embeddings, *_trained_on(run)):
            if root is not None and root.is_dir():
                refuse_inside(out, root, "plots folder")
    for path in plot_run(run, embeddings, highlight or [], method, out, device, workers):
        console.print(f"plot: {path}", markup=False, soft_wrap=True)


def _trained_on(run: Path) -> list[Path]:
    """The data folders recorded in the run's config.toml (as typed, and resolved)."""
    from metaemb.core.runs import saved_config

    data = (saved_config(run) or {}).get("data", {})
    return [Path(str(data[k])) for k in ("root", "root_absolute") if data.get(k)]


def after_training(run_dir: Path, out: Console) -> None:
    """`train` draws training.png at the end of a run; without matplotlib it says so once."""
    from metaemb.core.eval.figures import PlotsUnavailable
    from metaemb.core.eval.plots import training_curves

    try:
        path = training_curves(run_dir)
    except PlotsUnavailable:
        out.print(
            "no training curves: pip install 'metaemb[plots]' to get training.png", markup=False
        )
        return
    out.print(f"plot: {path}", markup=False, soft_wrap=True)
