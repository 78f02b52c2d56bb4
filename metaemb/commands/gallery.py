"""`metaemb enroll` and `metaemb identify`: enroll identities seen a few times into a gallery file,
then find who probes are (or that they are nobody enrolled). Semantics: docs/gallery.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metaemb.core.errors import first_few

console = Console(emoji=False)


# -- the work (importable, tested) ------------------------------------------------------------
def _load(checkpoint: Path, data: Path, device: str) -> tuple[Any, str]:
    from metaemb.core.deploy.loading import load_run
    from metaemb.core.deploy.stamp import model_digest

    loaded = load_run(checkpoint, device, data=data, with_data=True)
    return loaded, model_digest(loaded.state["model"])


def enroll_folder(
    checkpoint: Path,
    gallery: Path,
    data: Path,
    identities: list[str] | None = None,
    device: str = "auto",
    workers: int = 2,
) -> dict[str, tuple[int, int]]:
    """Enroll every identity folder of `data` (or the named ones) into `gallery`, creating or
    extending it → identity: (samples added, samples enrolled). Samples already enrolled (same
    file) are not embedded again, so re-running is harmless."""
    from metaemb.core.paths import ensure_writable
    from metaemb.core.runs import FileLock

    ensure_writable(gallery, "gallery file")
    loaded, digest = _load(checkpoint, data, device)
    with FileLock(gallery, "gallery"):  # read, extend and save as one step
        return _enroll(loaded, digest, checkpoint, gallery, identities, workers)


def _enroll(
    loaded: Any, digest: str, checkpoint: Path, gallery: Path, identities: list[str] | None,
    workers: int,
) -> dict[str, tuple[int, int]]:  # fmt: skip
    from metaemb.core.deploy.gallery import Gallery, open_gallery
    from metaemb.core.deploy.stamp import ModelStamp
    from metaemb.core.errors import DataError, GalleryError, suggest

    g = open_gallery(gallery, digest, f"checkpoint '{checkpoint}'")
    folder = loaded.parts.folder
    if identities:
        unknown = [i for i in identities if i not in folder.identities]
        if unknown:
            raise DataError(
                f"identity '{unknown[0]}' has no folder under '{folder.root}';"
                f"{suggest(unknown[0], folder.identities)} ({len(folder.identities)} identities "
                "found there)"
            )
        folder = folder.subset(identities)
    sources = [str((folder.root / s.path).resolve()) for s in folder.samples]
    enrolled = set(g.sources) if g is not None else set()
    for i, source in enumerate(sources):  # the same file under another name: refused, not skipped
        owner = g.enrolled_as(source) if g is not None else None
        if owner is not None and owner != folder.samples[i].identity:
            raise GalleryError(
                f"'{source}' is already enrolled as '{owner}', not "
                f"'{folder.samples[i].identity}'; remove '{owner}' first if it was enrolled "
                "under the wrong name (metaemb unenroll --gallery … --identities …)."
            )
    if g is not None:
        _warn_vanished(g, Path(folder.root).resolve(), gallery)
    todo = [i for i, s in enumerate(sources) if s not in enrolled]
    added: dict[str, int] = {name: 0 for name in folder.identities}
    if todo:
        emb = loaded.embed(folder, todo, workers)
        if g is None:
            g = Gallery(ModelStamp.of(loaded.state, emb, str(Path(checkpoint).resolve())))
        by_id: dict[str, list[int]] = {}
        for row, i in enumerate(todo):
            by_id.setdefault(folder.samples[i].identity, []).append(row)
        for name, rows in by_id.items():
            added[name] = g.add(name, emb[rows], [sources[todo[r]] for r in rows])
        g.save(gallery)
    counts = dict(zip(g.identities, g.counts().tolist(), strict=True)) if g is not None else {}
    return {name: (n, counts.get(name, 0)) for name, n in added.items()}


def _warn_vanished(g: Any, root: Path, gallery: Path) -> None:
    """Identities enrolled from this data folder whose files are all gone (a renamed identity
    folder would otherwise be enrolled a second time under its new name, unnoticed)."""
    import os
    import warnings

    inside: dict[str, list[str]] = {}
    for source, owner in zip(g.sources, g.owner.tolist(), strict=True):
        if source and Path(source).is_relative_to(root):
            inside.setdefault(g.identities[owner], []).append(source)
    gone = [name for name, files in inside.items() if not any(map(os.path.exists, files))]
    if gone:
        shown = first_few(gone)
        warnings.warn(
            f"the files enrolled in '{gallery}' as {shown} are no longer under '{root}' "
            "(renamed or deleted?); if a folder was renamed, its samples are now enrolled twice: "
            "remove the old name with `metaemb unenroll`.",
            stacklevel=2,
        )


@dataclass
class Identification:
    """Probes, their true identities (None for loose files), the search result and metrics."""

    probes: list[str]
    truth: list[str] | None
    result: Any  # gallery.SearchResult
    metrics: dict[str, Any] = field(default_factory=dict)


def _scorer(loaded: Any, name: str | None) -> Any:
    """A scorer by name; a fitted one (PLDA, s-norm) takes its state from the checkpoint."""
    from metaemb.core.errors import GalleryError

    if name is None:
        return None
    scorer, needs_fit = loaded.scorer(name)
    if needs_fit:
        raise GalleryError(
            f"scorer '{name}' must be fitted and the checkpoint holds no fitted '{name}' "
            f"(its scorer is '{loaded.config.eval.scorer}'); use cosine, euclidean or gme."
        )
    return scorer


def _probe_samples(folder: Any, root: Path, files: list[Path]) -> list[int]:
    from metaemb.core.errors import DataError

    where = {s.path: i for i, s in enumerate(folder.samples)}
    out = []
    for f in files:
        try:
            rel = f.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            rel = None
        if rel not in where:
            raise DataError(
                f"probe '{f}' is not an <identity>/<sample> file of a supported type under the "
                f"data root '{root}'; pass --data ROOT for files laid out as ROOT/<folder>/<file>."
            )
        out.append(where[rel])
    return out


def identify_probes(
    checkpoint: Path,
    gallery: Path,
    data: Path | None = None,
    probes: list[Path] | None = None,
    top_k: int = 5,
    threshold: float | None = None,
    p_new: float | None = None,
    scorer: str | None = None,
    faiss: bool = False,
    device: str = "auto",
    workers: int = 2,
) -> Identification:
    """Search `gallery` for every sample of `data` (probes labelled by their identity folder,
    scored with rank-1/5 and TPIR@FPIR), or for the given probe files (no labels)."""
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.errors import DataError

    if not data and not probes:
        raise DataError(
            "identify needs probes: --data DIR (an <identity>/<sample> folder) or --probe FILE."
        )
    g = Gallery.load(gallery)
    files = [Path(p) for p in probes or []]
    for f in files:
        if f.is_dir():
            raise DataError(f"probe '{f}' is a folder; give probe files, or the folder as --data.")
        if not f.is_file():
            raise DataError(f"probe file '{f}' does not exist.")
    if data is None:
        # Exactly the probe files, read as ROOT/<folder>/<file>: nothing else is scanned (their
        # common grandparent may be '/' or a home folder).
        from metaemb.core.deploy.stamp import model_digest
        from metaemb.core.eval.collect import load_for_files

        loaded = load_for_files(checkpoint, files, device)
        digest = model_digest(loaded.state["model"])
        root = loaded.parts.root
    else:
        root = data
        loaded, digest = _load(checkpoint, root, device)
    g.check(digest, f"checkpoint '{checkpoint}'")
    if p_new is not None and g.stamp.kind != "gme":
        raise DataError(
            "--p-new (the prior of an unseen identity) is used by meta-embedding galleries, "
            f"whose scores are likelihood ratios; '{gallery}' holds point embeddings. "
            "Use --threshold for an open-set decision."
        )
    folder = loaded.parts.folder
    indices = _probe_samples(folder, root, files) if files else list(range(len(folder)))
    _warn_enrolled_probes(g, [(folder.root / folder.samples[i].path) for i in indices])
    emb = loaded.embed(folder, indices, workers)
    sc = _scorer(loaded, scorer)
    backend = "faiss" if faiss else "torch"
    result = g.search(emb, k=top_k, scorer=sc, threshold=threshold, p_new=p_new, backend=backend)
    names = [str(f) for f in files] if files else [folder.samples[i].path for i in indices]
    if files:
        return Identification(names, None, result)
    truth = [folder.samples[i].identity for i in indices]
    return Identification(names, truth, result, _metrics(g, emb, sc, truth, result))


def _warn_enrolled_probes(g: Any, probes: list[Path]) -> None:
    """Probes that are enrolled samples score against themselves: their rank-1 is a given."""
    import warnings

    enrolled = set(g.sources)
    again = [p for p in probes if str(p.resolve()) in enrolled]
    if again:
        warnings.warn(
            f"{len(again)} of the {len(probes)} probes are samples enrolled in the gallery "
            f"({first_few(map(str, again), 3)}); each scores against itself, which "
            "flatters rank-1 and the identification rates. Probe with other samples.",
            stacklevel=2,
        )


def _metrics(g: Any, emb: Any, scorer: Any, truth: list[str], result: Any) -> dict[str, Any]:
    """Closed-set rank-1/5 over mated probes, TPIR@FPIR, and the open-set decisions' accuracy."""
    from metaemb.core.deploy.gallery import NEW
    from metaemb.core.eval import identification as ident

    mated = [t in g for t in truth]
    n_mated = sum(mated)
    out: dict[str, Any] = {
        "probes": len(truth),
        "mated": n_mated,
        "non_mated": len(truth) - n_mated,
    }
    decisions = result.decisions()
    if n_mated:
        matrix = g.score_matrix(emb, scorer)
        cmc = ident.cmc(matrix, truth, g.identities, max_rank=5)
        out["rank_1"], out["rank_5"] = float(cmc[0]), float(cmc[4])
        if n_mated < len(truth):
            for fpir in (0.01, 0.1):
                out[f"tpir_at_fpir_{fpir:g}"] = ident.tpir_at_fpir(
                    matrix, truth, g.identities, fpir
                )
        hits = sum(d == t for d, t, m in zip(decisions, truth, mated, strict=True) if m)
        out["correct_identification_rate"] = hits / n_mated
    if n_mated < len(truth):
        wrong = sum(d != NEW for d, m in zip(decisions, mated, strict=True) if not m)
        out["false_positive_identification_rate"] = wrong / (len(truth) - n_mated)
    out["threshold"] = result.threshold
    return out


def tsv_field(text: str) -> str:
    """A name as one TSV field: backslash, tab, newline and carriage return escaped as \\\\,
    \\t, \\n and \\r (a file name may hold any of them)."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def write_results(path: Path, ident: Identification) -> None:
    """One TSV row per probe and rank: probe, true identity, rank, candidate, score, posterior,
    decision (an enrolled identity, or <new>); names escaped by `tsv_field`."""
    from metaemb.core.runs import atomic_write_text

    res = ident.result
    rows = ["probe\tidentity\trank\tcandidate\tscore\tposterior\tdecision"]
    for p, probe in enumerate(ident.probes):
        truth = ident.truth[p] if ident.truth else ""
        decision = res.decision(p)
        for r, name in enumerate(res.names(p)):
            post = f"{float(res.posteriors[p, r]):.6g}" if res.posteriors is not None else ""
            score = f"{float(res.scores[p, r]):.6g}"
            fields = [probe, truth, str(r + 1), name, score, post, decision]
            rows.append("\t".join(tsv_field(f) for f in fields))
    atomic_write_text(path, "\n".join(rows) + "\n")


# -- printing -----------------------------------------------------------------------------------
def print_results(out: Console, ident: Identification, show: int) -> None:
    res = ident.result
    what = "LLR" if res.kind == "llr" else "score"
    table = Table(
        title=f"top-{res.index.shape[1]} identities ({what}"
        + (", posterior)" if res.posteriors is not None else ")")
    )
    table.add_column("probe")
    if ident.truth:
        table.add_column("identity")
    table.add_column("decision")
    for r in range(res.index.shape[1]):
        table.add_column(f"#{r + 1}")
    if res.p_new is not None:
        table.add_column("P(new)", justify="right")
    for p in range(min(show, len(ident.probes))):
        cells = [escape(ident.probes[p])]
        if ident.truth:
            cells.append(escape(ident.truth[p]))
        cells.append(escape(res.decision(p)))
        for r, name in enumerate(res.names(p)):
            cell = f"{escape(name)} {float(res.scores[p, r]):.3f}"
            if res.posteriors is not None:
                cell += f" ({float(res.posteriors[p, r]):.1%})"
            cells.append(cell)
        cells += [""] * (res.index.shape[1] - len(res.names(p)))
        if res.p_new is not None:
            cells.append(f"{float(res.p_new[p]):.1%}")
        table.add_row(*cells)
    out.print(table)
    if len(ident.probes) > show:
        out.print(f"… {len(ident.probes) - show} more probes (see --out, or raise --show)")
    if res.threshold is None:
        out.print("closed-set decisions (no --threshold): every probe goes to its best match")
    else:
        out.print(f"open-set decision threshold: {what} ≥ {res.threshold:.4g}")
    if ident.metrics:
        m = Table(title="identification")
        m.add_column("metric")
        m.add_column("value", justify="right")
        for k, v in ident.metrics.items():
            if isinstance(v, float) and k != "threshold":
                m.add_row(k, f"{v:.2%}")
            elif k != "threshold":
                m.add_row(k, str(v))
        out.print(m)


def identity_names(identities: str | None, identities_file: Path | None) -> list[str] | None:
    """The names `--identities A,B` (trimmed, split at commas) and `--identities-file FILE` (one
    per line, exactly as written, for names holding a comma or blanks) give; None when neither."""
    from metaemb.core.errors import MetaembError

    if identities is None and identities_file is None:
        return None
    names = [s.strip() for s in identities.split(",") if s.strip()] if identities else []
    if identities is not None and not names:
        raise MetaembError(
            f"--identities {identities!r} names no identity; give names separated by ',' (a name "
            "holding a comma or blanks goes in --identities-file, one per line)."
        )
    if identities_file is not None:
        try:
            text = identities_file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise MetaembError(f"--identities-file '{identities_file}' cannot be read: {e}") from e
        from_file = [line for line in text.splitlines() if line != ""]
        if not from_file:
            raise MetaembError(f"--identities-file '{identities_file}' names no identity.")
        names += from_file
    return names


# -- commands -----------------------------------------------------------------------------------
def enroll(
    checkpoint: Annotated[Path, typer.Argument(help="run directory or checkpoint (.pt)")],
    gallery: Annotated[Path, typer.Option(help="gallery file to create or extend")],
    data: Annotated[Path, typer.Option(help="<identity>/<sample> folder: one folder per identity")],
    identities: Annotated[
        str | None, typer.Option(help="comma-separated identities to enroll (default: all)")
    ] = None,
    identities_file: Annotated[
        Path | None,
        typer.Option(help="a text file of identities to enroll, one per line, taken exactly"),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps")] = "auto",
    workers: Annotated[int, typer.Option(help="DataLoader workers", min=0)] = 2,
) -> None:
    """Enroll identities (several samples each) into a gallery file, creating or extending it."""
    names = identity_names(identities, identities_file)
    done = enroll_folder(checkpoint, gallery, data, names, device=device, workers=workers)
    table = Table(title=f"enrolled into {escape(str(gallery))}")
    for col in ("identity", "added", "enrolled"):
        table.add_column(col, justify="left" if col == "identity" else "right")
    for name, (added, total) in done.items():
        table.add_row(escape(name), str(added), str(total))
    console.print(table)
    added_total = sum(a for a, _ in done.values())
    console.print(f"{added_total} new samples for {len(done)} identities", markup=False)


def unenroll(
    gallery: Annotated[Path, typer.Option(help="gallery file written by `metaemb enroll`")],
    identities: Annotated[
        str | None, typer.Option(help="comma-separated identities to remove")
    ] = None,
    identities_file: Annotated[
        Path | None,
        typer.Option(help="a text file of identities to remove, one per line, taken exactly"),
    ] = None,
) -> None:
    """Remove identities (and all their samples) from a gallery file."""
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.errors import GalleryError
    from metaemb.core.paths import ensure_writable
    from metaemb.core.runs import FileLock

    names = identity_names(identities, identities_file)
    if names is None:
        raise GalleryError(
            "name the identities to remove: --identities A,B or --identities-file FILE."
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise GalleryError(f"--identities names {', '.join(map(repr, twice))} more than once.")
    ensure_writable(gallery, "gallery file")
    with FileLock(gallery, "gallery"):
        g = Gallery.load(gallery)
        for name in (n for n in names if n not in g.identities):
            g.remove(name)  # raises "not enrolled" (listing the gallery as it is) before any change
        removed = {name: g.remove(name) for name in names}
        g.save(gallery)
    for name, n in removed.items():
        console.print(f"removed {name!r} ({n} samples)", markup=False)
    console.print(f"{len(g)} identities left in {gallery}", markup=False)


def identify(
    checkpoint: Annotated[Path, typer.Argument(help="run directory or checkpoint (.pt)")],
    gallery: Annotated[Path, typer.Option(help="gallery file written by `metaemb enroll`")],
    data: Annotated[
        Path | None, typer.Option(help="probe folder <identity>/<sample> (labelled: metrics)")
    ] = None,
    probe: Annotated[
        list[Path] | None, typer.Option(help="probe file (repeatable), read as ROOT/<dir>/<file>")
    ] = None,
    top_k: Annotated[int, typer.Option(help="candidates per probe", min=1)] = 5,
    threshold: Annotated[
        float | None,
        typer.Option(help="accept the best match when its score/LLR ≥ this (default: GME Bayes)"),
    ] = None,
    p_new: Annotated[
        float | None, typer.Option(help="GME prior that a probe is not enrolled (default 1/(m+1))")
    ] = None,
    scorer: Annotated[str | None, typer.Option(help="scorer (default: cosine, or gme)")] = None,
    faiss: Annotated[bool, typer.Option(help="faiss index search (cosine galleries)")] = False,
    out: Annotated[Path | None, typer.Option(help="write every candidate to this TSV file")] = None,
    show: Annotated[int, typer.Option(help="probes to print", min=0)] = 20,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps")] = "auto",
    workers: Annotated[int, typer.Option(help="DataLoader workers", min=0)] = 2,
) -> None:
    """Search a gallery: top-k identities per probe, open-set decision, and, for a labelled probe
    folder, rank-1/rank-5 and TPIR@FPIR (probes of identities not enrolled are non-mated)."""
    import math

    from metaemb.core.errors import MetaembError

    if threshold is not None and not math.isfinite(threshold):
        raise MetaembError(f"--threshold must be a finite number; got {threshold}.")
    if p_new is not None and not 0 < p_new < 1:
        raise MetaembError(f"--p-new is a prior probability strictly between 0 and 1; got {p_new}.")
    if out is not None:
        from metaemb.core.paths import ensure_writable

        ensure_writable(out, "results file")
    ident = identify_probes(
        checkpoint, gallery, data=data, probes=probe, top_k=top_k, threshold=threshold,
        p_new=p_new, scorer=scorer, faiss=faiss, device=device, workers=workers,
    )  # fmt: skip
    print_results(console, ident, show)
    if out is not None:
        write_results(out, ident)
        console.print(f"wrote {out}", markup=False)
