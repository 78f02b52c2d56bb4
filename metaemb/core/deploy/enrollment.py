"""Enrollment: embed the identity folders of a data folder with a trained model and add them to
a gallery file (created or extended under its lock). Semantics: docs/gallery.md."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

from metaemb.core.errors import first_few


def load_with_digest(checkpoint: Path, data: Path, device: str) -> tuple[Any, str]:
    """The run with its data pipeline on `data`, and the digest of its weights (a gallery's
    stamp: which model its embeddings belong to)."""
    from metaemb.core.deploy.loading import load_run

    loaded = load_run(checkpoint, device, data=data, with_data=True)
    return loaded, loaded.digest


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
    from metaemb.core.locks import FileLock
    from metaemb.core.paths import ensure_writable

    ensure_writable(gallery, "gallery file")
    if Path(gallery).suffix.lower() not in (".pt", ".pth") and not Path(gallery).is_file():
        from metaemb.core.errors import GalleryError

        raise GalleryError(  # a torch file named g.txt or g.npz misleads whoever opens it
            f"'{gallery}': a gallery is a torch file; name it with .pt (or .pth)."
        )
    loaded, digest = load_with_digest(checkpoint, data, device)
    with FileLock(gallery, "gallery"):  # read, extend and save as one step
        return _enroll(loaded, digest, checkpoint, gallery, identities, workers)


def _enroll(
    loaded: Any, digest: str, checkpoint: Path, gallery: Path, identities: list[str] | None,
    workers: int,
) -> dict[str, tuple[int, int]]:  # fmt: skip
    from metaemb.core.deploy.gallery import Gallery, open_gallery
    from metaemb.core.deploy.stamp import ModelStamp
    from metaemb.core.errors import DataError, suggest

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
    _refuse_bad_names(folder)
    sources = [folder.source_of(s) for s in folder.samples]
    renewed = _renew_sources(g, folder, sources) if g is not None else 0
    enrolled = set(g.sources) if g is not None else set()
    as_enrolled = {n: g.named_as(n) if g is not None else n for n in folder.identities}
    if g is not None:
        _refuse_enrolled_as_others(g, folder, sources, as_enrolled)
    todo = [i for i, s in enumerate(sources) if s not in enrolled]
    if todo:  # said when it decides something, not on every later enroll of the same folder
        _warn_respelled(as_enrolled, folder.root)
    added: dict[str, int] = {name: 0 for name in folder.identities}
    moved = 0
    if todo:
        emb = loaded.embed(folder, todo, workers)
        if g is None:
            g = Gallery(ModelStamp.of(loaded.state, emb, str(Path(checkpoint).resolve()),
                                      loaded.digest))  # fmt: skip
        else:
            todo, emb, moved = _follow_moved(g, folder, sources, todo, emb, as_enrolled)
        by_id: dict[str, list[int]] = {}
        for row, i in enumerate(todo):
            by_id.setdefault(folder.samples[i].identity, []).append(row)
        for name, rows in by_id.items():
            added[name] = g.add(as_enrolled[name], emb[rows], [sources[todo[r]] for r in rows])
        if todo or moved:
            g.save(gallery)
    if g is not None:  # after the moved files were found: those are not gone
        _warn_vanished(g, Path(folder.root).resolve(), gallery)
    if renewed and not (todo or moved) and g is not None:
        g.save(gallery)  # the old source names written in the new form
    counts = dict(zip(g.identities, g.counts().tolist(), strict=True)) if g is not None else {}
    return {name: (n, counts.get(as_enrolled[name], 0)) for name, n in added.items()}


def _warn_respelled(as_enrolled: dict[str, str], root: Any) -> None:
    """Identity folders spelled in another Unicode form than their enrolled name: enrolled
    under the gallery's spelling, and said."""
    import warnings

    respelled = [(n, e) for n, e in as_enrolled.items() if n != e]
    if respelled:
        folder, enrolled = respelled[0]
        warnings.warn(
            f"{len(respelled)} identity folder(s) of '{root}' are spelled in another Unicode "
            f"form than their enrolled names ({folder!a} is enrolled as {enrolled!a}; copied "
            "through macOS?): their samples go to the enrolled identity.",
            stacklevel=3,
        )


def _refuse_enrolled_as_others(
    g: Any, folder: Any, sources: list[str], as_enrolled: dict[str, str]
) -> None:
    """The same file under another identity's folder: refused, not skipped, naming every
    identity involved (a swap of names and folders involves two; one named at a time took a
    refusal per identity)."""
    from metaemb.core.errors import GalleryError

    clashes: dict[tuple[str, str], str] = {}  # (enrolled as, folder's name) → first file
    for sample, source in zip(folder.samples, sources, strict=True):
        owner = g.enrolled_as(source)
        if owner is not None and owner != as_enrolled[sample.identity]:
            clashes.setdefault((owner, sample.identity), source)
    if not clashes:
        return
    swapped = sorted({tuple(sorted(k)) for k in clashes if k[::-1] in clashes})
    if swapped:
        a, b = swapped[0]
        both = _identities_argument(a, b)
        raise GalleryError(
            f"the folders '{a}' and '{b}' of '{folder.root}' hold each other's enrolled files "
            f"('{clashes[(b, a)]}' is enrolled as '{b}'): the folders were swapped, or the "
            "names were swapped with rename-identity and the folders too. Remove both "
            f"(metaemb unenroll --gallery … {both}) and enroll them again, or "
            "swap the folders' names back."
        )
    (owner, named), source = next(iter(clashes.items()))
    more = f" ({len(clashes) - 1} more such folder(s))" if len(clashes) > 1 else ""
    raise GalleryError(
        f"'{source}' is already enrolled as '{owner}', not '{named}'{more}: if '{owner}' is its "
        f"new name (rename-identity), rename its folder to '{owner}' too; if it was enrolled "
        f"under a wrong name, remove '{owner}' (metaemb unenroll --gallery … --identities …) "
        "and enroll it again; or enroll the others with --identities."
    )


def _refuse_bad_names(folder: Any) -> None:
    """Every identity folder whose name cannot be a gallery name, at once and before any
    embedding (one per run made a folder with several cost a run each)."""
    from metaemb.core.deploy.identity_names import valid_name
    from metaemb.core.errors import DataError

    bad = [name for name in folder.identities if not valid_name(name)]
    if bad:
        raise DataError(
            f"{len(bad)} identity folder(s) of '{folder.root}' have a tab or a line break in "
            f"their name ({first_few(bad)}); a gallery identity is one line "
            "without tabs: rename the folder(s), or enroll the others with --identities."
        )


def _renew_sources(g: Any, folder: Any, sources: list[str]) -> int:
    """A gallery written before samples were known by their file (`source_of`) remembers a
    sample that is no file of its own (a Kaldi utterance) as `<data root>/<sample path>`: its
    entries for this folder's samples take the new form, or they would be enrolled again."""
    old = (str((folder.root / s.path).resolve()) for s in folder.samples)
    renamed = {a: b for a, b in zip(old, sources, strict=True) if a != b}
    # a tar member enrolled for a while as `<shard>#<last part of its key>`: its whole key now
    # (`shard.tar#alice/v1/0000`), where that short form names one member only
    # (and of the identity whose row it is: bob's shard.tar#0003 never becomes alice/v1/0003)
    short: dict[str, list[tuple[str, str]]] = {}  # short name → [(source, identity)]
    for sample, source in zip(folder.samples, sources, strict=True):
        head, sep, key = source.rpartition("#")
        if sep and "/" in key:
            name = f"{head}#{key.rsplit('/', 1)[-1]}"
            short.setdefault(name, []).append((source, g.named_as(sample.identity)))
    if short:
        owner_of = {s: g.identities[o] for s, o in zip(g.sources, g.owner.tolist(), strict=True)}
        for name, found in short.items():
            mine = [source for source, identity in found if identity == owner_of.get(name)]
            if len(mine) == 1:
                renamed[name] = mine[0]
    return g.rename_sources(renamed)


_SEGMENT = re.compile(r"\d+(\.\d+)?-(\d+(\.\d+)?)?")  # a Kaldi segment: #start-end, seconds


def file_of(source: str) -> str:
    """The file a gallery source is read from: the part before '#' when that names a file (a
    tar shard's `<shard>#<key>`, a table's `<table.csv>#<row>`, a Kaldi segment's
    `<recording>#<start>-<end>`), else the path whole: a folder may be named `Team #2`."""
    head, sep, tail = source.rpartition("#")
    if sep and (Path(head).suffix or _SEGMENT.fullmatch(tail)):
        return head
    return source


def _tar_member(source: str) -> str:
    """The key of a tar member's source (`…/train-000000.tar#alice/v1/0000` → `alice/v1/0000`),
    "" for any other source."""
    head, sep, key = source.rpartition("#")
    return key if sep and head.endswith(".tar") else ""


def source_exists(source: str) -> bool:
    """Whether an enrolled sample's file is still there: the file itself, or the file holding
    it (a tar shard, a table, the recording of a segment; see `file_of`)."""
    return os.path.exists(source) or os.path.exists(file_of(source))


SAME_FILE_DIFFERENCE = 0.01  # relative: one file embedded on two machines, not two files


def _follow_moved(
    g: Any, folder: Any, sources: list[str], todo: list[int], emb: Any,
    as_enrolled: dict[str, str],
) -> tuple[list[int], Any, int]:  # fmt: skip
    """Samples of `todo` that are enrolled files moved elsewhere (the gallery and its folder
    copied to another machine or path, an identity folder renamed after `rename-identity`):
    same identity, same path below the identity folder and the same embedding as a sample whose
    recorded file no longer exists (every such sample is tried). Their records take the new
    path instead of being enrolled a second time (a GME identity's evidence would double) →
    (the samples still to add, their embeddings, how many moved). The same match with a file
    that still exists (a copied folder) is added, and warned about."""
    import warnings

    from metaemb.core.deploy.stamp import stored_parts

    known: dict[tuple[str, str], list[int]] = {}  # (identity, file name) → enrolled rows
    rows_of: dict[str, list[int]] = {}  # identity → its enrolled rows with a source
    owners = g.owner.tolist()
    for row, source in enumerate(g.sources):
        if source:
            identity = g.identities[owners[row]]
            name = _tar_member(source) or Path(file_of(source)).name
            known.setdefault((identity, name), []).append(row)
            rows_of.setdefault(identity, []).append(row)
    new_parts = stored_parts(emb)
    gone_rows: dict[str, list[int]] = {}

    def gone_of(identity: str) -> list[int]:
        """The identity's enrolled rows whose files are gone (looked up once per identity, and
        only among its own rows: enroll stays linear in the gallery)."""
        if identity not in gone_rows:
            gone_rows[identity] = [r for r in rows_of.get(identity, [])
                                   if not source_exists(g.sources[r])]  # fmt: skip
        return gone_rows[identity]

    def difference(k: int, row: int) -> float:
        """Largest relative difference of the two samples' parts: another machine (a GPU's
        TF32, another JPEG decoder) embeds the same file up to about 1e-3 apart."""
        return max(float((new_parts[name][k].double() - g.data[name][row].double()).norm()
                         / g.data[name][row].double().norm().clamp_min(1e-12))
                   for name in new_parts)  # fmt: skip

    renamed: dict[str, str] = {}
    copies: list[tuple[str, str]] = []
    unlike: list[tuple[str, str, float]] = []  # named as a gone file, embedded otherwise
    renamed_twice: list[tuple[str, str]] = []  # embedded as a gone file, named otherwise
    keep: list[int] = []
    root = Path(folder.root).resolve()
    for k, i in enumerate(todo):
        sample = folder.samples[i]
        member = _tar_member(sources[i])
        if member:  # a tar member is its key, whichever shard holds it (shards re-packed)
            key = (as_enrolled[sample.identity], member)
            named = [r for r in known.get(key, []) if g.sources[r] not in renamed]
        else:
            key = (as_enrolled[sample.identity], Path(file_of(sources[i])).name)
            # the path below the identity folder (which a rename-identity may have renamed
            # too): of the file under the data root
            try:
                below = Path(sources[i]).relative_to(root).parts
                depth = max(len(below) - 1, 1)
            except ValueError:  # a recording outside the root (a Kaldi wav.scp)
                depth = max(len(Path(sample.path).parts) - 1, 1)
            tail = Path(sources[i]).parts[-depth:]
            named = [r for r in known.get(key, []) if g.sources[r] not in renamed
                     and Path(g.sources[r]).parts[-depth:] == tail]  # fmt: skip
        apart = {r: difference(k, r) for r in named}
        rows = [r for r in named if apart[r] <= SAME_FILE_DIFFERENCE]
        gone = next((r for r in rows if not source_exists(g.sources[r])), None)
        if gone is not None:
            renamed[g.sources[gone]] = sources[i]
            continue
        if rows:
            copies.append((sources[i], g.sources[rows[0]]))
        elif named and not source_exists(g.sources[named[0]]):
            unlike.append((sources[i], g.sources[named[0]], apart[named[0]]))
        else:  # under another name: a gone file of its identity that embeds the same
            twin = next((r for r in gone_of(key[0]) if difference(k, r) <= SAME_FILE_DIFFERENCE),
                        None)  # fmt: skip
            if twin is not None:
                renamed_twice.append((sources[i], g.sources[twin]))
        keep.append(k)
    if renamed_twice:
        new, old = renamed_twice[0]
        warnings.warn(
            f"{len(renamed_twice)} sample(s) of '{folder.root}' embed as enrolled files of their "
            f"identity that are gone ('{new}' as '{old}'): the same files renamed (moved into "
            "a merged identity's folder under new names?). They are enrolled again and count "
            "twice: `unenroll` the identity and enroll it again. Moving a merged folder inside "
            "the other's keeps its file names, and enroll follows it.",
            stacklevel=3,
        )
    if unlike:
        new, old, diff = unlike[0]
        warnings.warn(
            f"{len(unlike)} sample(s) of '{folder.root}' have the identity and path of enrolled "
            f"files that are gone ('{new}', enrolled as '{old}') but embed differently (by {diff:.1%}, "
            f"more than the {SAME_FILE_DIFFERENCE:.0%} one file gives on another machine): "
            "enrolled as new samples. If they are the same files, their identity now counts "
            "them twice: `unenroll` it and enroll it again.",
            stacklevel=3,
        )
    if copies:
        warnings.warn(
            f"{len(copies)} sample(s) of '{folder.root}' look like files already enrolled (same "
            f"identity, path and embedding; '{copies[0][0]}' like '{copies[0][1]}'), copied: "
            "they are enrolled again, and count twice in their identity's model. Remove the "
            "copies, or `unenroll` and enroll one folder.",
            stacklevel=3,
        )
    if renamed:
        g.rename_sources(renamed)
        warnings.warn(
            f"{len(renamed)} enrolled sample(s) were found moved to '{folder.root}' (same "
            f"identity, path and embedding; the first was '{next(iter(renamed))}'): their "
            "records now point there, and they were not enrolled a second time.",
            stacklevel=3,
        )
    if not renamed:
        return todo, emb, 0
    return [todo[k] for k in keep], (emb[keep] if keep else emb), len(renamed)


def _warn_vanished(g: Any, root: Path, gallery: Path) -> None:
    """Identities enrolled from this data folder whose files are all gone (a renamed identity
    folder would otherwise be enrolled a second time under its new name, unnoticed)."""
    import warnings

    inside: dict[str, list[str]] = {}
    for source, owner in zip(g.sources, g.owner.tolist(), strict=True):
        if source and Path(source).is_relative_to(root):
            inside.setdefault(g.identities[owner], []).append(source)

    gone = [name for name, files in inside.items() if not any(map(source_exists, files))]
    if gone:
        shown = first_few(gone)
        warnings.warn(
            f"the files enrolled in '{gallery}' as {shown} are no longer under '{root}' "
            "(renamed or deleted?); if a folder was renamed, its samples are now enrolled twice: "
            "remove the old name with `metaemb unenroll`.",
            stacklevel=2,
        )


def _identities_argument(*names: str) -> str:
    """`--identities a,b` quoted for a shell, or `--identities-file` for names a comma-separated
    list cannot hold (a name with a comma)."""
    if any("," in n for n in names):
        return "--identities-file FILE (one name per line: " + ", ".join(map(repr, names)) + ")"
    joined = ",".join(names)
    quoted = shlex.quote(joined)
    return "--identities " + (quoted if quoted != joined else f"'{joined}'")
