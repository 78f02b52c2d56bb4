"""`metaemb metrics SCORES`: metaemb's verification metrics of a score file written by another
toolkit (Kaldi, WeSpeaker, SpeechBrain) or by an earlier `metaemb evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

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
    calibrate: Annotated[
        Path | None,
        typer.Option(
            help="labelled score file of a development set: fit llr = w·score + b on it and "
            "report the calibrated scores beside the raw ones"
        ),
    ] = None,
    calibrate_trials: Annotated[
        Path | None,
        typer.Option(help="labelled trial list of --calibrate's scores, if they have no labels"),
    ] = None,
    prior: Annotated[
        float, typer.Option(help="target prior the calibration is fitted at (0.5; NIST: 0.01)")
    ] = 0.5,
) -> None:
    """EER (ROC convex hull), minDCF, actDCF, Cllr and minCllr of a score file, as `evaluate`
    computes them: put another toolkit's scores through the same definitions; with
    --calibrate, a linear calibration fitted on a development set's scores, as BOSARIS and
    Kaldi's logistic-regression-train fit one, applied to these."""
    from metaemb.core.errors import ConfigError
    from metaemb.core.eval.evaluate import TAR_FARS
    from metaemb.core.eval.metrics import tar_at_far, verification_report
    from metaemb.core.eval.report import metric_rows, tar_at_far_rows
    from metaemb.core.eval.scores_file import labelled_scores

    priors = tuple(dict.fromkeys(p_target or (0.01, 0.05)))
    if not all(0.0 < p < 1.0 for p in priors):
        raise ConfigError(f"--p-target is a target prior in (0, 1); got {list(priors)}.")
    if calibrate is None and (calibrate_trials is not None or prior != 0.5):
        raise ConfigError("--calibrate-trials and --prior are for --calibrate's fit: give "
                          "--calibrate DEV_SCORES too.")  # fmt: skip
    if out is not None:
        read = [scores, *([trials] if trials else []), *([calibrate] if calibrate else [])]
        _check_out(out, read)
    tar, non = labelled_scores(scores, trials)
    report = verification_report(tar, non, priors)
    report.update({f"tar_at_far_{far:g}": tar_at_far(tar, non, far) for far in TAR_FARS})
    calibration = _calibrated(report, tar, non, calibrate, calibrate_trials, prior, priors)
    console.print(
        f"{scores}: {report['n_target']} target and {report['n_nontarget']} non-target trials",
        markup=False,
    )
    table = Table()
    table.add_column("metric")
    cal = report.get("calibrated")
    table.add_column("raw scores" if cal else "value", justify="right")
    if cal:
        table.add_column("calibrated", justify="right")
        calibrated = {k: v for k, _, v in metric_rows({**cal, "p_targets": list(priors)})}
    for key, label, value in metric_rows({**report, "p_targets": list(priors)}):
        table.add_row(label, value, *([calibrated[key]] if cal else []))
    for label, value in tar_at_far_rows(report):  # those its non-targets can reach
        table.add_row(label, value, *([""] if cal else []))
    console.print(table)
    if calibration:
        c = report["calibration"]
        console.print(
            f"calibration: llr = {c['weight']:.4g}·score {'-' if c['bias'] < 0 else '+'} "
            f"{abs(c['bias']):.4g}, fitted at prior {c['prior']:g} on {calibrate} "
            f"({c['n_target']} target, {c['n_nontarget']} non-target trials)",
            markup=False,
        )
    if out is not None:
        from metaemb.core.files import atomic_write_text

        record = {"scores": str(scores.resolve()), **({"trials": str(trials.resolve())} if trials
                  else {}), "p_targets": list(priors), **report}  # fmt: skip
        atomic_write_text(out, json.dumps(record, indent=2))
        console.print(f"wrote {out}", markup=False)


def _calibrated(
    report: dict,
    tar: Any,
    non: Any,
    dev: Path | None,
    dev_trials: Path | None,
    prior: float,
    priors: tuple[float, ...],
) -> bool:
    """With a development score file `dev`: fit the calibration on it (at `prior`), and add
    `calibration` and `calibrated` (the metrics of the calibrated scores) to `report`."""
    if dev is None:
        return False
    import numpy as np

    from metaemb.core.eval.metrics import verification_report
    from metaemb.core.eval.scores_file import labelled_scores
    from metaemb.core.scoring.calibration import LinearCalibration

    dev_tar, dev_non = labelled_scores(dev, dev_trials, "--calibrate-trials")
    scores = np.concatenate([dev_tar, dev_non])
    labels = np.concatenate([np.ones(len(dev_tar)), np.zeros(len(dev_non))])
    cal = LinearCalibration(prior=prior).fit(scores, labels)
    mapped = [np.asarray(cal(np.asarray(x)), dtype=np.float64) for x in (tar, non)]
    report["calibration"] = {
        "weight": cal.weight, "bias": cal.bias, "prior": prior, "scores": str(dev.resolve()),
        "n_target": len(dev_tar), "n_nontarget": len(dev_non),
    }  # fmt: skip
    report["calibrated"] = verification_report(mapped[0], mapped[1], priors)
    return True


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
