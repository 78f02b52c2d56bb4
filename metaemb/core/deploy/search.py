"""Identification: search a gallery for probes (a labelled folder, scored with rank-k and
TPIR@FPIR, or loose files), and the results file. Semantics: docs/gallery.md."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaemb.core.deploy.enrollment import load_with_digest
from metaemb.core.errors import first_few


@dataclass
class Identification:
    """Probes, their true identities (None for loose files), the search result and metrics."""

    probes: list[str]
    truth: list[str] | None
    result: Any  # gallery_search.SearchResult
    metrics: dict[str, Any] = field(default_factory=dict)


def _relative(file: Path, root: Path, known: Any) -> str | None:
    """`file` relative to `root` as the folder's scan names it (one of `known` if it can be):
    by its own path (a symlinked sample is listed under its link's name), or through resolved
    paths (a root given through a link); None when it is under neither."""
    found = []
    for f, r in ((os.path.abspath(file), os.path.abspath(root)), (file.resolve(), root.resolve())):
        with contextlib.suppress(ValueError):
            found.append(Path(f).relative_to(r).as_posix())
    return next((rel for rel in found if rel in known), found[0] if found else None)


def _probe_samples(folder: Any, root: Path, files: list[Path]) -> list[int]:
    from metaemb.core.errors import DataError

    where = {s.path: i for i, s in enumerate(folder.samples)}
    out = []
    for f in files:
        rel = _relative(f, root, where)
        if rel is None:
            raise DataError(
                f"probe '{f}' is not under --data '{root}': give probes inside it, or leave "
                "--data out (each probe's identity is then the name of its folder; --root DIR "
                "for nested layouts)."
            )
        if rel not in where:
            raise DataError(
                f"probe '{f}' is under --data '{root}' but is no sample of its folder (not an "
                "<identity>/<sample> file of a type it reads, or left out by it)."
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
    probe_root: Path | None = None,
) -> Identification:
    """Search `gallery` for every sample of `data` (probes labelled by their identity folder,
    scored with rank-1/5 and TPIR@FPIR), or for the given probe files (no labels; `probe_root`:
    the data folder they are under, whose sample folder names their identities as training did)."""
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.errors import DataError

    if not data and not probes:
        raise DataError(
            "identify needs probes: --data DIR (an <identity>/<sample> folder) or --probe FILE."
        )
    g = Gallery.load(gallery)
    if not g.identities:  # said before any probe is embedded, naming the file
        from metaemb.core.errors import GalleryError

        raise GalleryError(f"gallery '{gallery}' is empty: enroll identities into it first.")
    files = [Path(p) for p in probes or []]
    for f in files:
        if f.is_dir():
            raise DataError(f"probe '{f}' is a folder; give probe files, or the folder as --data.")
        if not f.is_file():
            from metaemb.core.eval.collect import not_a_file

            raise DataError(f"probe file '{f}' {not_a_file(f)}.")
    if data is None:
        # Exactly the probe files, read as ROOT/<folder>/<file>: nothing else is scanned (their
        # common grandparent may be '/' or a home folder).
        from metaemb.core.eval.collect import load_for_files

        loaded = load_for_files(checkpoint, files, device, probe_root)
        digest = loaded.digest
        root = loaded.parts.root
    else:
        root = data
        loaded, digest = load_with_digest(checkpoint, root, device)
    g.check(digest, f"checkpoint '{checkpoint}'")
    if p_new is not None and g.stamp.kind != "gme":
        raise DataError(
            "--p-new (the prior of an unseen identity) is used by meta-embedding galleries, "
            f"whose scores are likelihood ratios; '{gallery}' holds point embeddings. "
            "Use --threshold for an open-set decision."
        )
    folder = loaded.parts.folder
    indices = _probe_samples(folder, root, files) if files else list(range(len(folder)))
    _warn_enrolled_probes(g, [folder.source_of(folder.samples[i]) for i in indices])
    from metaemb.core.eval.collect import naming_inferred_root

    how = getattr(loaded, "root_note", "")
    flag = "--data ROOT" if data is None and probe_root is None else None
    with naming_inferred_root(root, flag, how):
        emb = loaded.embed(folder, indices, workers)
    from metaemb.core.eval.retrieval import adapt_to, faiss_can_search
    from metaemb.core.scoring.choice import choose_scorer

    sc = choose_scorer(loaded, scorer, "search", kind=g.stamp.kind,
                       holder=f"the gallery '{gallery}'", command="identify")  # fmt: skip
    if faiss and not faiss_can_search(sc, g.stamp.kind):
        from metaemb.core.errors import GalleryError
        from metaemb.core.plugin.components import described

        own = "" if scorer else " (the run's own)"
        raise GalleryError(
            f"--faiss searches with the cosine scorer only, and this ranks with "
            f"{described(sc, 'scorer')}{own}: leave out --faiss to rank with it, or pass "
            "--scorer cosine to search with cosine."
        )
    # label-free, to the gallery only: a probe's score and decision must not depend on the
    # other probes of the call (one probe per request in a service)
    adapt_to(sc, g.samples)
    backend = "faiss" if faiss else "torch"
    result = g.search(emb, k=top_k, scorer=sc, threshold=threshold, p_new=p_new, backend=backend)
    names = [str(f) for f in files] if files else [folder.samples[i].path for i in indices]
    if files:
        return Identification(names, None, result)
    labels = [folder.samples[i].identity for i in indices]
    enrolled_as = {name: g.named_as(name) for name in set(labels)}  # José, NFC or NFD
    truth = [enrolled_as[name] for name in labels]
    _warn_renamed_labels(g, truth)
    return Identification(names, truth, result, _metrics(g, emb, sc, truth, result))


def _warn_enrolled_probes(g: Any, probes: list[str]) -> None:
    """Probes (their sources, as the folder names them) that are enrolled samples score
    against themselves: their rank-1 is a given."""
    import warnings

    enrolled = set(g.sources)
    again = [p for p in probes if p in enrolled]
    if again:
        warnings.warn(
            f"{len(again)} of the {len(probes)} probes are samples enrolled in the gallery "
            f"({first_few(map(str, again), 3)}); each scores against itself, which "
            "flatters rank-1 and the identification rates. Probe with other samples.",
            stacklevel=2,
        )


def _warn_renamed_labels(g: Any, truth: list[str]) -> None:
    """Probe folders named as an enrolled identity's folder was before `rename-identity` count
    as non-mated: said, since the gallery's records show which folder each identity was
    enrolled from (the folder at the depth where the other identities' own names stand)."""
    import warnings

    unknown = {t for t in truth if t not in g}
    if not unknown:
        return
    records = [(Path(s).parent.parts, g.identities[o])
               for s, o in zip(g.sources, g.owner.tolist(), strict=True) if s]  # fmt: skip
    depths = Counter(len(parts) - i for parts, owner in records
                     for i in range(len(parts) - 1, -1, -1) if parts[i] == owner)  # fmt: skip
    # the identity folder, counted from the file's folder; when every identity was renamed no
    # folder carries its name, and the depth is the one where folders name probes' labels
    depth = depths.most_common(1)[0][0] if depths else _depth_of_old_names(records, unknown)
    if not depth:
        return
    was: dict[str, str] = {}  # probe label -> the enrolled identity whose folder had its name
    for parts, owner in records:
        if len(parts) >= depth and parts[-depth] in unknown and parts[-depth] != owner:
            was.setdefault(parts[-depth], owner)
    if was:
        n = sum(t in was for t in truth)
        pairs = first_few((f"'{old}' (enrolled as '{new}')" for old, new in sorted(was.items())),
                          3, quote=False)  # fmt: skip
        warnings.warn(
            f"{n} probes are in folders named as no enrolled identity but as the folders "
            f"enrolled identities came from: {pairs}; rename-identity renames the gallery's "
            "identity, not the probe folders. They count as non-mated: rename the probe "
            "folders to the enrolled names to score them as mated.",
            stacklevel=2,
        )


def _depth_of_old_names(records: list[tuple[tuple[str, ...], str]], labels: set[str]) -> int:
    """The folder depth (1: the file's own folder) at which the most enrolled identities have a
    folder name of their own (one for all their files, no other identity's) that names a probe
    label; 0 when none does. A folder above the identity folders is shared, so never chosen."""
    best, best_count = 0, 0
    for depth in range(1, 5):
        names: dict[str, set[str]] = {}
        for parts, owner in records:
            names.setdefault(owner, set()).add(parts[-depth] if len(parts) >= depth else "")
        single = [next(iter(n)) for n in names.values() if len(n) == 1]
        shared = Counter(single)
        count = sum(name in labels and shared[name] == 1 for name in single)
        if count > best_count:
            best, best_count = depth, count
    return best


def _metrics(g: Any, emb: Any, scorer: Any, truth: list[str], result: Any) -> dict[str, Any]:
    """Closed-set rank-1/5 over mated probes, TPIR@FPIR with the score threshold of each (accept
    scores above it), and the open-set decisions' accuracy; `notes` says what a small probe
    set makes of them."""
    import numpy as np

    from metaemb.core.deploy.gallery import NEW
    from metaemb.core.eval import identification as ident
    from metaemb.core.eval.metrics import false_rate_cut

    mated = [t in g for t in truth]
    n_mated = sum(mated)
    out: dict[str, Any] = {
        "probes": len(truth),
        "mated": n_mated,
        "non_mated": len(truth) - n_mated,
    }
    decisions = result.decisions()
    n_non = len(truth) - n_mated
    notes: list[str] = []
    if n_mated:
        matrix = g.score_matrix(emb, scorer)
        cmc = ident.cmc(matrix, truth, g.identities, max_rank=5)
        out["rank_1"] = float(cmc[0])
        if len(g.identities) > 5:  # with 5 or fewer identities every mate is in the top 5
            out["rank_5"] = float(cmc[4])
        if n_non:
            top_non = np.asarray(matrix, dtype=np.float64)[~np.array(mated)].max(axis=1)
            for fpir in (0.01, 0.1):
                out[f"tpir_at_fpir_{fpir:g}"] = ident.tpir_at_fpir(
                    matrix, truth, g.identities, fpir
                )
                # the metric accepts scores above the cut, --threshold those at or above it:
                # the next float up is the --threshold that gives this FPIR
                cut = false_rate_cut(top_non, fpir, "FPIR")
                out[f"threshold_at_fpir_{fpir:g}"] = float(np.nextafter(cut, np.inf))
                if n_non * fpir < 1:
                    notes.append(
                        f"tpir_at_fpir_{fpir:g} is the TPIR at FPIR 0: {n_non} non-mated probe(s) "
                        f"are fewer than the {1 / fpir:g} it takes for one false alarm at FPIR "
                        f"{fpir:g}; add unenrolled people's probes"
                    )
        hits = sum(d == t for d, t, m in zip(decisions, truth, mated, strict=True) if m)
        out["correct_identification_rate"] = hits / n_mated
    if n_non and (result.threshold is not None or result.p_new is not None):
        # closed-set decisions accept every probe: no false-positive rate to measure
        wrong = sum(d != NEW for d, m in zip(decisions, mated, strict=True) if not m)
        out["false_positive_identification_rate"] = wrong / n_non
    out["threshold"] = result.threshold
    if notes:
        out["notes"] = notes
    return out


def tsv_field(text: str) -> str:
    """A name as one TSV field: backslash, tab, newline and carriage return escaped as \\\\,
    \\t, \\n and \\r (a file name may hold any of them)."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


RESULTS_HEADER = "probe\tidentity\trank\tcandidate\tscore\tposterior\tdecision"


def is_results_table(path: Path) -> bool:
    """Whether `path` holds a table `write_results` wrote (its header line)."""
    with open(path, "rb") as f:
        return f.read(len(RESULTS_HEADER) + 1).decode(errors="replace") == RESULTS_HEADER + "\n"


def write_results(path: Path, ident: Identification) -> None:
    """One TSV row per probe and rank: probe, true identity, rank, candidate, score, posterior,
    decision (an enrolled identity, or <new>); names escaped by `tsv_field`."""
    from metaemb.core.files import atomic_write_text

    res = ident.result
    rows = [RESULTS_HEADER]
    for p, probe in enumerate(ident.probes):
        truth = ident.truth[p] if ident.truth else ""
        decision = res.decision(p)
        for r, name in enumerate(res.names(p)):
            post = f"{float(res.posteriors[p, r]):.6g}" if res.posteriors is not None else ""
            score = f"{float(res.scores[p, r]):.6g}"
            fields = [probe, truth, str(r + 1), name, score, post, decision]
            rows.append("\t".join(tsv_field(f) for f in fields))
    atomic_write_text(path, "\n".join(rows) + "\n")
