"""`metaemb trials make|coverage`: write seeded trial lists and report what a list covers.

Generated lists are part of a result: publish the list with the numbers it produced.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from metaemb.commands.options import DEFAULT_MODALITY

if TYPE_CHECKING:
    from metaemb.core.eval.trials import Trial

app = typer.Typer(
    help="Make seeded trial lists (VoxCeleb, Kaldi or any registered format that can be written) "
    "and report their coverage.",
    no_args_is_help=True,
)


def _folder_name(modality: str, folder: str | None) -> str:
    if folder:
        return folder
    from metaemb.core.plugin.manager import get

    return get("modalities", modality).sample_folder


@app.command()
def make(
    data: Annotated[Path, typer.Argument(help="<identity>/<sample> data folder")],
    out: Annotated[Path, typer.Option(help="trial list to write")],
    targets: Annotated[
        int | None, typer.Option(help="target trials (default: every same-identity pair)", min=1)
    ] = None,
    nontargets: Annotated[
        int | None, typer.Option(help="non-target trials (default: as many as targets)", min=1)
    ] = None,
    enroll: Annotated[
        int | None, typer.Option(help="enrollment samples per trial \\[default: 1]", min=1)
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same list", min=0)] = 0,
    cross_session: Annotated[
        bool,
        typer.Option(
            help="targets only across sessions (<identity>/<session>/<file>: VoxCeleb's "
            "videos), as NIST SRE and VoxCeleb lists are built"
        ),
    ] = False,
    format: Annotated[
        str | None,
        typer.Option(
            help="a trial-list format that can be written: voxceleb, kaldi, cnceleb, lfw, a "
            "plugin's \\[default: voxceleb]"
        ),
    ] = None,
    modality: Annotated[
        str, typer.Option(help="modality whose sample folder reads DATA")
    ] = DEFAULT_MODALITY,
    folder: Annotated[
        str | None, typer.Option(help="sample-folder name (overrides the modality's), e.g. image")
    ] = None,
    folder_set: Annotated[
        list[str] | None,
        typer.Option("--folder-set", help="sample-folder option, e.g. split=test (vggface2)"),
    ] = None,
    triplets: Annotated[
        int | None,
        typer.Option(help="write N seeded 'anchor positive negative' triplets instead", min=1),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="replace an existing --out that holds another list")
    ] = False,
) -> None:
    """Write a seeded trial list (or triplet list) over the samples of DATA; print its coverage."""
    from metaemb.core.errors import ConfigError, MetaembError
    from metaemb.core.eval.trial_checks import check_listable
    from metaemb.core.eval.trial_generation import coverage, make_trials
    from metaemb.core.eval.trials import get_format, write_trials
    from metaemb.core.paths import ensure_writable, refuse_replacing_data_file
    from metaemb.core.plugin.components import build

    if triplets is not None:
        given = {"--targets": targets, "--nontargets": nontargets, "--enroll": enroll,
                 "--format": format, "--cross-session": cross_session or None}  # fmt: skip
        for flag, value in given.items():
            if value is not None:
                raise MetaembError(f"{flag} shapes a trial list, and --triplets writes triplets "
                                   f"instead: leave {flag} out, or --triplets.")  # fmt: skip
    format, enroll = format or "voxceleb", enroll or 1
    _check_writable(format)
    ensure_writable(out, "trial list")
    refuse_replacing_data_file(out, data, "trial list")
    from metaemb.core.config import parse_set
    from metaemb.core.plugin.components import validate_options

    name = _folder_name(modality, folder)
    given = dict(map(parse_set, folder_set or []))
    opts = validate_options("sample_folders", name, given, "folder")
    try:
        sample_folder = build("sample_folders", name, opts, root=data)
    except ConfigError:
        raise  # a setting's mistake (an option, an environment variable), not the data's kind
    except MetaembError as exc:
        if folder or not data.is_dir():
            raise
        raise type(exc)(
            f"{exc} (DATA was read with sample folder '{name}' of --modality {modality}; pass "
            "--modality or --folder for other kinds of data)"
        ) from None
    by_path = {s.path: s.identity for s in sample_folder.samples}

    def identity(path: str) -> str:  # as the sample folder names them (an eye, not a person)
        return by_path.get(path, path)

    if triplets is not None:
        from metaemb.core.eval.triplets import (
            check_triplet_paths,
            make_triplets,
            triplet_coverage,
            write_triplets,
        )

        check_triplet_paths([s.path for s in sample_folder.samples], f"data folder '{data}'")
        made = make_triplets(sample_folder, triplets, seed)
        _keep_other_list(out, force, lambda path: write_triplets(path, made))
        write_triplets(out, made)
        typer.echo(json.dumps({"out": str(out), **triplet_coverage(made, identity)}, indent=2))
        return
    leads = get_format(format).path_leads
    check_listable([s.path for s in sample_folder.samples], f"data folder '{data}'", leads)
    trials = make_trials(sample_folder, targets, nontargets, enroll, seed, cross_session)
    _note_shortfall(trials, targets, nontargets, data)
    _keep_other_list(out, force, lambda path: write_trials(path, trials, format))
    write_trials(out, trials, format)
    written = _as_written(out, data, format, trials)
    typer.echo(json.dumps({"out": str(out), **coverage(written, identity)}, indent=2))


def _as_written(out: Path, data: Path, format: str, made: Sequence[Trial]) -> Sequence[Trial]:
    """The trials the file holds: a format may write fewer than were made (LFW's folds hold
    equal numbers of each kind), and the coverage printed describes the file."""
    from metaemb.core.eval.trials import read_trials

    listed = read_trials(out, root=data, format=format)
    return listed if len(listed) != len(made) else made


def _keep_other_list(out: Path, force: bool, write: Callable[[Path], None]) -> None:
    """Refuse to replace an existing `out` holding another list (a published list, the one a
    protocol reads beside the data, another seed's) unless --force; the same list again (the
    same command re-run) is fine. A file that is no list at all (an export's sidecar, notes, a
    run's README) is never replaced, --force or not."""
    if not out.is_file() or out.stat().st_size == 0:
        return
    import tempfile

    from metaemb.core.errors import MetaembError, OutputError

    if not force:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / out.name
            try:
                write(fresh)
            except MetaembError:  # no room to compare: the write to `out` itself says why
                return
            if fresh.read_bytes() == out.read_bytes():
                return
    why = _not_a_list(out)
    if why:  # a config, notes, code: never replaced
        raise OutputError(
            f"'{out}' exists and is not a trial list ({why}), which this would replace: choose "
            "another --out."
        )
    if force:
        return
    raise OutputError(
        f"'{out}' already holds another list ({_read_as(out)}); a list is part of the results "
        "scored on it, so it is not replaced: choose another --out, or pass --force to replace it."
    )


def _read_as(path: Path) -> str:
    """What an existing list reads as, so a file that only looks like a trial list (CN-Celeb's
    `enroll.lst` reads as an unlabelled VoxCeleb list) is recognised by its owner."""
    from metaemb.core.eval.trials import detect_format, format_label
    from metaemb.core.eval.triplets import HEADER as TRIPLETS_HEADER

    if path.read_text(errors="replace").startswith(TRIPLETS_HEADER):
        return "a triplet list"
    return f"its lines read as trials in {format_label(detect_format(path))}"


def _not_a_list(path: Path) -> str:
    """Why `path` is not a trial or triplet list ("" when it is one): its first line reads in
    no format, or another line has not the shape of the format's lines (notes whose first line
    happens to have three words). Paths are not checked, and a last line cut short (no newline
    after it) is allowed: a damaged or published list (absolute paths) is still a list, which
    --force replaces."""
    from metaemb.core.errors import MetaembError
    from metaemb.core.eval.trials import detect_format, get_format, read_lines
    from metaemb.core.eval.triplets import HEADER as TRIPLETS_HEADER

    try:
        text = path.read_text(errors="replace")
        if text.startswith(TRIPLETS_HEADER):
            fits = lambda fields: len(fields) == 3  # noqa: E731 - anchor positive negative
        else:
            fmt = get_format(detect_format(path))
            fits = fmt.detect
        lines = read_lines(path)
    except MetaembError:
        return "its first line reads as no trial-list format"
    if not text.startswith(TRIPLETS_HEADER):
        try:  # a format whose first line differs from the others (LFW's header) reads it
            fmt.read(path, None)
            return ""
        except MetaembError:
            pass
    whole = lines if text.endswith("\n") else lines[:-1]
    odd = next(((n, f) for n, f in whole if not fits(f)), None)
    return f"line {odd[0]} has another shape: {' '.join(odd[1])[:60]!r}" if odd else ""


def _check_writable(name: str) -> None:
    """--format names a registered trial-list format with a `write` of its own (a plugin's
    too); refuse any other by name, listing those that can write, before any work."""
    from metaemb.core.errors import MetaembError, suggest
    from metaemb.core.eval.trials import TrialFormat, format_label, formats

    known = formats()
    can = ", ".join(sorted(n for n, f in known.items() if type(f).write is not TrialFormat.write))
    if name not in known:
        raise MetaembError(f"--format: unknown trial-list format '{name}';"
                           f"{suggest(name, known)} formats that can be written: {can}.")  # fmt: skip
    if type(known[name]).write is TrialFormat.write:
        raise MetaembError(f"--format: trial-list {format_label(name)} cannot be written (it has "
                           f"no `write`); formats that can be written: {can}.")  # fmt: skip


def _note_shortfall(trials: list, targets: int | None, nontargets: int | None, data: Path) -> None:
    """Warn when DATA holds fewer trials of a kind than were asked for (the list has them all)."""
    import warnings

    made = sum(t.label for t in trials)
    for kind, asked, got in (
        ("target", targets, made),
        ("non-target", nontargets, len(trials) - made),
    ):
        if asked is not None and got < asked:
            warnings.warn(
                f"'{data}' has only {got} distinct {kind} trials; --{kind.replace('-', '')}s "
                f"{asked} asked for more, so all {got} are written.",
                stacklevel=2,
            )


@app.command("coverage")
def coverage_cmd(
    trials: Annotated[Path, typer.Argument(help="trial list (VoxCeleb, Kaldi or LFW pairs.txt)")],
    root: Annotated[
        Path | None, typer.Option(help="data root, to check that paths stay inside it")
    ] = None,
    format: Annotated[
        str, typer.Option(help="auto, voxceleb, kaldi, cnceleb, lfw or a plugin's format")
    ] = "auto",
) -> None:
    """How many trials, identities and samples a trial list (or a triplet list) touches
    (identity = first folder; CN-Celeb's: the file name's speaker prefix)."""
    from metaemb.core.eval.trial_generation import coverage
    from metaemb.core.eval.trials import claiming_formats, detect_format, get_format, read_trials
    from metaemb.core.eval.triplets import is_triplet_list, read_triplets, triplet_coverage

    if root is not None and not root.is_dir():  # every path would be "not under" it
        from metaemb.core.errors import DataError

        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"--root '{root}' {what}.")
    if format == "auto" and is_triplet_list(trials) and not claiming_formats(trials):
        made = read_triplets(trials, root=root)
        _warn_missing(root, [p for t in made for p in (t.anchor, t.positive, t.negative)], trials)
        typer.echo(json.dumps(triplet_coverage(made), indent=2))
        return
    listed = read_trials(trials, root=root, format=format)
    _warn_missing(root, [p for t in listed for p in (*t.enroll, t.test)], trials)
    read_as = get_format(detect_format(trials) if format == "auto" else format)
    typer.echo(json.dumps(coverage(listed, read_as.identity_of), indent=2))


def _warn_missing(root: Path | None, paths: list[str], listed: Path) -> None:
    """With --root, say how many listed files are not under it (a list of another dataset)."""
    import warnings

    from metaemb.core.errors import first_few

    if root is None:
        return
    missing = sorted({p for p in paths if not (root / p).is_file()})
    if missing:
        warnings.warn(
            f"{len(missing)} of the {len(set(paths))} files '{listed}' names are not under "
            f"--root '{root}' ({first_few(missing, 3)}): is it this dataset's list?",
            stacklevel=2,
        )
