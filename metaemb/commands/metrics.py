"""`metaemb metrics SCORES`: metaemb's verification metrics of a score file written by another
toolkit (Kaldi, WeSpeaker, SpeechBrain) or by an earlier `metaemb evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metaemb.commands.console import make_console

console = make_console()


def metrics(
    scores: Annotated[
        Path,
        typer.Argument(help="score file: 'enroll test score' lines, with or without a label"),
    ],
    trials: Annotated[
        Path | None,
        typer.Option(help="labelled trial list the scores were computed on (any format)"),
    ] = None,
    p_target: Annotated[
        list[float] | None,
        typer.Option(help="target prior of minDCF/actDCF, repeatable \\[default: 0.01, 0.05]"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write the metrics to this JSON file")] = None,
) -> None:
    """EER (ROC convex hull), minDCF, actDCF, Cllr and minCllr of a score file, as `evaluate`
    computes them: put another toolkit's scores through the same definitions."""
    from metaemb.core.errors import ConfigError
    from metaemb.core.eval.evaluate import TAR_FARS
    from metaemb.core.eval.metrics import tar_at_far, verification_report
    from metaemb.core.eval.report import metric_rows, tar_at_far_rows
    from metaemb.core.eval.scores_file import labelled_scores

    priors = tuple(dict.fromkeys(p_target or (0.01, 0.05)))
    if not all(0.0 < p < 1.0 for p in priors):
        raise ConfigError(f"--p-target is a target prior in (0, 1); got {list(priors)}.")
    if out is not None:
        _check_out(out, [scores, *([trials] if trials else [])])
    tar, non = labelled_scores(scores, trials)
    report = verification_report(tar, non, priors)
    report.update({f"tar_at_far_{far:g}": tar_at_far(tar, non, far) for far in TAR_FARS})
    console.print(
        f"{scores}: {report['n_target']} target and {report['n_nontarget']} non-target trials",
        markup=False,
    )
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for _, label, value in metric_rows({**report, "p_targets": list(priors)}):
        table.add_row(label, value)
    for label, value in tar_at_far_rows(report):  # those its non-targets can reach
        table.add_row(label, value)
    console.print(table)
    if out is not None:
        from metaemb.core.files import atomic_write_text

        record = {"scores": str(scores.resolve()), **({"trials": str(trials.resolve())} if trials
                  else {}), "p_targets": list(priors), **report}  # fmt: skip
        atomic_write_text(out, json.dumps(record, indent=2))
        console.print(f"wrote {out}", markup=False)


def _check_out(out: Path, inputs: list[Path]) -> None:
    """--out neither one of the files read (the same name typed twice) nor an existing file
    that is not an earlier `metaemb metrics` result (a trial list, an export's sidecar)."""
    from metaemb.core.errors import OutputError
    from metaemb.core.paths import ensure_writable, refuse_replacing_another_file

    ensure_writable(out, "metrics file")
    for given in inputs:
        if out.exists() and given.exists() and out.resolve() == given.resolve():
            raise OutputError(f"--out '{out}' is the file being read; choose another name.")

    def ours(path: Path) -> bool:
        held = json.loads(path.read_text(encoding="utf-8"))
        return isinstance(held, dict) and "scores" in held and "p_targets" in held

    refuse_replacing_another_file(out, "metrics file", ours, "metaemb metrics")
