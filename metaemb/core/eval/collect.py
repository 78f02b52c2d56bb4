"""`metaemb embed`: embed a whole <identity>/<sample> folder, or loose sample files, into a
collection file (paths, identities, embeddings and which model made them).

Loose files are read by the run's own sample-folder type with an explicit sample list (nothing
around them is scanned); each file's identity is the name of the folder it sits in, or, with
`root` (`embed --root DIR`), what the run's folder says of its path under that root (its first
folder, or the folder's `identity_of` for nested layouts such as `u001/forgery/f01.csv`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from metaemb.core.errors import DataError, DatasetError, MetaembError
from metaemb.core.eval.retrieval import Collection


def _model_meta(loaded: Any, checkpoint: Path) -> dict[str, Any]:
    cfg = loaded.config
    return {
        "checkpoint": str(Path(checkpoint).resolve()),
        "model_digest": loaded.digest,
        "scorer": cfg.eval.scorer,
        "modality": cfg.modality,
    }


def load_for_files(
    checkpoint: Path, files: list[Path], device: str = "auto", root: Path | None = None
) -> Any:
    """A loaded run whose data pipeline holds exactly `files` (root: `root`, or else their
    common grandparent)."""
    from metaemb.core.data.pipeline import Components, build_frontend
    from metaemb.core.deploy.loading import load_run
    from metaemb.core.deploy.run_data import plain_folder, read_with
    from metaemb.core.plugin.components import build
    from metaemb.core.plugin.interfaces import Sample
    from metaemb.core.plugin.manager import registry

    by_root = root is not None  # identity: the folder under --root, else the parent folder
    for f in files:
        if not f.is_file():
            raise DataError(f"sample file '{f}' {not_a_file(f)}.")
    resolved = [f.resolve() for f in files]
    seen: dict[Path, Path] = {}
    for f, real in zip(files, resolved, strict=True):
        if real in seen:  # it would be one more sample of its identity (retrieval counts it)
            raise DataError(f"sample file '{f}' is given twice (also as '{seen[real]}').")
        seen[real] = f
    loaded = load_run(Path(checkpoint), device)
    cfg = loaded.config
    read_with(cfg)  # the command's --folder / --folder-set
    loaded.root_note = ""  # how the root was chosen, when the user did not give it
    if root is not None:
        root = _check_root(root, files, resolved)
    elif (own := _own_root(cfg, resolved)) is not None:  # the run's data: named as in training
        root, by_root = own, True
        loaded.root_note = "the run's own data folder, which holds them"
    else:
        root = Path(os.path.commonpath([str(f.parent.parent) for f in resolved]))
        loaded.root_note = "the files' common folder two levels up"
    cfg.data.root, cfg.data.root_absolute = str(root), ""
    plain_folder(
        cfg, "the sample files given"
    )  # a container run (RecordIO, tar shards): plain files
    factory = registry("sample_folders").get(cfg.data.folder)
    exts = {e.lower() for e in getattr(factory, "extensions", ())}
    bad = [str(f) for f in files if exts and f.suffix.lower() not in exts]
    if bad:
        raise DataError(
            f"'{bad[0]}' is not {_article(getattr(factory, 'what', 'sample'))} file the run's "
            "sample folder "
            f"'{cfg.data.folder}' reads ({', '.join(sorted(exts))})."
        )
    if not by_root:
        _note_own_naming(factory, cfg.data.folder)
    rels = [f.relative_to(root).as_posix() for f in resolved]
    samples = [Sample(r, r.split("/")[0] if by_root else Path(r).parent.name, -1) for r in rels]
    try:
        folder = build(
            "sample_folders", cfg.data.folder, cfg.options("folder"), root=root, samples=samples
        )
        named = _named_by_folder(folder, samples, root) if by_root else samples
        if named != samples:  # nested layouts: the folder's identity_of names them
            folder = build(
                "sample_folders", cfg.data.folder, cfg.options("folder"), root=root, samples=named
            )
    except TypeError:
        folder = None
    if folder is None or [s.path for s in folder.samples] != [s.path for s in samples]:
        raise DataError(  # a folder that scans its root instead would embed other files
            f"sample folder '{cfg.data.folder}' (plugin "
            f"'{registry('sample_folders').entry(cfg.data.folder).plugin}') cannot read loose "
            "files (it does not take the "
            "`samples` it is given); put them in an <identity>/<sample> folder and embed the "
            "folder."
        )
    frontend = build_frontend(cfg, root)
    loaded.data = Components(cfg, root, folder, frontend, loaded.model.features, loaded.model)
    return loaded


@contextmanager
def naming_inferred_root(root: Path, flag: str | None, how: str = "") -> Iterator[None]:
    """A whole-dataset file (a table kept under the data root) that loose files could not find
    is looked for under the root inferred from them: say so, how it was chosen (`how`), and
    which option sets it (`flag`; None when the user gave the root)."""
    try:
        yield
    except DatasetError as exc:
        if flag is None:
            raise
        how = how or "the files' common folder two levels up"
        raise DatasetError(
            f"{exc} (The data root was taken as '{root}', {how}; {flag} sets it.)"
        ) from None


def _own_root(cfg: Any, resolved: list[Path]) -> Path | None:
    """The folder the run trained on, when every file lies in one of its identity folders
    (`<root>/<identity>/…/<file>`): loose files from it get the identities training gave them
    (`s001`, not the session folder `day2` they sit in)."""
    if not cfg.data.root:
        return None  # demo data: its cached folder is not looked up (or generated) here
    from metaemb.core.data.pipeline import data_root

    try:
        own = data_root(cfg).resolve()
    except (OSError, MetaembError):
        return None
    inside = all(r.is_relative_to(own) and len(r.relative_to(own).parts) >= 2 for r in resolved)
    return own if own.is_dir() and inside else None


def not_a_file(path: Path) -> str:
    """Why `path` is not a file to read: missing, or a FIFO, socket or device (reading a FIFO
    waits for a writer forever)."""
    if path.exists() and not path.is_dir():
        return "is not a regular file (a FIFO, socket or device: reading it would wait forever)"
    return "does not exist"


def _article(word: str) -> str:
    """ "an apple", "a sample": the word with its indefinite article."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _note_own_naming(factory: Any, name: str) -> None:
    """Without --root a loose file's identity is its folder's name; a run's folder that names
    identities its own way (`identity_of`: `u001/forgery`) would name them otherwise: say so."""
    import warnings

    from metaemb.core.plugin.interfaces import SampleFolder

    own = getattr(factory, "identity_of", SampleFolder.identity_of)
    if isinstance(factory, type) and own is not SampleFolder.identity_of:
        warnings.warn(
            f"the run's sample folder '{name}' names identities its own way (identity_of); "
            "without --root each file's identity is the name of the folder it sits in. Give "
            "--root DATA (the data folder the files are under) for the identities the run's "
            "folder gives them.",
            stacklevel=3,
        )


def _check_root(root: Path, files: list[Path], resolved: list[Path]) -> Path:
    """`embed --root`: an existing folder holding every file (two levels down at least)."""
    if not root.is_dir():
        raise DataError(f"--root '{root}' is not a folder.")
    real = root.resolve()
    for f, r in zip(files, resolved, strict=True):
        if not r.is_relative_to(real) or len(r.relative_to(real).parts) < 2:
            raise DataError(
                f"sample file '{f}' is not inside an identity folder of --root '{root}' "
                "(<root>/<identity>/…/<file>)."
            )
    return real


def _named_by_folder(folder: Any, samples: list[Any], root: Path) -> list[Any]:
    """The samples, each with its identity as the run's folder names it."""
    from metaemb.core.plugin.interfaces import Sample

    named = []
    for s in samples:
        identity = folder.identity_of(s.path)
        if identity is None:
            raise DataError(
                f"'{root / s.path}' is left out by the run's sample folder (its identity_of "
                "returns None for it with the run's folder options), so the model was never "
                "meant to embed it; if one of those options leaves it out, --folder-set "
                "KEY=VALUE changes it for this command."
            )
        named.append(Sample(s.path, identity, -1))
    return named


def _names_shards(path: Path) -> bool:
    """Whether `path` names tar shards (`shards/train-{000..009}.tar`, `*.tar`, one `.tar`): a
    folder's data, as `--data` takes it, not a sample file."""
    from metaemb.core.paths import names_packed_files

    if path.exists():
        return path.suffix == ".tar"
    return names_packed_files(path)


def _expand_file_pattern(inputs: list[Path]) -> list[Path]:
    """One quoted pattern of sample files (`'photos/*.png'`, from a script or Python) → the
    files it names, as the shell would have given them; anything else unchanged."""
    from metaemb.core.paths import pattern_matches

    if len(inputs) != 1 or inputs[0].exists() or _names_shards(inputs[0]):
        return inputs
    matches = [Path(p) for p in pattern_matches(inputs[0])]
    files = [p for p in matches if p.is_file()]
    if matches and not files:
        raise DataError(
            f"'{inputs[0]}' is a pattern of {len(matches)} files or folders ('{matches[0]}', …): "
            "embed takes one data folder, or sample files."
        )
    return files or inputs


def embed_inputs(
    checkpoint: str | Path,
    inputs: Sequence[str | Path] | str | Path,
    device: str = "auto",
    workers: int = 2,
    root: str | Path | None = None,
    skip_bad: bool = False,
) -> Collection:
    """Embed one folder (every sample; a tar-shard pattern is one) or one or more loose files
    with a trained model; with `skip_bad`, samples that cannot be read are left out of the
    collection, with a warning."""
    from metaemb.core.deploy.loading import load_run

    if isinstance(inputs, (str, Path)):  # one path: a str is not iterated letter by letter
        inputs = [inputs]
    inputs = [Path(p) for p in inputs]  # a notebook passes strings
    from metaemb.core.paths import refuse_looping_link

    for p in inputs:
        refuse_looping_link(p, "data path")
    root = None if root is None else Path(root)
    if not inputs:
        raise DataError("embed needs a data folder or at least one sample file.")
    inputs = _expand_file_pattern(inputs)
    flag = None  # the root was given (a folder, or --root)
    if len(inputs) == 1 and (inputs[0].is_dir() or _names_shards(inputs[0])):
        if root is not None:
            raise DataError("--root is for sample files; a folder is its own root.")
        loaded = load_run(Path(checkpoint), device, data=inputs[0])
        folder = loaded.parts.folder
        paths = [s.path for s in folder.samples]
    else:
        if len(inputs) > 1 and all(p.suffix == ".tar" for p in inputs):  # `shards/*.tar`
            raise DataError(
                f"the {len(inputs)} files given are tar shards ('{inputs[0]}', …), which the "
                "shell expanded: give them as one quoted pattern ('shards/*.tar' or "
                "'shards/train-{000..009}.tar'), or the folder holding them."
            )
        dirs = [p for p in inputs if p.is_dir()]
        if dirs:
            raise DataError(
                f"'{dirs[0]}' is a folder: embed either one folder or any number of files."
            )
        loaded = load_for_files(Path(checkpoint), inputs, device, root)
        folder = loaded.parts.folder
        paths = [s.path for s in folder.samples]  # relative to the root, as a folder's are
        flag = "--root DIR" if root is None else None
    identities = [s.identity for s in folder.samples]
    if skip_bad:
        with naming_inferred_root(folder.root, flag, getattr(loaded, "root_note", "")):
            emb, kept, bad = loaded.embed_skipping(folder, None, workers)
        if bad:
            import warnings

            from metaemb.core.errors import first_few

            warnings.warn(
                f"skipped {len(bad)} sample(s) that could not be read "
                f"({first_few(b.path for b in bad)}); the collection holds the other "
                f"{len(kept)}. First: {bad[0].error}",
                stacklevel=2,
            )
        order = kept.tolist()
        paths, identities = [paths[i] for i in order], [identities[i] for i in order]
    else:
        with naming_inferred_root(folder.root, flag, getattr(loaded, "root_note", "")):
            emb = loaded.embed(folder, None, workers)
    meta = _model_meta(loaded, Path(checkpoint))
    meta["root"] = str(Path(folder.root).resolve())  # `root / path` names every file
    from metaemb.core.data.pipeline import features_set_used, frontend_set_used, test_options_record

    if frontend_set_used():
        meta["frontend_set"] = json.dumps(frontend_set_used(), sort_keys=True)
    features_set = features_set_used(loaded.config)  # typed; the run's own values left out
    if features_set:
        meta["features_set"] = json.dumps(features_set, sort_keys=True)
    views = test_options_record(loaded.model).get("test_options")
    if views:
        meta["test_options"] = json.dumps(views, sort_keys=True)
    return Collection(paths, identities, emb, meta)
