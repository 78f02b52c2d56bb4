"""Evaluation measures besides verification (`metaemb evaluate --measure …`), and the trials of a
folder the run never saw.

- match: triplet match accuracy over a triplet list (`trials make --triplets N`).
- class: closed-set classification accuracy against enrolled identities: per identity the first
  `enroll` samples (seeded draw) are enrolled and pooled into one model, every other sample is
  classified to its best-scoring model; rank-1 and rank-5 (CMC) accuracy are reported.
- `unseen_folder_trials`: `evaluate RUN --data OTHER` without a trial list scores seeded trials
  over every identity of OTHER (it is not split like training data), and says so.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import Tensor

from metaemb.core.errors import DataError, first_few
from metaemb.core.eval import identification as ident
from metaemb.core.eval.metrics import triplet_match_accuracy
from metaemb.core.eval.triplets import looks_like_pair_list, read_triplets
from metaemb.core.runs import trained_root
from metaemb.core.scoring.choice import choose_scorer

MEASURES = ("verification", "match", "class")


def is_other_folder(loaded: Any, data: Path | None) -> bool:
    """True when `data` is given and is not the folder the run was trained on, nor a copy or a
    move of it (the same samples and identities: its validation split is the run's)."""
    if data is None:
        return False
    root = trained_root(loaded.state.get("config") or {})
    if root and Path(root).resolve() == Path(data).resolve():
        return False
    from metaemb.core.train.checkpointer import data_change

    same = loaded.state.get("data_fingerprint") is not None and not data_change(
        loaded.state, loaded.parts.folder
    )
    return not same


def unseen_folder_trials(
    loaded: Any, console: Console, why: str = "which is not the run's training folder"
) -> tuple[list, str]:
    """Seeded trials over all identities of the (other) data folder → (trials, source)."""
    from metaemb.core.eval.trial_generation import make_trials

    cfg = loaded.config
    folder = loaded.parts.folder
    from metaemb.core.train.validation import split_seed

    trials = make_trials(folder, n_target=cfg.eval.max_targets, n_nontarget=cfg.eval.nontargets,
                         seed=split_seed(cfg))  # fmt: skip
    source = (
        f"seeded trials over all {folder.num_identities} identities of '{folder.root}' "
        "(no trial list given)"
    )
    console.print(
        f"no trial list given: scoring {len(trials)} seeded trials over all "
        f"{folder.num_identities} identities of '{escape(str(folder.root))}', {why}, so it is "
        "not split. Pass --trials FILE to choose.",
    )
    return trials, source


def _folder_for(loaded: Any, data: Path | None) -> Any:
    """The evaluation folder: --data as it is, or the run's held-out validation identities."""
    return loaded.parts.folder if data is not None else held_out_folder(loaded)


def data_changed(loaded: Any) -> bool:
    """Whether the run's data folder holds other samples than when the run trained on it."""
    from metaemb.core.train.checkpointer import data_change

    return bool(data_change(loaded.state, loaded.parts.folder))


def held_out_folder(loaded: Any) -> Any:
    """The run's held-out validation identities, as its split made them; refused when the data
    folder changed since training, where a new split would mix identities the model trained on
    into it (every measure of the run's own folder goes through here)."""
    from metaemb.core.train import validation
    from metaemb.core.train.checkpointer import data_change

    folder = loaded.parts.folder
    change = data_change(loaded.state, folder)
    if change:
        raise DataError(
            f"the data folder '{folder.root}' {change}, so its validation split can no longer "
            "be rebuilt: restore the data, or evaluate on a trial list (--trials) or another "
            "folder (--data)."
        )
    _, val = validation.split(folder, loaded.config)
    return val


def training_folder(loaded: Any, parts: Any) -> Any:
    """The samples the run trained on within `parts.folder` (the run's data folder read
    again): its checkpoint's training identities, which stay right when the folder grew since;
    a checkpoint without them gets the split rebuilt, refused when the folder changed."""
    names = loaded.state.get("training_identities")
    if names:
        trained = set(names)
        found = [n for n in parts.folder.identities if n in trained]
        if not found:
            raise DataError(
                f"none of the run's {len(trained)} training identities is in its data folder "
                f"'{parts.folder.root}' now (renamed or moved?), so a scorer cannot be fitted "
                "on them: restore the data, or use a scorer that needs no fitting (cosine, or "
                "the run's own)."
            )
        if len(found) < len(trained):
            warnings.warn(
                f"{len(trained) - len(found)} of the run's {len(trained)} training identities "
                f"are no longer in '{parts.folder.root}' ({first_few(sorted(trained - set(found)), 3)}); "
                f"the scorer is fitted on the other {len(found)}.",
                stacklevel=2,
            )
        return parts.folder.subset(found)
    from metaemb.core.train import validation
    from metaemb.core.train.checkpointer import data_change

    change = data_change(loaded.state, parts.folder)
    if change:
        raise DataError(
            f"the data folder '{parts.folder.root}' {change}, and the run's checkpoint does not "
            "list its training identities: a scorer fitted on a new split would learn trial "
            "identities. Restore the data, or use a scorer that needs no fitting (cosine, or "
            "the run's own)."
        )
    train, _ = validation.split(parts.folder, parts.config)
    return train


def match_measure(
    loaded: Any,
    triplets_path: Path,
    scorer: Any,
    workers: int,
    adapt: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Triplet match accuracy of `triplets_path` (paths under the data root), and how many of
    its identities the run trained on (warned about on `console`)."""
    from metaemb.core.eval import leakage

    folder = loaded.parts.folder
    if looks_like_pair_list(triplets_path):
        raise DataError(
            f"'{triplets_path}' is a trial list (label, enrollment, test), not the "
            "'anchor positive negative' triplet list --measure match needs; score it with "
            "--measure verification, or write triplets with `metaemb trials make DATA "
            "--triplets N --out FILE`."
        )
    by_path = {s.path: s.identity for s in folder.samples}  # identities as the folder says
    triplets = read_triplets(triplets_path, loaded.parts.root, lambda p: by_path.get(p, p))
    where = {s.path: i for i, s in enumerate(folder.samples)}
    needed = sorted({p for t in triplets for p in (t.anchor, t.positive, t.negative)})
    missing = [p for p in needed if p not in where]
    if missing:
        raise DataError(
            f"{len(missing)} file(s) of '{triplets_path}' are not in '{folder.root}': "
            + first_few(missing)
        )
    emb = loaded.embed(folder, [where[p] for p in needed], workers)
    if adapt:
        scorer.adapt(emb)  # label-free: the files being scored (a no-op for most scorers)
    pos = {p: i for i, p in enumerate(needed)}

    def col(name: str) -> torch.Tensor:
        return torch.tensor([pos[getattr(t, name)] for t in triplets], dtype=torch.long)

    a, p, n = col("anchor"), col("positive"), col("negative")
    s_pos = scorer.score(emb[a], emb[p]).double().numpy()
    s_neg = scorer.score(emb[a], emb[n]).double().numpy()
    scored = leakage.identities_of(folder, needed)
    return {
        "measure": "match",
        "triplets": len(triplets),
        "match_accuracy": triplet_match_accuracy(s_pos, s_neg),
        "source": str(triplets_path),
        "training_identities_scored": leakage.count_and_warn(
            loaded.state, scored, console or Console(emoji=False), folder.subject_of
        ),
    }


def class_measure(
    loaded: Any,
    folder: Any,
    scorer: Any,
    workers: int,
    enroll: int = 1,
    seed: int = 0,
    adapt: bool = True,
    leave_out: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Closed-set classification accuracy: `enroll` samples per identity enrolled, rest probes
    (`leave_out`: sample paths that are not used, the files training skipped)."""
    if enroll < 1:
        raise DataError(f"--enroll-samples must be ≥ 1, got {enroll}.")
    rng = np.random.default_rng(seed)
    groups: list[list[int]] = []
    names: list[str] = []
    probes: list[int] = []
    probe_ids: list[int] = []
    too_few: list[str] = []
    for label, every in sorted(folder.by_identity().items()):
        idx = [i for i in every if folder.samples[i].path not in leave_out]
        if len(idx) <= enroll:  # nothing left to probe with: left out, and said
            too_few.append(folder.identities[label])
            continue
        chosen = set(rng.choice(len(idx), size=enroll, replace=False).tolist())
        groups.append([idx[i] for i in sorted(chosen)])
        names.append(folder.identities[label])
        rest = [idx[i] for i in range(len(idx)) if i not in chosen]
        probes += rest
        probe_ids += [len(groups) - 1] * len(rest)
    if len(groups) < 2:
        raise DataError(
            f"classification needs at least two identities with more than {enroll} samples in "
            f"'{folder.root}'; found {len(groups)}."
        )
    if too_few:
        import warnings

        warnings.warn(
            f"{len(too_few)} identities of '{folder.root}' have {enroll} sample(s) or fewer "
            f"({first_few(too_few, 3)}): with --enroll-samples {enroll} none is left to probe "
            f"with, so they are left out; the closed-set gallery holds the other {len(groups)}.",
            stacklevel=2,
        )
    used = sorted({i for g in groups for i in g} | set(probes))  # what is scored, no more
    row = {i: r for r, i in enumerate(used)}
    emb = loaded.embed(folder, used, workers)
    if adapt:
        scorer.adapt(emb)
    rows = [[row[i] for i in g] for g in groups]
    matrix = groups_matrix(scorer, emb, rows, emb[torch.tensor([row[i] for i in probes])])
    matrix = matrix.double().T
    cmc = ident.cmc(
        matrix.numpy(), probe_ids, list(range(len(groups))), max_rank=min(5, len(groups))
    )
    return {
        "measure": "class",
        "identities": len(groups),
        "probes": len(probes),
        "enroll_samples": enroll,
        "not_enrolled": len(too_few),  # too few samples to enroll and probe
        "class_accuracy": float(cmc[0]),
        "rank_5": float(cmc[-1]) if len(cmc) >= 5 else None,
        "source": f"'{folder.root}' ({len(groups)} identities)",
        "enrolled": {
            n: [folder.samples[i].path for i in g] for n, g in zip(names, groups, strict=True)
        },
    }


def run_measure(
    run: Path,
    measure: str,
    data: Path | None = None,
    trials: Path | None = None,
    scorer: str | None = None,
    enroll: int = 1,
    out: Path | None = None,
    device: str = "auto",
    workers: int = 2,
    console: Console | None = None,
    preloaded: Any = None,
    adapt: bool = True,
) -> dict[str, Any]:
    """`metaemb evaluate --measure match|class`: compute, print, and write metrics.json
    (`preloaded`: a model already loaded, e.g. a pretrained reference)."""
    from metaemb.core.deploy.loading import load_run
    from metaemb.core.eval.output_folder import drop_earlier_set
    from metaemb.core.files import atomic_write_text, written_together

    console = console or Console(emoji=False)
    if measure not in MEASURES[1:]:
        raise DataError(f"--measure must be one of {', '.join(MEASURES)}, got '{measure}'.")
    if measure == "match" and trials is None:
        raise DataError(
            "--measure match needs a triplet list: --trials FILE (write one with "
            "`metaemb trials make DATA --triplets N --out FILE`)."
        )
    from metaemb.core.data.pipeline import features_set_used, frontend_set_used, test_options_record
    from metaemb.core.eval.output_folder import (
        checkpoint_tag,
        claimed,
        default_out,
        evaluated_model,
        result_name,
        variant,
    )
    from metaemb.core.paths import ensure_writable_dir

    if out is not None:
        ensure_writable_dir(out, "evaluation output folder")
    run_dir = Path(run) if Path(run).is_dir() or preloaded is not None else Path(run).parent
    loaded = preloaded or load_run(run, device, data=data, with_data=True)
    # a triplet list's results are named after it: a second list never replaces the first's;
    # a scorer, --no-adapt or another enrollment size beside, not over, the defaults' results
    name = f"match-{Path(trials).stem}" if measure == "match" and trials is not None else measure
    suffix = variant(adapt, None, {}, (), None, None, None, checkpoint_tag(run))
    suffix += f"-enroll{enroll}" if measure == "class" and enroll != 1 else ""
    frontend_set, features_set = frontend_set_used(), features_set_used(loaded.config)
    name = result_name(name, scorer, loaded.config.eval.scorer, frontend_set, suffix,
                       features_set)  # fmt: skip
    data_root = str(Path(data).resolve()) if data is not None else ""
    listed = str(Path(trials).resolve()) if trials is not None else ""
    # nor another folder's or list of the same name (two corpora both called wav/)
    with contextlib.ExitStack() as claims:  # a default folder is claimed until written
        out = out or claims.enter_context(
            claimed(default_out(run_dir, name, data), data_root, listed)
        )
        ensure_writable_dir(out, "evaluation output folder")  # before any embedding
        _check_metrics_file(out / "metrics.json", data if data is not None else loaded.parts.root)
        sc = choose_scorer(loaded, scorer, "measure")
        if measure == "match":
            result = match_measure(loaded, trials, sc, workers, adapt, console)  # type: ignore[arg-type]
            key = "match_accuracy"
        else:
            from metaemb.core.eval import leakage

            folder = _folder_for(loaded, data)
            from metaemb.core.train.validation import split_seed

            leave_out = frozenset()
            skipped = run_dir / "skipped.txt"
            if data is None and preloaded is None and skipped.is_file():  # as training did
                from metaemb.core.runs import skipped_paths

                leave_out = frozenset(skipped_paths(skipped, {s.path for s in folder.samples}))
            result = class_measure(loaded, folder, sc, workers, enroll,
                                   split_seed(loaded.config), adapt, leave_out)  # fmt: skip
            scored = leakage.identities_of(folder)  # none, for the run's held-out identities
            result["training_identities_scored"] = leakage.count_and_warn(
                loaded.state, scored, console, folder.subject_of
            )
            key = "class_accuracy"
        result["scorer"] = scorer or loaded.config.eval.scorer
        result["scorer_options"] = loaded.recorded_scorer_options(scorer)  # as verification records
        result.update(data_root=data_root, trials_source=listed)  # what beside_others compares
        result.update(evaluated_model(loaded))
        if frontend_set:
            result["frontend_set"] = frontend_set
        if features_set:
            result["features_set"] = features_set
        result.update(test_options_record(loaded.model))
        with written_together():  # an earlier verification's scores and plots go with it
            dropped = drop_earlier_set(out)
            atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, sort_keys=True))
        if dropped:
            console.print(f"removed the earlier evaluation's {', '.join(dropped)} from {out}: "
                          "this measure writes metrics.json only", markup=False)  # fmt: skip
        table = Table(title=f"{measure} on {escape(result['source'])}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_row(key, f"{100 * result[key]:.2f}%")
        if result.get("rank_5") is not None:
            table.add_row("rank_5", f"{100 * result['rank_5']:.2f}%")
        for k in ("triplets", "identities", "probes"):
            if k in result:
                table.add_row(k, str(result[k]))
        console.print(table)
        console.print(f"wrote {out / 'metrics.json'}", markup=False, soft_wrap=True)
        return result


def groups_matrix(scorer: Any, emb: Any, groups: list[list[int]], probes: Any) -> Tensor:
    """[identities, probes] scores of enrollment groups: pooled by the scorer when it can
    pool (point scorers, GME), else the mean of its scores of each enrolled sample."""
    if hasattr(scorer, "score_groups_matrix"):
        return scorer.score_groups_matrix(emb, groups, probes)
    flat = torch.tensor([i for g in groups for i in g])
    scores = scorer.score_matrix(emb[flat], probes)
    rows = torch.split(scores, [len(g) for g in groups])
    return torch.stack([r.mean(0) for r in rows])


def _check_metrics_file(path: Path, root: Any) -> None:
    """The metrics.json a measure writes: writable, not inside the data folder it reads, and
    not replacing a file an evaluation did not write."""
    from metaemb.core.eval.scores_file import is_evaluation_metrics
    from metaemb.core.paths import ensure_writable, refuse_inside, refuse_replacing_another_file

    refuse_inside(path.parent, root, "evaluation output folder")
    ensure_writable(path, "evaluation output file")
    refuse_replacing_another_file(path, "evaluation output file", is_evaluation_metrics,
                                  "metaemb evaluate")  # fmt: skip
