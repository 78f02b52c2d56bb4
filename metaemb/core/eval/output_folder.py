"""Where an evaluation's results go by default: `eval-<name>` inside the run, named by what
changes the numbers, so that one evaluation never replaces another's results."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
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


#: beside an evaluation's results while it writes them: what they will be, and by whom
CLAIM = ".evaluating.json"


def _held(out: Path) -> dict[str, Any] | None:
    """What `out` holds: the claim of a live evaluation writing it, else its results."""
    from metaemb.core.files import process_alive

    for name in (CLAIM, "metrics.json"):
        try:
            held = json.loads((out / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(held, dict):
            continue
        if name == CLAIM and not process_alive(int(held.get("pid", -1))):
            continue  # left by a killed evaluation
        return held
    return None


def beside_others(
    out: Path, data_root: str, source: str, calibration: str | None = None, listed: str = ""
) -> Path:
    """`out`, unless it holds (or an evaluation running now is writing) the results of another
    data folder or list (two VoxCeleb folders are both `wav/`, Kaldi lists all `trials`, the
    same name typed in two folders): then a sibling named by them, so one evaluation never
    replaces another's results. `listed` is the resolved trial-list file (the source says only
    how it was typed)."""
    held = _held(out)
    if held is None:
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


@contextlib.contextmanager
def claimed(
    default: Path, data_root: str, source: str, calibration: str | None = None, listed: str = ""
) -> Iterator[Path]:
    """The default output folder (`beside_others`), claimed for this evaluation while it runs:
    two evaluations started together (one job per trial list) chose the same folder, and one's
    results replaced the other's. The choice is made under a lock on the run folder; the same
    evaluation running twice at once is refused. A folder left empty by a failure is removed."""
    from metaemb.core.files import atomic_write_text
    from metaemb.core.locks import FileLock, RunInProgress

    lock = FileLock(default.parent / "eval-folders", "the evaluation folders of")
    for _ in range(200):  # the choice takes milliseconds: wait for the other one's, up to 10 s
        try:
            lock.acquire()
            break
        except RunInProgress:
            time.sleep(0.05)
    else:
        lock.acquire()
    try:
        out = beside_others(default, data_root, source, calibration, listed)
        held = _held(out)
        if held is not None and "pid" in held:
            raise RunInProgress(
                f"evaluation output folder '{out}' is being written by pid {held['pid']}, "
                "evaluating the same data and list; wait for it to finish, or give --out."
            )
        record = {"data_root": data_root, "trials_source": source, "trials_file": listed,
                  "calibration_source": calibration}  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / CLAIM, json.dumps({"pid": os.getpid(), **record}))
    finally:
        lock.release()
    try:
        yield out
    finally:
        (out / CLAIM).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out.rmdir()  # only when empty: a failed evaluation leaves no folder behind
