"""`metaemb evaluate`: verification metrics of a run (or a pretrained reference) on trials, or
the match and closed-set measures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metaemb.commands.console import make_console
from metaemb.commands.options import (
    DEFAULT_MODALITY,
    DataFolder,
    DataFolderSet,
    Device,
    FeaturesSet,
    FrontendSet,
    Workers,
)

console = make_console()


def evaluate(
    run: Annotated[
        Path | None, typer.Argument(help="run directory or checkpoint (.pt); or --reference")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="data folder (default: the run's)")] = None,
    trials: Annotated[
        Path | None, typer.Option(help="trial list (VoxCeleb, Kaldi, CN-Celeb, LFW)")
    ] = None,
    protocol: Annotated[str | None, typer.Option(help="lfw, voxceleb, kaldi, …")] = None,
    folds: Annotated[
        int | None,
        typer.Option(
            help="score the --trials list as K contiguous equal folds: K-fold accuracy and "
            "TAR@FAR, as CFP-FP, CALFW and CPLFW report",
            min=2,
        ),
    ] = None,
    protocol_set: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE option of --protocol (e.g. min_age_gap=20), repeatable"),
    ] = None,
    scorer: Annotated[str | None, typer.Option(help="scorer name (default: the run's)")] = None,
    scorer_set: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE option of the scorer for this evaluation (top_n=100, lda_dim=150; "
            "base.wccn=false), repeatable: refitted on the training samples, no retraining"
        ),
    ] = None,
    p_target: Annotated[
        list[float] | None,
        typer.Option(help="target prior of minDCF/actDCF, repeatable (default: the run's)"),
    ] = None,
    calibrate: Annotated[
        Path | None, typer.Option(help="trial list of held-out trials to train calibration on")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default: RUN/eval-…)")] = None,
    device: Device = "auto",
    workers: Workers = 2,
    measure: Annotated[
        str, typer.Option(help="verification (pairs), match (triplets) or class (closed set)")
    ] = "verification",
    enroll_samples: Annotated[
        int | None,
        typer.Option(help="--measure class: samples enrolled per identity \\[default: 1]"),
    ] = None,
    frontend_set: FrontendSet = None,
    features_set: FeaturesSet = None,
    folder: DataFolder = None,
    folder_set: DataFolderSet = None,
    reference: Annotated[
        str | None,
        typer.Option(help="score --data with a pretrained backbone instead of a run (dlib-resnet)"),
    ] = None,
    modality: Annotated[
        str | None, typer.Option(help="modality of --reference \\[default: face]")
    ] = None,
    adapt: Annotated[
        bool,
        typer.Option(
            help="adapt without labels to the files scored: the scorer (centre on their mean, "
            "scale by their spread: scorers with adapt_mean or adapt_scale = true) and the "
            "network's BatchNorm statistics (runs with eval.adapt_batchnorm = true)"
        ),
    ] = True,
) -> None:
    """Evaluate a trained model: metrics table, metrics.json, scores.txt and plots."""
    from metaemb.core.data.pipeline import use_features_set, use_frontend_set
    from metaemb.core.errors import MetaembError
    from metaemb.core.eval.evaluate import Evaluation

    use_frontend_set(frontend_set)
    use_features_set(features_set)
    preloaded = None
    if modality is not None and reference is None:
        raise MetaembError("--modality is for --reference (a run knows its modality): leave it "
                           "out, or score --data with --reference NAME.")  # fmt: skip
    modality = modality or DEFAULT_MODALITY
    if reference is not None and (folder is not None or folder_set):
        raise MetaembError("--folder and --folder-set choose how a run reads --data; a "
                           "--reference reads it with the modality's own folder.")  # fmt: skip
    if reference is not None and features_set:  # its pipeline has no test views to set
        raise MetaembError("--features-set sets a trained run's features; a --reference model "
                           "embeds one view as it is: leave it out.")  # fmt: skip
    if reference is not None:
        from metaemb.core.train.pretrained import reference_run

        if run is not None or data is None:
            raise MetaembError("--reference NAME scores --data DIR with NAME instead of a run: "
                               "give --data and no RUN.")  # fmt: skip
        preloaded = reference_run(reference, modality, data, device)
        # its results go under reference-NAME/ as a run's under its folder, named the same way
        run = Path(f"reference-{reference}")
    if run is None:
        raise MetaembError("evaluate needs a RUN (directory or checkpoint) or --reference NAME.")
    if protocol_set and protocol is None:
        raise MetaembError("--protocol-set sets options of --protocol, and no --protocol was "
                           "given: add --protocol NAME, or leave --protocol-set out.")  # fmt: skip
    unused = {"--enroll-samples": enroll_samples is not None and measure != "class",
              "--protocol": protocol is not None and measure != "verification",
              "--p-target": bool(p_target) and measure != "verification",
              "--calibrate": calibrate is not None and measure != "verification",
              "--folder": folder is not None and measure != "verification",
              "--folder-set": bool(folder_set) and measure != "verification",
              "--folds": folds is not None and measure != "verification",
              "--scorer-set": bool(scorer_set) and measure != "verification",
              "--trials": trials is not None and measure == "class"}  # fmt: skip
    for flag, given in unused.items():
        if given:
            raise MetaembError(f"{flag} does not apply to --measure {measure} (--enroll-samples is "
                               "for --measure class, which enrolls from every file of --data and "
                               "reads no list; --trials for verification pairs and match "
                               "triplets; --protocol, --calibrate, --p-target, --folder, "
                               "--folder-set, --folds and --scorer-set for verification): leave "
                               "it out, or "
                               "choose the measure it is for.")  # fmt: skip
    if measure != "verification":
        from metaemb.core.eval.measures import run_measure

        enroll_samples = 1 if enroll_samples is None else enroll_samples
        run_measure(run, measure, data=data, trials=trials, scorer=scorer, enroll=enroll_samples,
                    out=out, device=device, workers=workers, console=console,
                    preloaded=preloaded, adapt=adapt)  # fmt: skip
        return
    evaluation = Evaluation(
        run,
        data=data,
        trials=trials,
        protocol=protocol,
        protocol_options=protocol_set or [],
        scorer_options=scorer_set or [],
        p_targets=p_target or [],
        scorer=scorer,
        calibrate=calibrate,
        out=out,
        device=device,
        workers=workers,
        console=console,
        adapt=adapt,
        folder=folder,
        folder_options=folder_set or [],
        folds=folds,
        preloaded=preloaded,
    )
    evaluation.run()
