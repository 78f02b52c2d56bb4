"""The runs under a root folder, for `metaemb runs`: modality, components, epochs done, best
validation metric and path, read from each run's config.toml and metrics.jsonl (no checkpoint
is opened, so listing thousands of runs is quick)."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from metaemb.core.errors import DataError
from metaemb.core.runs import epoch_records

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass
class RunInfo:
    path: str
    name: str
    modality: str
    components: str
    epochs_done: int
    epochs: int
    best_key: str
    best: float | None
    best_epoch: int | None
    status: str  # complete, partial, not started

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _select_key(cfg: dict[str, Any]) -> str:
    ev = cfg.get("eval", {})
    select = ev.get("select", "eer")
    if select == "min_dcf":
        return f"min_dcf_{float((ev.get('p_targets') or [0.01])[0]):g}"
    return str(select)


def _components(cfg: dict[str, Any]) -> str:
    model, train = cfg.get("model", {}), cfg.get("train", {})
    head = model.get("head", "linear")
    parts = [str(model.get("backbone", "?")), f"{head}({model.get('dim', '?')})"]
    return " → ".join(parts) + f", {train.get('objective', '?')}"


def read_run(run_dir: Path) -> RunInfo:
    """What config.toml and metrics.jsonl of one run directory say about it."""
    try:
        cfg = tomllib.loads((run_dir / "config.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"'{run_dir / 'config.toml'}' cannot be read: {exc}") from None
    if not cfg.get("modality"):  # emptied: a run's config always names its modality
        raise DataError(f"'{run_dir / 'config.toml'}' names no modality (emptied?)")
    records = epoch_records(run_dir / "metrics.jsonl")
    note = ""
    gaps = _missing_epochs(records)
    lost = not records and (run_dir / "last.pt").exists()  # emptied or deleted, trained epochs
    if gaps or lost:  # lines lost (a hand edit, a copy cut short): last.pt keeps every record
        history = _checkpoint_history(run_dir / "last.pt")
        what = "has no epoch record" if lost else f"lacks epoch {', '.join(map(str, gaps[:5]))}"
        note = f"; metrics.jsonl {what}"
        if history:
            records, note = history, note + ", read from last.pt"
    trainer = training_now(run_dir)
    if records and not (gaps or lost or trainer) and _ahead_of_checkpoint(run_dir):
        kept = _checkpoint_history(run_dir / "last.pt")
        last_kept = max((_int(r["epoch"]) for r in kept), default=0)
        if kept and last_kept < max(r["epoch"] for r in records):
            records = kept
            note = (
                f"; metrics.jsonl records epochs after last.pt was saved (the save failed or "
                f"was cut short): training resumes after epoch {last_kept}"
            )
    key = _select_key(cfg)
    scored = [r for r in records if _finite(r.get(key))]
    best = min(scored, key=lambda r: r[key]) if scored else None
    done = max((r["epoch"] for r in records), default=0)
    total = _int(cfg.get("train", {}).get("epochs", 0))
    status = "complete" if total and done >= total else ("partial" if done else "not started")
    saved = any((run_dir / n).exists() for n in ("best.pt", "last.pt"))
    damaged = _damaged_checkpoints(run_dir) if done or saved else []
    if trainer:  # checkpoints may not be written yet: not damaged, in progress
        status = f"training now (pid {trainer})"
    elif damaged:
        status = f"damaged ({', '.join(damaged)} unreadable)"
    elif status == "partial" and done >= 2 and not (run_dir / "last.pt").exists():
        status = "damaged (last.pt missing: train refuses to resume it)"  # as train decides
    status += note + _edited_note(run_dir, cfg)
    return RunInfo(
        path=str(run_dir),
        name=str(cfg.get("name", run_dir.name)),
        modality=str(cfg.get("modality", "?")),
        components=_components(cfg),
        epochs_done=done,
        epochs=total,
        best_key=key,
        best=float(best[key]) if best else None,
        best_epoch=int(best["epoch"]) if best else None,
        status=status,
    )


def _edited_note(run_dir: Path, cfg: dict[str, Any]) -> str:
    """A run folder is named after its configuration's hash (`run-3909eb7a`): a config.toml
    that no longer hashes to it was edited by hand, and what it says (epochs, components) is
    not what the checkpoint trained with."""
    from metaemb.core.config import from_dict

    suffix = run_dir.name.rsplit("-", 1)[-1]
    if len(suffix) != 8 or not all(c in "0123456789abcdef" for c in suffix):
        return ""  # not a metaemb-named folder (a copy renamed by hand)
    try:
        digest = from_dict(cfg).hash()
    except Exception:  # a config this metaemb cannot resolve (a plugin missing): say nothing
        return ""
    if digest == suffix:
        return ""
    return (
        "; config.toml edited, a plugin's defaults changed, or an earlier metaemb hashed the "
        "configuration differently (the checkpoint's configuration counts)"
    )


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _missing_epochs(records: list[dict[str, Any]]) -> list[int]:
    """Epochs below the last recorded one that have no record."""
    have = {r["epoch"] for r in records}
    return [e for e in range(1, max(have, default=0)) if e not in have]


def _ahead_of_checkpoint(run_dir: Path) -> bool:
    """metrics.jsonl written after last.pt. An epoch appends its line before saving last.pt, so
    this happens only when that save failed or was killed (or the files were copied without
    their times): only then is last.pt opened to see which epochs it holds."""
    try:
        return (run_dir / "metrics.jsonl").stat().st_mtime_ns > (
            run_dir / "last.pt"
        ).stat().st_mtime_ns
    except OSError:
        return False


def _checkpoint_history(last: Path) -> list[dict[str, Any]]:
    """The per-epoch records last.pt keeps (only read when metrics.jsonl has gaps: loading a
    checkpoint is slow), or [] when it cannot be read."""
    from metaemb.core.checkpoints import load_checkpoint
    from metaemb.core.errors import MetaembError

    try:
        history = load_checkpoint(last).get("history") or []
    except (MetaembError, OSError, RuntimeError, ValueError):
        return []
    return [r for r in history if isinstance(r, dict) and _int(r.get("epoch")) > 0]


def training_now(run_dir: Path) -> int | None:
    """The pid of a process holding the run's lock, or None."""
    from metaemb.core.locks import LOCK_NAME, holder

    return holder(run_dir / LOCK_NAME)


def _damaged_checkpoints(run_dir: Path) -> list[str]:
    """The run's checkpoints that are missing or not whole (a torch checkpoint is a zip archive
    whose directory is at its end, so a truncated or overwritten file fails this cheap check)."""
    import zipfile

    present = [run_dir / n for n in ("best.pt", "last.pt") if (run_dir / n).exists()]
    if not present:
        return ["best.pt and last.pt"]
    return [p.name for p in present if not zipfile.is_zipfile(p)]


def find_runs(root: Path, max_depth: int = 4) -> list[RunInfo]:
    """Every run directory (a folder holding config.toml, or a checkpoint) under `root`,
    sorted by path."""
    root = Path(root)
    if root.is_file():
        raise DataError(f"'{root}' is a file; `metaemb runs` takes the folder holding runs.")
    if not root.is_dir():
        raise DataError(
            f"runs folder '{root}' does not exist; train something first (metaemb train)."
        )
    found: list[Path] = []
    seen: set[str] = set()  # real paths: a `latest` link or a link to `..` lists nothing twice
    links: list[tuple[Path, int]] = []  # walked after every real folder: a run is listed by
    # its real path even when a link to it (runs/best/face) sorts before it

    def walk(d: Path, depth: int) -> None:
        real = os.path.realpath(d)
        if real in seen:
            return
        seen.add(real)
        if any((d / n).is_file() for n in ("config.toml", "last.pt", "best.pt")):
            found.append(d)  # a run whose config.toml was lost is listed as damaged
            return
        if depth >= max_depth:
            return
        try:
            children = [p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            return
        for child in sorted(children, key=lambda p: p.name):
            if child.is_symlink():
                links.append((child, depth + 1))
            else:
                walk(child, depth + 1)

    walk(root, 0)
    while links:
        walk(*links.pop(0))
    found.sort()
    return [_read_or_damaged(d) for d in found]


def _read_or_damaged(run_dir: Path) -> RunInfo:
    """One unreadable run is listed as damaged; it does not hide the others."""
    try:
        return read_run(run_dir)
    except DataError:
        what = "unreadable" if (run_dir / "config.toml").exists() else "missing"
        return RunInfo(str(run_dir), run_dir.name, "?", "?", 0, 0, "?", None, None,
                       f"damaged (config.toml {what})")  # fmt: skip
