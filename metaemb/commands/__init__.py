"""CLI sub-commands that grew beyond a function in cli.py (each module exposes a typer `app`)."""
