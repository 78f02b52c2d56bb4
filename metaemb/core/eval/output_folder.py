"""Where an evaluation's results go by default: `eval-<name>` inside the run, named by what
changes the numbers, so that one evaluation never replaces another's results."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
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
    features_set: dict[str, Any] | None = None,
) -> str:
    """The trials' name, then what was chosen beside the run's own reading of them: another
    scorer, another preprocessing (`--frontend-set`), other test views (`--features-set`),
    then `variant` (see `variant`)."""
    name = trials
    if scorer and scorer != run_scorer:  # beside the run's own scorer
        name = f"{name}-{scorer}"
    for what, given in (("frontend", frontend_set), ("features", features_set)):
        if given:  # another reading of the same files: beside, not over, the plain results
            tag = hashlib.sha1(json.dumps(given, sort_keys=True).encode()).hexdigest()
            name = f"{name}-{what}-{tag[:6]}"
    return name + variant


def variant(
    adapt: bool,
    folder: str | None,
    folder_options: dict[str, Any],
    p_targets: tuple[float, ...],
    calibrate: Path | None,
    folds: int | None,
    protocol_options: dict[str, Any] | None = None,
    checkpoint: str = "",
    scorer_set: dict[str, Any] | None = None,
) -> str:
    """The options that change the numbers of the same trials, as a name suffix, so comparing
    them keeps each result (`--no-adapt` beside the adapted, AgeDB-5 beside AgeDB-30, last.pt
    beside best.pt)."""
    parts = [f"-{checkpoint}"] if checkpoint else []
    if not adapt:
        parts.append("-noadapt")
    if scorer_set:  # the back-end tuned (AS-norm's top_n, PLDA's lda_dim)
        tag = json.dumps(scorer_set, sort_keys=True, default=str)
        parts.append("-scorer-" + hashlib.sha1(tag.encode()).hexdigest()[:6])
    if protocol_options:  # another list of the same protocol (min_age_gap, a pair seed)
        tag = json.dumps(protocol_options, sort_keys=True, default=str)
        parts.append("-protocol-" + hashlib.sha1(tag.encode()).hexdigest()[:6])
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


def checkpoint_tag(given: str | Path) -> str:
    """ "" for a run folder or its `best.pt` (what `evaluate RUN` loads), else the checkpoint
    file's name (`last`, `snapshot-epoch003`), so its results go beside best.pt's, not over
    them."""
    path = Path(given)
    return path.stem if path.is_file() and path.name != "best.pt" else ""


def evaluated_model(loaded: Any) -> dict[str, Any]:
    """What metrics.json records of the model evaluated: its checkpoint file, absolute (a
    pretrained reference model, which has none, by its name), epoch and weights digest."""
    path = Path(loaded.path)
    return {
        "checkpoint": str(path.resolve()) if path.is_file() else str(path),
        "epoch": loaded.state.get("epoch"),
        "model_digest": loaded.digest,
    }


def default_out(run_dir: Path, name: str, data: Path | None) -> Path:
    """`RUN_DIR/eval-<name>`, or `eval-<data folder>-<name>` with `--data`: evaluating another
    folder next never replaces the first one's results (`--data A`, then `--data B`)."""
    if data is None:
        return run_dir / _fitting(f"eval-{name}")
    tag = Path(data).resolve().name
    return run_dir / _fitting(f"eval-{name}" if tag in ("", name) else f"eval-{tag}-{name}")


#: bytes of a default folder name, below the 255 of file systems with room for `-<hash>`
MAX_NAME = 200


def _fitting(name: str) -> str:
    """`name`, or, past MAX_NAME bytes (two long list names and their options), its start and
    a short hash of the whole, so the default folder is always one the file system takes."""
    if len(name.encode()) <= MAX_NAME:
        return name
    tag = hashlib.sha1(name.encode()).hexdigest()[:8]
    head = name.encode()[: MAX_NAME - 9].decode(errors="ignore")
    return f"{head}-{tag}"


#: beside an evaluation's results while it writes them: what they will be; the lock beside it
#: (flock, freed by the kernel however the evaluation ends) says whether it still runs
#: what an evaluation may write beside its metrics.json (verification writes them, class and
#: match measures none)
EVALUATION_FILES = ("scores.txt", "scores_calibrated.txt", "det.png", "roc.png", "scores.png",
                    "scores_calibrated.png")  # fmt: skip

CLAIM = ".evaluating.json"
CLAIM_LOCK = ".evaluating.lock"


def _held(out: Path) -> dict[str, Any] | None:
    """What `out` holds: the claim of an evaluation writing it now, else its results."""
    from metaemb.core.locks import holder

    try:
        claim = json.loads((out / CLAIM).read_text())
    except (OSError, ValueError):
        claim = None
    if isinstance(claim, dict) and holder(out / CLAIM_LOCK) is not None:
        return claim
    try:
        held = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return held if isinstance(held, dict) else None


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
    # the list by its resolved file when both name one (typed from another working folder,
    # `data/set/list.txt` and `list.txt` are one list), else by how its source reads
    by_file = bool(listed) and "trials_file" in held
    same = (
        held.get("data_root", data_root) == data_root  # older results: by source only
        and held.get("trials_file", listed) == listed
        and held.get("calibration_source") == calibration
        and (by_file or held.get("trials_source") == source)
    )
    if same:
        return out
    tag = hashlib.sha1(f"{data_root}\n{source}\n{listed}\n{calibration}".encode()).hexdigest()
    return out.with_name(f"{out.name}-{tag[:6]}")


@contextlib.contextmanager
def writing(out: Path) -> Iterator[None]:
    """An explicit `--out` folder held while an evaluation writes it (the lock inside it, so
    only the folder itself need be writable): a second evaluation into it is refused instead
    of mixing the two sets of files."""
    from metaemb.core.locks import FileLock
    from metaemb.core.paths import ensure_writable_dir

    ensure_writable_dir(out, "evaluation output folder")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(out / "evaluating", "evaluation output folder", shown=out):
            yield
    except BaseException:
        if made:  # a refused or failed evaluation leaves no empty folder behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


@contextlib.contextmanager
def claimed(
    default: Path, data_root: str, source: str, calibration: str | None = None, listed: str = ""
) -> Iterator[Path]:
    """The default output folder (`beside_others`), claimed for this evaluation while it runs:
    two evaluations started together (one job per trial list) chose the same folder, and one's
    results replaced the other's. The choice is made under a lock on the run folder; the same
    evaluation running twice at once is refused. A folder left empty by a failure is removed."""
    from metaemb.core.errors import OutputError
    from metaemb.core.files import atomic_write_text
    from metaemb.core.locks import FileLock, RunInProgress, holder

    lock = FileLock(default.parent / "eval-folders", "evaluation folders of", shown=default.parent)
    try:
        for _ in range(200):  # the choice takes milliseconds: wait for the other one's, 10 s
            try:
                lock.acquire()
                break
            except RunInProgress:
                time.sleep(0.05)
        else:
            lock.acquire()
    except OutputError as exc:  # a read-only run folder (an archive, another user's runs)
        raise OutputError(
            f"{exc} Results go into the run folder by default: give --out DIR to write them "
            "elsewhere."
        ) from None
    try:
        out = beside_others(default, data_root, source, calibration, listed)
        out.mkdir(parents=True, exist_ok=True)
        mine = FileLock(out / "evaluating", "evaluation output folder")
        try:
            mine.acquire()
        except RunInProgress:
            what = (f"evaluating the same data and list (see {out / CLAIM})" if
                    (out / CLAIM).is_file() else "an evaluate --out naming this folder")  # fmt: skip
            raise RunInProgress(
                f"evaluation output folder '{out}' is being written by pid "
                f"{holder(out / CLAIM_LOCK)}, {what}; wait for it to finish, or give --out."
            ) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "data_root": data_root,
                  "trials_source": source, "trials_file": listed,
                  "calibration_source": calibration}  # fmt: skip
        atomic_write_text(out / CLAIM, json.dumps(record))
    finally:
        lock.release()
    try:
        yield out
    finally:
        (out / CLAIM).unlink(missing_ok=True)
        mine.release()
        with contextlib.suppress(OSError):
            out.rmdir()  # only when empty: a failed evaluation leaves no folder behind


def drop_earlier_set(out: Path) -> list[str]:
    """Inside `written_together`, before the new files: an earlier evaluation's scores and
    plots in `out` go with the new set, so a class measure's metrics.json never stands beside
    another evaluation's scores.txt and DET (a file written again replaces its removal). Only
    what metaemb wrote: a PNG it did not draw is left, and nothing goes without a metrics.json.
    Returns the names removed (those the new set writes again are replaced, not lost)."""
    from metaemb.core.eval.scores_file import is_scores_file
    from metaemb.core.files import remove_with_set
    from metaemb.core.paths import is_our_plot

    if not (out / "metrics.json").is_file():
        return []
    dropped = []
    for name in EVALUATION_FILES:
        path = out / name
        ours = is_our_plot if path.suffix == ".png" else is_scores_file
        if path.is_file() and ours(path):  # another toolkit's scores.txt stays
            remove_with_set(path)
            dropped.append(name)
    return dropped
