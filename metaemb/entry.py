"""The `metaemb` console script. Ctrl-C while the command line itself imports (typer, rich)
exits 130 without a traceback, as it does once `metaemb.cli.main` runs."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from metaemb.cli import main as run
    except KeyboardInterrupt:
        sys.exit(130)
    run()
