"""Where an evaluation's results go by default: `eval-<name>` inside the run, named by what
changes the numbers, so that one evaluation never replaces another's results."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def result_name(
    trials: str,
    scorer: str | None,
    run_scorer: str,
    frontend_set: dict[str, Any] | None,
    variant: str,
) -> str:
    """The trials' name, then what was chosen beside the run's own reading of them: another
    scorer, another preprocessing (`--frontend-set`), then `variant` (see `variant`)."""
    name = trials
    if scorer and scorer != run_scorer:  # beside the run's own scorer
        name = f"{name}-{scorer}"
    if frontend_set:  # another preprocessing of the same files: beside, not over, the plain
        tag = hashlib.sha1(json.dumps(frontend_set, sort_keys=True).encode()).hexdigest()
        name = f"{name}-frontend-{tag[:6]}"
    return name + variant


def variant(
    adapt: bool,
    folder: str | None,
    folder_options: dict[str, Any],
    p_targets: tuple[float, ...],
    calibrate: Path | None,
    folds: int | None,
) -> str:
    """The options that change the numbers of the same trials, as a name suffix, so comparing
    them keeps each result (`--no-adapt` beside the adapted)."""
    parts = ["-noadapt"] if not adapt else []
    if folder or folder_options:  # another reading of the data folder
        tag = json.dumps([folder, folder_options], sort_keys=True, default=str)
        parts.append("-folder-" + hashlib.sha1(tag.encode()).hexdigest()[:6])
    if p_targets:
        parts.append("-p" + "-".join(f"{p:g}" for p in p_targets))
    if calibrate:
        parts.append(f"-cal-{Path(calibrate).stem}")
    if folds:
        parts.append(f"-folds{folds}")
    return "".join(parts)


def default_out(run_dir: Path, name: str, data: Path | None) -> Path:
    """`RUN_DIR/eval-<name>`, or `eval-<data folder>-<name>` with `--data`: evaluating another
    folder next never replaces the first one's results (`--data A`, then `--data B`)."""
    if data is None:
        return run_dir / f"eval-{name}"
    tag = Path(data).resolve().name
    return run_dir / (f"eval-{name}" if tag in ("", name) else f"eval-{tag}-{name}")


def beside_others(
    out: Path, data_root: str, source: str, calibration: str | None = None, listed: str = ""
) -> Path:
    """`out`, unless it holds the results of another data folder or list (two VoxCeleb
    folders are both `wav/`, Kaldi lists all `trials`, the same name typed in two folders):
    then a sibling named by them, so one evaluation never replaces another's results.
    `listed` is the resolved trial-list file (the source says only how it was typed)."""
    try:
        held = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return out
    if not isinstance(held, dict):
        return out
    same = (
        held.get("data_root", data_root) == data_root  # older results: by source only
        and held.get("trials_file", listed) == listed
        and held.get("calibration_source") == calibration
        and held.get("trials_source") == source
    )
    if same:
        return out
    tag = hashlib.sha1(f"{data_root}\n{source}\n{listed}\n{calibration}".encode()).hexdigest()
    return out.with_name(f"{out.name}-{tag[:6]}")
