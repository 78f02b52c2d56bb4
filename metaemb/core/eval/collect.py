"""`metaemb embed`: embed a whole <identity>/<sample> folder, or loose sample files, into a
collection file (paths, identities, embeddings and which model made them).

Loose files are read by the run's own sample-folder type with an explicit sample list (nothing
around them is scanned); each file's identity is the name of the folder it sits in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from metaemb.core.errors import DataError
from metaemb.core.eval.retrieval import Collection


def _model_meta(loaded: Any, checkpoint: Path) -> dict[str, Any]:
    from metaemb.core.deploy.stamp import model_digest

    cfg = loaded.config
    return {
        "checkpoint": str(Path(checkpoint).resolve()),
        "model_digest": model_digest(loaded.state["model"]),
        "scorer": cfg.eval.scorer,
        "modality": cfg.modality,
    }


def load_for_files(checkpoint: Path, files: list[Path], device: str = "auto") -> Any:
    """A loaded run whose data pipeline holds exactly `files` (root: their common grandparent)."""
    from metaemb.core.data.pipeline import Components, build_frontend
    from metaemb.core.deploy.loading import load_run
    from metaemb.core.plugin.components import build
    from metaemb.core.plugin.interfaces import Sample
    from metaemb.core.plugin.manager import registry

    for f in files:
        if not f.is_file():
            raise DataError(f"sample file '{f}' does not exist.")
    resolved = [f.resolve() for f in files]
    seen: dict[Path, Path] = {}
    for f, real in zip(files, resolved, strict=True):
        if real in seen:  # it would be one more sample of its identity (retrieval counts it)
            raise DataError(f"sample file '{f}' is given twice (also as '{seen[real]}').")
        seen[real] = f
    root = Path(os.path.commonpath([str(f.parent.parent) for f in resolved]))
    loaded = load_run(Path(checkpoint), device)
    cfg = loaded.config
    cfg.data.root, cfg.data.root_absolute = str(root), ""
    factory = registry("sample_folders").get(cfg.data.folder)
    exts = {e.lower() for e in getattr(factory, "extensions", ())}
    bad = [str(f) for f in files if exts and f.suffix.lower() not in exts]
    if bad:
        raise DataError(
            f"'{bad[0]}' is not a {getattr(factory, 'what', 'sample')} file the run's sample folder "
            f"'{cfg.data.folder}' reads ({', '.join(sorted(exts))})."
        )
    samples = [Sample(f.relative_to(root).as_posix(), f.parent.name, -1) for f in resolved]
    try:
        folder = build(
            "sample_folders", cfg.data.folder, cfg.options("folder"), root=root, samples=samples
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


def embed_inputs(
    checkpoint: Path, inputs: list[Path], device: str = "auto", workers: int = 2
) -> Collection:
    """Embed one folder (every sample) or one or more loose files with a trained model."""
    from metaemb.core.deploy.loading import load_run

    if not inputs:
        raise DataError("embed needs a data folder or at least one sample file.")
    if len(inputs) == 1 and inputs[0].is_dir():
        loaded = load_run(Path(checkpoint), device, data=inputs[0])
        folder = loaded.parts.folder
        paths = [s.path for s in folder.samples]
    else:
        dirs = [p for p in inputs if p.is_dir()]
        if dirs:
            raise DataError(
                f"'{dirs[0]}' is a folder: embed either one folder or any number of files."
            )
        loaded = load_for_files(Path(checkpoint), inputs, device)
        folder = loaded.parts.folder
        paths = [str(p) for p in inputs]
    emb = loaded.embed(folder, None, workers)
    meta = _model_meta(loaded, Path(checkpoint))
    meta["root"] = str(folder.root)
    return Collection(paths, [s.identity for s in folder.samples], emb, meta)
