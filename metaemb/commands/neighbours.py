"""`metaemb neighbours`: the k nearest samples of probes among an embedded collection (the
"fingerprint database" of re-identification), and retrieval metrics over a labelled collection.
Options and printing; the search itself is core/deploy/neighbours.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from metaemb.commands.console import make_console
from metaemb.commands.options import DataFolder, DataFolderSet, Device, FilesRoot, Workers

console = make_console()


def neighbours(
    collection: Annotated[Path, typer.Argument(help="embeddings file written by `metaemb embed`")],
    probe: Annotated[
        list[Path] | None, typer.Argument(help="probe sample file(s); none: collection metrics")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="neighbours per probe")] = 5,
    run: Annotated[
        Path | None,
        typer.Option(
            help="the run that embedded the collection: its model embeds the probes, "
            "its scorer ranks (default: the run the collection names)"
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="auto (faiss if installed), faiss or exact")
    ] = "auto",
    scorer: Annotated[
        str | None, typer.Option(help="scorer (default: the run's, fitted state included)")
    ] = None,
    max_rank: Annotated[int, typer.Option(min=1, help="CMC up to this rank (metrics)")] = 10,
    out: Annotated[Path | None, typer.Option(help="write the results as JSON")] = None,
    device: Device = "auto",
    workers: Workers = 0,
    root: FilesRoot = None,
    folder: DataFolder = None,
    folder_set: DataFolderSet = None,
) -> None:
    """k nearest collection samples of each probe file; without probes, leave-one-out retrieval
    metrics of the labelled collection (precision@1, R-precision, MAP@R, mAP, CMC)."""
    from metaemb.core.data.pipeline import use_folder_set

    use_folder_set(folder, folder_set)
    from metaemb.core.deploy.neighbours import collection_retrieval, find_neighbours
    from metaemb.core.errors import MetaembError
    from metaemb.core.eval.retrieval import BACKENDS
    from metaemb.core.files import atomic_write_text
    from metaemb.core.paths import ensure_writable

    if backend not in BACKENDS:  # checked here too: without probes no search would name it
        raise MetaembError(f"search backend must be one of {', '.join(BACKENDS)}, got '{backend}'.")
    # Each option belongs to one of the two uses; one given to the other would be ignored.
    if not probe:
        probe_only = {"--device": device != "auto",
                      "--workers": workers != 0, "-k": k != 5,
                      "--backend": backend != "auto", "--root": root is not None,
                      "--folder": folder is not None, "--folder-set": bool(folder_set)}  # fmt: skip
        for flag in (f for f, given in probe_only.items() if given):
            raise MetaembError(f"{flag} applies to probe files (embedded and searched); without "
                               "probes the collection's own stored embeddings are scored "
                               "leave-one-out: leave it out, or give probes.")  # fmt: skip
    elif max_rank != 10:
        raise MetaembError("--max-rank sets the CMC of the leave-one-out metrics (no probes); "
                           "with probes use -k for the neighbours per probe.")  # fmt: skip
    if out is not None:
        from metaemb.core.paths import refuse_replacing_another_file

        ensure_writable(out, "results file")  # before any embedding
        refuse_replacing_another_file(out, "results file", _is_neighbours_json,
                                      "metaemb neighbours")  # fmt: skip
    if probe:
        found = find_neighbours(collection, probe, k, run, backend, scorer, device, workers, root)
        for name, hits in zip(found.probes, found.neighbours, strict=True):
            table = Table(title=f"nearest to {escape(name)} ({found.backend})")
            for col in ("rank", "identity", "sample", "score"):
                table.add_column(col, justify="right" if col in ("rank", "score") else "left")
            for h in hits:
                table.add_row(str(h.rank), escape(h.identity), escape(h.path),
                              f"{h.score:.4f}")  # fmt: skip
            console.print(table)
        result = found.to_dict()
    else:
        result = collection_retrieval(collection, scorer, run, max_rank)
        table = Table(title=f"retrieval over {escape(str(collection))} (leave-one-out)")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in ("precision_at_1", "r_precision", "map_at_r", "map", "rank_1", "rank_5"):
            if key in result:
                table.add_row(key, f"{100 * result[key]:.2f}%")
        for key in ("samples", "identities", "queries"):
            table.add_row(key, str(result[key]))
        console.print(table)
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2))
        console.print(f"wrote {out}", markup=False)


def _is_neighbours_json(path: Path) -> bool:
    """Whether `path` holds what `neighbours --out` writes: a JSON object of probes' neighbours
    (`collection`) or of leave-one-out metrics (`samples`, `queries`)."""
    if path.stat().st_size > 256 * 2**20:  # a million probes: its first keys say what it is
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
        return head.lstrip().startswith("{") and '"collection":' in head
    held = json.loads(path.read_text(encoding="utf-8"))
    return isinstance(held, dict) and (
        "collection" in held or {"samples", "queries"} <= held.keys()
    )
