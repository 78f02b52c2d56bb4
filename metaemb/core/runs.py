"""Run folders keyed by the resolved config, and what is kept in them between starts.

`runs/<modality>/<name>-<hash8>/` holds config.toml, last.pt, best.pt, metrics.jsonl and reports.
Two configurations never share a folder; re-running the same command resumes from last.pt.
Checkpoints are in `checkpoints.py`, atomic writes in `files.py`, the run lock in `locks.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from metaemb.core.config import Config
from metaemb.core.errors import ConfigError, MetaembError
from metaemb.core.files import atomic_write_text


def trained_root(config: dict[str, Any]) -> str:
    """The absolute data folder a saved config trained on ("" when it does not say: the
    built-in demo data, or a relative root saved by an old version, which would depend on the
    current directory)."""
    data = config.get("data", {})
    if data.get("root_absolute"):
        return str(data["root_absolute"])
    root = str(data.get("root", ""))
    return root if root and Path(root).is_absolute() else ""


def run_dir(runs_root: str | Path, config: Config) -> Path:
    return Path(runs_root) / config.modality / f"{config.name}-{config.hash()}"


class RelatedRuns(NamedTuple):
    """Run folders of the same name related to a new run (each None when there is none)."""

    #: this configuration under another hash (an earlier metaemb hashed it otherwise)
    earlier: Path | None
    #: (a run, its --data): this configuration on the same data folder given another way
    twin: tuple[Path, str] | None
    #: (a run, its train.epochs): this configuration but for train.epochs, which is part of
    #: the hash (the learning-rate schedule follows it), so more epochs start a new run
    other_epochs: tuple[Path, int] | None


def related_runs(runs_root: str | Path, config: Config) -> RelatedRuns:
    """Run folders of the same name that hold this configuration under another hash, in one
    scan (all None when this run's own folder exists):
    - an earlier run: its config.toml, read by this version, is this configuration, though an
      earlier metaemb hashed it otherwise (e.g. before composites took nested tables);
    - (a run, its --data) of this configuration on the same data folder given another way
      (`face` and `$PWD/face`, a symlink): runs are keyed by the path as typed;
    - (a run, its epochs) of this configuration with another train.epochs: raising the epochs
      of a finished run starts a new run, which a user expects to resume."""
    import os
    import warnings

    from metaemb.core.config import from_dict
    from metaemb.core.config.toml_io import load_toml

    here = run_dir(runs_root, config)
    if here.exists():
        return RelatedRuns(None, None, None)
    digest, mine = config.hash(), ""
    if config.data.root:
        mine = os.path.realpath(config.data.root_absolute or config.data.root)
    earlier: Path | None = None
    twin: tuple[Path, str] | None = None
    other_epochs: tuple[Path, int] | None = None
    for folder in sorted(here.parent.glob(f"{config.name}-*")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                other = from_dict(load_toml(folder / "config.toml"))
                same_form = len(folder.name) == len(here.name)
                if earlier is None and same_form and other.hash() == digest:
                    earlier = folder
                    continue
                epochs = other.train.epochs
                if other_epochs is None and epochs != config.train.epochs:
                    other.train.epochs = config.train.epochs
                    if other.hash() == digest:
                        other_epochs = (folder, epochs)
                        continue
                    other.train.epochs = epochs
                typed = other.data.root
                if twin is None and mine and typed and typed != config.data.root:
                    same_data = os.path.realpath(other.data.root_absolute or typed) == mine
                    other.data.root, other.data.root_absolute = config.data.root, ""
                    if same_data and other.hash() == digest:
                        twin = (folder, typed)
        except (MetaembError, OSError):
            continue
    return RelatedRuns(earlier, twin, other_epochs)


def trim_jsonl(path: Path, epoch: int, history: list[dict[str, Any]] | None = None) -> None:
    """Drop metrics.jsonl records newer than the checkpoint a run resumes from, and a line torn
    by a kill or a full disk in the middle of an append; other whole lines (a note added by
    hand) stay. An epoch the checkpoint's `history` holds but the file lost (a torn line) is
    written back from it, in its place."""
    if not path.exists() and not history:
        return
    lines = (
        [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        if path.exists()
        else []
    )

    def kept(line: str) -> bool:  # a record up to the checkpoint, or a line of the user's own
        e = record_epoch(line)
        return e <= epoch if e is not None else _is_json(line)

    keep = [ln for ln in lines if kept(ln)]
    have = {record_epoch(ln) for ln in keep}
    lost = sorted(
        (r for r in history or [] if isinstance(r.get("epoch"), int) and r["epoch"] <= epoch
         and r["epoch"] not in have),
        key=lambda r: r["epoch"],
    )  # fmt: skip
    out: list[str] = []
    for line in keep:
        e = record_epoch(line)
        while lost and e is not None and lost[0]["epoch"] < e:
            out.append(json.dumps(lost.pop(0)))
        out.append(line)
    out += [json.dumps(r) for r in lost]
    if out != lines:
        atomic_write_text(path, "".join(ln + "\n" for ln in out))


def _is_json(line: str) -> bool:
    """Whether `line` is whole JSON (a note added by hand), not a record torn by a kill."""
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def record_epoch(line: str) -> int | None:
    """The epoch of one metrics.jsonl line; None for a line that is not a whole record (a line
    torn by a kill, a hand edit: not a JSON object with a whole epoch number ≥ 1)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    epoch = record.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float, str)):
        return None
    try:
        whole = int(epoch)
    except (TypeError, ValueError, OverflowError):
        return None
    return whole if whole >= 1 and whole == float(epoch) else None


def epoch_records(metrics: Path) -> list[dict[str, Any]]:
    """The per-epoch records of metrics.jsonl (epoch as an int); lines that are not a whole
    record (see `record_epoch`) are passed over."""
    if not metrics.is_file():
        return []
    records = []
    for line in metrics.read_text(errors="replace").splitlines():
        epoch = record_epoch(line)
        if epoch is not None:
            records.append({**json.loads(line), "epoch": epoch})
    return records


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Delete the `.<name>.*.tmp` files an interrupted atomic write left behind (call it only while
    holding the folder's RunLock, so no write of another process is in flight)."""
    removed = []
    if folder.is_dir():
        for p in sorted(folder.glob(".*.tmp")):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def saved_config(run: Path) -> dict[str, Any] | None:
    """The config.toml of a run folder (or of a checkpoint's folder) as a dict; None when there
    is none that reads, for callers that only take a hint from it."""
    from metaemb.core.config.toml_io import load_toml

    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    try:
        return load_toml(folder / "config.toml")
    except ConfigError:
        return None


def remove_unstarted_run(folder: Path) -> None:
    """A run folder that holds no trained epoch (a mistake stopped it before training) is
    removed, when the caller created it: such folders piled up unseen, one per configuration
    tried.
    Under the run's lock, so a folder another process has started training meanwhile stays."""
    import contextlib
    import shutil

    from metaemb.core.errors import MetaembError
    from metaemb.core.locks import LOCK_NAME, RunLock

    trained = ("last.pt", "best.pt", "metrics.jsonl")
    if not folder.is_dir():
        return
    try:
        lock = RunLock(folder).acquire()
    except MetaembError:  # another process trains it now (or it cannot be written)
        return
    try:
        if any((folder / name).exists() for name in trained):
            return
        for child in folder.iterdir():
            if child.name != LOCK_NAME:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
    finally:
        lock.release()
    with contextlib.suppress(OSError):  # empty unless another process started in it since
        folder.rmdir()


def skipped_paths(listed: Path, paths: set[str]) -> set[str]:
    """The `paths` a run's skipped.txt lists (`path<TAB>reason` per line; a path may hold a tab
    itself, so every tab of a line is tried as the end of its path)."""
    text = listed.read_text(encoding="utf-8", errors="surrogateescape")  # as paths are
    found = set()
    for line in text.splitlines():
        cuts = [i for i, c in enumerate(line) if c == "\t"] + [len(line)]
        found.update(line[:i] for i in cuts if line[:i] in paths)
    return found
