"""`metaemb runs [ROOT]`: the runs under a folder (the face toolkit's `models list`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from metaemb.commands.console import make_console

console = make_console()
SEARCH_DEPTH = 6  # runs/<modality>/<run> under a few folders of experiments


def runs(
    root: Annotated[Path, typer.Argument(help="root of run directories")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List runs: modality, components, epochs done, best validation metric and path."""
    from metaemb.core.eval.catalog import find_runs

    found = find_runs(root, SEARCH_DEPTH)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in found], indent=2))
        return
    if not found:
        console.print(
            f"no runs within {SEARCH_DEPTH} folder levels under {escape(str(root))}; give the "
            "runs folder itself (what train --runs was given) if they lie deeper."
        )
        return
    table = Table(title=f"runs under {escape(str(root))}")
    for col in ("name", "modality", "components", "epochs", "best", "status", "path"):
        table.add_column(col, justify="right" if col in ("epochs", "best") else "left")
    for r in found:
        best = "-"
        if r.best is not None:
            value = f"{100 * r.best:.2f}%" if r.best_key == "eer" else f"{r.best:.4f}"
            best = f"{r.best_key} {value} (ep {r.best_epoch})"
        table.add_row(escape(r.name), r.modality, escape(r.components),
                      f"{r.epochs_done}/{r.epochs}", best, r.status, escape(r.path))  # fmt: skip
    console.print(table)
