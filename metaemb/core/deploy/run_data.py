"""Reading a trained run's data from another place or with another sample folder: a command's
--folder / --folder-set (checked against what the run's frontend takes), side-data paths moved
along with --data, and a container folder (RecordIO, tar shards) read as plain files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metaemb.core.config import Config


def read_with(
    cfg: Config, folder: str | None = None, folder_options: dict[str, Any] | None = None
) -> None:
    """Read the run's data with sample folder `folder` (at its defaults) and `folder_options`
    over its options; without either, the command's --folder / --folder-set (if any)."""
    if folder is None and not folder_options:
        from metaemb.core.data.pipeline import folder_set_used

        folder, folder_options = folder_set_used()
    trained: dict[str, Any] = {}  # the run's folder options, which another --folder leaves
    if folder is not None and folder != cfg.data.folder:
        from metaemb.core.plugin.manager import registry

        registry("sample_folders").get(folder)  # an unknown name, with suggestions
        trained = cfg.options("folder")
        cfg.data.folder = folder
        cfg.components["folder"] = {}
    if folder_options:
        from metaemb.core.plugin.components import validate_options

        given = validate_options("sample_folders", cfg.data.folder, folder_options, "folder")
        cfg.components["folder"] = {**cfg.options("folder"), **given}
    if folder is not None or folder_options:  # what it yields must be what the run takes
        _check_folder_fits(cfg, cfg.data.folder, {} if folder_options else trained)


def _check_folder_fits(cfg: Config, folder: str, left: dict[str, Any] | None = None) -> None:
    """A sample folder (or folder options) whose data the run's frontend cannot take (another
    kind of data, another sampling rate than the run trained on) is named before anything is
    read, not blamed on the first file or scored without a word."""
    from metaemb.core.config.chain import check_chain
    from metaemb.core.errors import ConfigError

    try:
        check_chain(cfg)
    except ConfigError as exc:
        clash = str(exc).split(": they do not fit")[0]
        raise ConfigError(
            f"reading the data with sample folder {folder!r}: {clash}, so the run cannot read "
            "it. Choose a sample folder and options that yield what the run was trained on "
            "(`metaemb list sample_folders` shows what each yields)."
            + (
                " --folder starts from that folder's defaults; the run's folder had "
                + " ".join(f"--folder-set {k}={v}" for k, v in sorted(left.items()))
                + "."
                if left
                else ""
            )
        ) from None


def rebase_data_paths(cfg: Config, data: Path) -> None:
    """An option of the data pipeline (folder, frontend, features) holding an absolute path
    inside the training data folder (a landmark file kept with the data, say) belongs to that
    folder: on another folder it would apply the training files' side data to other samples,
    matched by name. Such a path is moved to the same place in the new folder when it exists
    there, and kept otherwise."""
    trained = Path(cfg.data.root_absolute or cfg.data.root or ".").resolve()
    new = data.resolve()
    if new == trained:
        return
    for section in ("folder", "frontend", "features"):
        options = cfg.components.get(section) or {}
        for key, value in options.items():
            if not isinstance(value, str) or not value or not Path(value).is_absolute():
                continue
            try:
                relative = Path(value).resolve().relative_to(trained)
            except ValueError:
                continue  # outside the training folder: shared by every folder
            if (new / relative).exists():
                options[key] = str(new / relative)


def plain_folder(cfg: Config, where: str) -> bool:
    """Switch `cfg` from a container folder (RecordIO, tar shards) to the folder that reads the
    same samples as plain files (its `plain`), keeping the options both take, with a note;
    False when the run's folder has none."""
    import warnings

    from metaemb.core.plugin.manager import registry
    from metaemb.core.plugin.options import options_of

    name = cfg.data.folder
    plain = getattr(registry("sample_folders").get(name), "plain", "")
    if not plain or plain == name:
        return False
    shared = options_of(registry("sample_folders").get(plain))
    cfg.components["folder"] = {k: v for k, v in cfg.options("folder").items() if k in shared}
    cfg.data.folder = plain
    warnings.warn(
        f"{where}: not in the form of the run's sample folder '{name}', so read as plain files "
        f"with sample folder '{plain}'.",
        stacklevel=3,
    )
    return True
