"""CLI options shared by several commands, declared once so their help stays the same."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

#: the modality a command uses when neither --modality nor a run or config file names one
DEFAULT_MODALITY = "face"

#: `--device` of every command that runs a network
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")]

#: `--workers N` of the commands that read data after training
Workers = Annotated[
    int, typer.Option(help="DataLoader worker processes (0: read in this process)", min=0)
]

#: `--frontend-set KEY=VALUE` of the commands that use a trained run (evaluate, embed, enroll,
#: identify): see `metaemb.core.data.pipeline.use_frontend_set`
FrontendSet = Annotated[
    list[str] | None,
    typer.Option(
        help="KEY=VALUE of the run's frontend, repeatable: where side data is or what to do "
        "without it (align: landmarks_file=F, on_no_face=center)"
    ),
]

#: `--features-set KEY=VALUE` of evaluate, embed and export (galleries embed with the run's
#: own features): see `metaemb.core.data.pipeline.use_features_set`
FeaturesSet = Annotated[
    list[str] | None,
    typer.Option(
        help="KEY=VALUE of the run's features that only change how it embeds after training, "
        "repeatable (image: test_flip=true, the flip test; speaker: max_eval_seconds=600)"
    ),
]

#: `--root DIR` of the commands that read loose sample files (embed, identify --probe,
#: neighbours probes): see `metaemb.core.eval.collect.load_for_files`
FilesRoot = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help="for sample files given one by one: the <identity>/… folder they belong to, so the "
        "run's sample folder names their identities (default: the folder each file sits in)",
    ),
]

#: `--folder NAME` and `--folder-set KEY=VALUE` of the commands that read data with a trained run
#: (evaluate, embed, enroll, identify, neighbours): see `metaemb.core.data.pipeline.use_folder_set`
DataFolder = Annotated[
    str | None,
    typer.Option(
        "--folder",
        help="read the data with this sample folder instead of the run's (e.g. kaldi: a Kaldi "
        "data directory read by a run trained on plain folders)",
    ),
]
DataFolderSet = Annotated[
    list[str] | None,
    typer.Option(
        "--folder-set",
        help="KEY=VALUE option of the sample folder reading the data (which files it holds), "
        "repeatable",
    ),
]
