"""Embeddings of every file some trial lists name, extracted once per file (after AdaBN when
asked), and their trial scores."""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any

import torch

from metaemb.core.deploy.loading import LoadedRun as Loaded
from metaemb.core.errors import DataError, first_few
from metaemb.core.eval.trial_set import TrialSet
from metaemb.core.plugin.interfaces import SampleFolder, Trial
from metaemb.core.scoring.scorers import score_trials


def _match_unicode_forms(where: dict[str, int], needed: list[str]) -> None:
    """Let a trial path find its file when the two spell an accented name in different Unicode
    forms (a folder copied from macOS is NFD, a list typed elsewhere NFC): same NFC, same file."""
    import functools
    import unicodedata

    nfc = functools.partial(unicodedata.normalize, "NFC")
    absent = [p for p in needed if p not in where]
    if not absent:
        return
    by_form: dict[str, list[str]] = {}
    for p in where:
        by_form.setdefault(nfc(p), []).append(p)
    for p in absent:
        same = by_form.get(nfc(p), [])
        if len(same) == 1:  # two files of one NFC name stay ambiguous: reported as missing
            where[p] = where[same[0]]


def files_present(folder: SampleFolder, sets: list[TrialSet]) -> tuple[dict[str, int], list[str]]:
    """(folder index of each file, the files) named by the trial sets, in sorted order; a file
    the folder does not hold is an error naming it and where the list came from."""
    where = {s.path: i for i, s in enumerate(folder.samples)}
    needed = sorted({p for ts in sets for t in ts.trials for p in (*t.enroll, t.test)})
    _match_unicode_forms(where, needed)
    missing = [p for p in needed if p not in where]
    if missing:
        absent = set(missing)
        named = [ts for ts in sets if any(p in absent for t in ts.trials
                                          for p in (*t.enroll, t.test))]  # fmt: skip
        read = "".join(
            f"; {ts.source} was read as {ts.read_as}"
            if ts.read_as
            else f"; they come from {ts.source}"
            if ts.source.startswith("protocol ")
            else ""
            for ts in named
        )
        tests = {t.test for ts in sets for t in ts.trials}
        joined = [p for p in missing if p in tests and "," in p]
        templates = (
            f". The test side of a trial is one file ('{joined[0]}' joins several with ','): "
            "several files are pooled on the enrolment side only; for template-against-template "
            "trials (IJB), pool each side from Python (docs/python.md) and score the pools"
            if joined and all(q in where for q in joined[0].split(","))
            else ""
        )
        raise DataError(
            f"{len(missing)} file(s) named in the trials are not in '{folder.root}': "
            + first_few(missing)
            + read
            + templates
            + _left_out(folder, missing)
        )
    return where, needed


class Embedded:
    """Embeddings of every file named by some trials, extracted once per file."""

    def __init__(
        self,
        loaded: Loaded,
        folder: SampleFolder,
        sets: list[TrialSet],
        workers: int,
        adapt_batchnorm: bool = False,
    ):
        where, needed = files_present(folder, sets)
        indices = [where[p] for p in needed]
        # AdaBN (label-free): the network's normalisation re-estimated on the files scored
        from metaemb.core.eval import adapt_norm

        self.norm_too_few = adapt_batchnorm and len(indices) < adapt_norm.MIN_FILES
        self.norm_adapted_on = (
            loaded.adapt_batchnorm(folder, indices, workers)
            if adapt_batchnorm and not self.norm_too_few
            else 0
        )
        self.emb = loaded.embed(folder, indices, workers)
        self.pos = {p: i for i, p in enumerate(needed)}

    def score(self, scorer: Any, trials: list[Trial]) -> torch.Tensor:
        """Scores (float64, CPU) in trial order; several enrollment files are pooled."""
        test = [self.pos[t.test] for t in trials]
        if all(len(t.enroll) == 1 for t in trials):
            enroll = torch.tensor([self.pos[t.enroll[0]] for t in trials], dtype=torch.long)
            scores = scorer.score(self.emb[enroll], self.emb[torch.tensor(test, dtype=torch.long)])
        else:
            # a file named twice in an enrolment is pooled once, as a gallery enrolls it
            groups = [[self.pos[p] for p in dict.fromkeys(t.enroll)] for t in trials]
            scores = score_trials(scorer, self.emb, groups, test)
        return scores.double().cpu()


def _left_out(folder: SampleFolder, missing: list[str]) -> str:
    """Why files that exist are not samples: the folder's `identity_of` leaves them out (the
    run's folder options apply at evaluation too), or they lack the folder's extensions."""
    from metaemb.core.plugin.components import described

    present = [p for p in missing if (Path(folder.root) / p).is_file()]
    if not present:
        root = Path(folder.root)
        return _under_a_subfolder(root, missing) or _another_extension(root, missing)
    dropped = [p for p in present if folder.identity_of(p) is None]
    if dropped:
        return (
            f". {len(dropped)} of them exist but {described(folder, 'sample folder')} "
            f"leaves them out (its identity_of returns None, e.g. for {dropped[0]!r}) with the "
            "run's folder options: evaluate uses the training folder as configured, so files "
            "to be scored need an identity of their own (identity_of), not None; "
            "--folder-set KEY=VALUE changes an option of it for this command"
        )
    return (
        f". {len(present)} of them exist but are not samples of this folder (extensions "
        f"{', '.join(getattr(folder, 'extensions', ())) or '?'}, or hidden)"
    )


def _under_a_subfolder(root: Path, missing: list[str]) -> str:
    """The list's paths are relative to a folder inside the data root (VoxCeleb1 unpacks as
    `VoxCeleb1/wav/<id>/…` beside its lists): name it."""
    try:
        subs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:
        return ""
    for d in subs[:100]:
        if all((d / p).is_file() for p in missing[:3]):
            return f". They are under '{d}': pass --data {d}"
    return ""


def _another_extension(root: Path, missing: list[str]) -> str:
    """A list naming files without their extension (Kaldi-style utterance names), or with
    another one (`.wav` for files converted to `.flac`): name the file that is there."""
    first = Path(missing[0])
    parent = root / first.parent
    stem = first.name if not first.suffix or len(first.suffix) > 5 else first.stem
    try:
        found = sorted(p for p in parent.glob(f"{glob.escape(stem)}.*") if p.is_file())
    except OSError:
        return ""
    if not found:
        return ""
    there = found[0].relative_to(root).as_posix()
    if re.fullmatch(r".+_\d{4}\.jpg", first.name):  # a `<name> <n>` list holds no paths
        return (
            f". '{there}' exists: the list names its files with another extension. A pairs "
            "list of `<name> <n>` lines reads them as <name>/<name>_NNNN.jpg and cannot name "
            "other files: convert the files to .jpg, or write the trials as a list of the paths "
            "on disk (`metaemb trials make` writes one; --folds 10 scores it in folds); "
            "another list: write the paths as they are on disk"
        )
    return (
        f". '{there}' exists: the list names its files without their extension or with "
        "another one; write the paths as they are on disk"
    )
