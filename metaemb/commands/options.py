"""CLI options shared by several commands, declared once so their help stays the same."""

from __future__ import annotations

from typing import Annotated

import typer

#: `--frontend-set KEY=VALUE` of the commands that use a trained run (evaluate, embed, enroll,
#: identify): see `metaemb.core.data.pipeline.use_frontend_set`
FrontendSet = Annotated[
    list[str] | None,
    typer.Option(
        help="KEY=VALUE of the run's frontend, repeatable: where side data is or what to do "
        "without it (align: landmarks_file=F, on_no_face=center)"
    ),
]
