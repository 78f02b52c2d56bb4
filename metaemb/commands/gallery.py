"""`metaemb enroll`, `unenroll` and `identify`: enroll identities seen a few times into a gallery
file, then find who probes are (or that they are nobody enrolled). The work is in
core/deploy/enrollment.py and search.py; this module parses options and prints. Semantics:
docs/gallery.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metaemb.commands.console import make_console
from metaemb.commands.options import (
    DataFolder,
    DataFolderSet,
    Device,
    FilesRoot,
    FrontendSet,
    Workers,
)
from metaemb.core.data.pipeline import use_folder_set, use_frontend_set
from metaemb.core.deploy.enrollment import enroll_folder
from metaemb.core.deploy.search import Identification, identify_probes, write_results

console = make_console()


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
    if show:  # --show 0: the metrics only
        out.print(table)
    if show and len(ident.probes) > show:
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
            if k.startswith("threshold_at"):  # every digit: a value for --threshold as it is
                m.add_row(k, repr(v))
            elif isinstance(v, float) and k != "threshold":
                m.add_row(k, f"{v:.2%}")
            elif k not in ("threshold", "notes"):
                m.add_row(k, str(v))
        out.print(m)
        for note in ident.metrics.get("notes", []):
            out.print(f"note: {escape(note)}")


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
        from metaemb.core.files import MiB, read_bounded

        try:
            text = read_bounded(identities_file, "--identities-file", 64 * MiB, pipes=True,
                                kind="list of names")  # fmt: skip
            # UTF-16 by its byte-order mark (Notepad's "Unicode", PowerShell's `>`), as lists are
            utf16 = text[:2] in (b"\xff\xfe", b"\xfe\xff")
            text = text.decode("utf-16" if utf16 else "utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise MetaembError(f"--identities-file '{identities_file}' cannot be read: {e}") from e
        # an editor's lines (LF, CRLF or a classic Mac's CR), not str.splitlines, which also
        # splits at form feeds and Unicode separators no editor shows as a new line
        lines = re.split(r"\r\n|\r|\n", text)
        odd = next((n for n, line in enumerate(lines, 1)
                    if len(line.encode()) > 255 or any(ord(c) < 32 for c in line)), None)  # fmt: skip
        if odd is not None:  # a folder name has at most 255 bytes and no control character
            line = lines[odd - 1]
            shown = f"{line[:20]!r}…, {len(line)} characters" if len(line) > 40 else repr(line)
            long = len(line.encode()) > 255
            why = "over 255 bytes" if long else "a tab or control character"
            binary = " Is it the right file?" if long or "\0" in line else ""
            raise MetaembError(
                f"--identities-file '{identities_file}': line {odd} ({shown}) has {why}, which "
                "no identity folder's name has (one name per line, exactly as the folder is "
                f"named).{binary}"
            )
        from_file = [line for line in lines if line != ""]
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
    device: Device = "auto",
    workers: Workers = 2,
    frontend_set: FrontendSet = None,
    folder: DataFolder = None,
    folder_set: DataFolderSet = None,
    show: Annotated[
        int,
        typer.Option(help="identities listed in the table (those with new samples first)", min=0),
    ] = 20,
) -> None:
    """Enroll identities (several samples each) into a gallery file, creating or extending it."""
    use_frontend_set(frontend_set)
    use_folder_set(folder, folder_set)
    names = identity_names(identities, identities_file)
    done = enroll_folder(checkpoint, gallery, data, names, device=device, workers=workers)
    rows = sorted(done.items(), key=lambda item: item[1][0] == 0)  # new samples first, stable
    if show and rows:
        table = Table(title=f"enrolled into {escape(str(gallery))}")
        for col in ("identity", "added", "enrolled"):
            table.add_column(col, justify="left" if col == "identity" else "right")
        for name, (added, total) in rows[:show]:
            table.add_row(escape(name), str(added), str(total))
        console.print(table)
    if len(rows) > show:
        console.print(f"… {len(rows) - show} more identities (--show N lists more)", markup=False)
    added_total = sum(a for a, _ in done.values())
    grew = sum(1 for a, _ in done.values() if a)
    console.print(
        f"{added_total} new samples for {len(done)} identit{'y' if len(done) == 1 else 'ies'} "
        f"({grew} with new samples) into "
        f"{gallery}",
        markup=False,
    )


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
    from metaemb.core.locks import FileLock
    from metaemb.core.paths import ensure_writable

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
            try:
                g.remove(name)  # "not enrolled" (listing the gallery as it is) before any change
            except GalleryError as exc:
                # a hint only where the name typed is a piece of such a name: not for a typo
                typed = identities is not None
                comma = typed and any(name in (p.strip() for p in n.split(",")) for n in
                                      g.identities if "," in n)  # fmt: skip
                blank = typed and any(n != n.strip() and n.strip() == name for n in g.identities)
                hint = " (a name holding ',' goes in --identities-file)" if comma else ""
                if blank and not comma:  # --identities trims: ' bob' reads as 'bob'
                    hint = (" (--identities trims blanks; a name starting or ending with one "
                            "goes in --identities-file, one per line, exactly)")  # fmt: skip
                raise GalleryError(f"{exc}{hint}") from None
        removed = {name: g.remove(name) for name in names}
        g.save(gallery)
    for name, n in removed.items():
        console.print(f"removed {name!r} ({n} samples)", markup=False)
    console.print(f"{len(g)} identities left in {gallery}", markup=False)


def rename_identity(
    gallery: Annotated[Path, typer.Option(help="gallery file written by `metaemb enroll`")],
    old: Annotated[str, typer.Argument(help="the enrolled identity")],
    new: Annotated[str, typer.Argument(help="its new name")],
    merge: Annotated[
        bool, typer.Option(help="NEW may be enrolled already: pool the two identities' samples")
    ] = False,
) -> None:
    """Rename an identity of a gallery file (or merge it into another), without its files."""
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.locks import FileLock
    from metaemb.core.paths import ensure_writable

    ensure_writable(gallery, "gallery file")
    with FileLock(gallery, "gallery"):
        g = Gallery.load(gallery)
        merged = new in g.identities and new != old
        n = g.rename(old, new, merge)
        g.save(gallery)
    said = f"merged {old!r} into {new!r}" if merged else f"renamed {old!r} to {new!r}"
    if new == old:
        said = f"{old!r} is already named so"
    console.print(f"{said} ({n} samples); {len(g)} identities in {gallery}", markup=False)


def identify(
    checkpoint: Annotated[Path, typer.Argument(help="run directory or checkpoint (.pt)")],
    gallery: Annotated[Path, typer.Option(help="gallery file written by `metaemb enroll`")],
    data: Annotated[
        Path | None, typer.Option(help="probe folder <identity>/<sample> (labelled: metrics)")
    ] = None,
    probe: Annotated[
        list[Path] | None, typer.Option(help="probe file (repeatable), read as ROOT/<dir>/<file>")
    ] = None,
    root: FilesRoot = None,
    top_k: Annotated[int, typer.Option(help="candidates per probe", min=1)] = 5,
    threshold: Annotated[
        float | None,
        typer.Option(help="accept the best match when its score/LLR ≥ this (default: GME Bayes)"),
    ] = None,
    p_new: Annotated[
        float | None, typer.Option(help="GME prior that a probe is not enrolled (default 1/(m+1))")
    ] = None,
    scorer: Annotated[
        str | None, typer.Option(help="scorer (default: the run's, fitted state included)")
    ] = None,
    faiss: Annotated[bool, typer.Option(help="faiss index search (cosine scorers)")] = False,
    out: Annotated[Path | None, typer.Option(help="write every candidate to this TSV file")] = None,
    show: Annotated[int, typer.Option(help="probes to print", min=0)] = 20,
    device: Device = "auto",
    workers: Workers = 2,
    frontend_set: FrontendSet = None,
    folder: DataFolder = None,
    folder_set: DataFolderSet = None,
) -> None:
    """Search a gallery: top-k identities per probe, open-set decision, and, for a labelled probe
    folder, rank-1/rank-5 and TPIR@FPIR (probes of identities not enrolled are non-mated)."""
    import math

    from metaemb.core.errors import MetaembError

    use_frontend_set(frontend_set)
    use_folder_set(folder, folder_set)

    if threshold is not None and not math.isfinite(threshold):
        raise MetaembError(f"--threshold must be a finite number; got {threshold}.")
    if p_new is not None and not 0 < p_new < 1:
        raise MetaembError(f"--p-new is a prior probability strictly between 0 and 1; got {p_new}.")
    if out is not None:
        from metaemb.core.deploy.search import is_results_table
        from metaemb.core.paths import ensure_writable, refuse_replacing_another_file

        ensure_writable(out, "results file")
        refuse_replacing_another_file(out, "results file", is_results_table, "metaemb identify")
    ident = identify_probes(
        checkpoint, gallery, data=data, probes=probe, top_k=top_k, threshold=threshold,
        p_new=p_new, scorer=scorer, faiss=faiss, device=device, workers=workers, probe_root=root,
    )  # fmt: skip
    print_results(console, ident, show)
    if out is not None:
        write_results(out, ident)
        console.print(f"wrote {out}", markup=False)
