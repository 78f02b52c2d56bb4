"""`metaemb neighbours`: the k nearest samples of probes among an embedded collection (the
"fingerprint database" of re-identification), and retrieval metrics over a labelled collection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from metaemb.commands.console import make_console
from metaemb.commands.options import DataFolder, DataFolderSet, Device, FilesRoot, Workers

console = make_console()


def _scorer(name: str | None, collection: Any, model: Path | None = None, path: Any = None) -> Any:
    """Scorer `name` as the run (`model`, else the collection's) scores with it, fitted state
    and options included, as `identify --scorer` takes it; by default the run's own, or cosine
    (gme for meta-embeddings) when no run can give it (`choose_scorer`)."""
    from metaemb.core.scoring.choice import choose_scorer

    loaded = _collection_run(collection, model)
    ckpt = collection.meta.get("checkpoint")
    no_run = ("" if loaded is not None else f"'{ckpt}' is not there, cannot be loaded here or "
              "holds another model now" if ckpt else "it names no run")  # fmt: skip
    holder = f"the collection '{path}'" if path is not None else "the collection"
    return choose_scorer(loaded, name, "search", kind=collection.kind, holder=holder,
                         command="neighbours", no_run=no_run,
                         recorded=collection.meta.get("scorer"))  # fmt: skip


def _collection_run(collection: Any, model: Path | None) -> Any:
    """The run whose scorer ranks the collection: `model` (--run), else the one the collection
    names, loaded only when it still holds the model that embedded it (a run trained on since,
    or replaced, would lend another model's fitted state). None when there is none."""
    from metaemb.core.deploy.loading import load_run
    from metaemb.core.deploy.stamp import model_digest
    from metaemb.core.errors import MetaembError

    ckpt = model or collection.meta.get("checkpoint")
    if not ckpt or not Path(ckpt).exists():
        return None
    try:
        loaded = load_run(Path(ckpt))  # a run directory loads its best.pt, else last.pt
    except MetaembError:
        if model is not None:
            raise
        return None  # (a plugin it needs is not installed here): said by the caller
    held = collection.meta.get("model_digest")
    if not held or model_digest(loaded.state["model"]) == held:
        return loaded
    if model is not None:
        raise MetaembError(
            f"'{model}' is not the model that embedded the collection (weights "
            f"{model_digest(loaded.state['model'])} vs {held}); give the run that did."
        )
    return None


def find_neighbours(
    collection_path: Path,
    probes: list[Path],
    k: int = 5,
    run: Path | None = None,
    backend: str = "auto",
    scorer: str | None = None,
    device: str = "auto",
    workers: int = 0,
    root: Path | None = None,
) -> dict[str, Any]:
    """Embed the probe files with the collection's model (or `run`) and search the collection
    (`root`: the data folder the probes are under, as `embed --root`)."""
    from metaemb.core.errors import MetaembError
    from metaemb.core.eval.collect import embed_inputs
    from metaemb.core.eval.retrieval import Collection, nearest

    coll = Collection.load(collection_path)
    model = run or (Path(coll.meta["checkpoint"]) if coll.meta.get("checkpoint") else None)
    if model is None:
        raise MetaembError(
            f"'{collection_path}' does not say which model embedded it; pass --run RUN_OR_CHECKPOINT."
        )
    probe = embed_inputs(model, probes, device=device, workers=workers, root=root)
    if coll.meta.get("model_digest") and probe.meta["model_digest"] != coll.meta["model_digest"]:
        raise MetaembError(
            f"'{model}' is not the model that embedded '{collection_path}' (weights "
            f"{probe.meta['model_digest']} vs {coll.meta['model_digest']}); embeddings of different "
            "models cannot be compared. Re-embed the collection or pass the right --run."
        )
    from metaemb.core.eval.retrieval import adapt_to

    sc = _scorer(scorer, coll, model, collection_path)
    adapt_to(sc, coll.embeddings, probe.embeddings)  # label-free, to everything compared
    scores, index, used = nearest(coll.embeddings, probe.embeddings, k, sc, backend)
    results = []
    for p, path in enumerate(probe.paths):
        hits = [
            {
                "rank": r + 1,
                "path": coll.paths[i],
                "identity": coll.identities[i],
                "score": float(s),
            }
            for r, (i, s) in enumerate(zip(index[p].tolist(), scores[p].tolist(), strict=True))
        ]
        results.append({"probe": path, "neighbours": hits})
    return {
        "backend": used,
        "k": index.shape[1],
        "collection": str(collection_path),
        "probes": results,
    }


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
        ensure_writable(out, "results file")  # before any embedding
    if probe:
        result = find_neighbours(collection, probe, k, run, backend, scorer, device, workers, root)
        for entry in result["probes"]:
            table = Table(title=f"nearest to {escape(entry['probe'])} ({result['backend']})")
            for col in ("rank", "identity", "sample", "score"):
                table.add_column(col, justify="right" if col in ("rank", "score") else "left")
            for h in entry["neighbours"]:
                table.add_row(str(h["rank"]), escape(h["identity"]), escape(h["path"]),
                              f"{h['score']:.4f}")  # fmt: skip
            console.print(table)
    else:
        from metaemb.core.eval.retrieval import Collection, collection_metrics

        coll = Collection.load(collection)
        try:
            from metaemb.core.eval.retrieval import adapt_to

            sc = _scorer(scorer, coll, run, collection)
            adapt_to(sc, coll.embeddings)
            result = collection_metrics(coll, sc, max_rank=max_rank)
        except MetaembError as exc:  # which collection: the message is about its contents
            if f"'{collection}'" in str(exc):
                raise
            raise type(exc)(f"'{collection}': {exc}") from None
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
