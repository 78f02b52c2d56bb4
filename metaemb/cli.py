"""The `metaemb` command line, built by a factory so plugins can add commands before it runs."""

from __future__ import annotations

import contextlib
import contextvars
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from metaemb.commands.console import make_console

err_console = make_console(stderr=True)


def create_app() -> typer.Typer:
    """Build the typer app: built-in commands, then commands from plugins' register_commands."""
    app = typer.Typer(
        name="metaemb",
        help="Train and evaluate embedding networks for biometric recognition (faces, voices, …).",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.callback()(_root)
    from metaemb.commands.embed import demo_data, embed
    from metaemb.commands.evaluate import evaluate
    from metaemb.commands.train import distill, train

    app.command()(train)
    app.command()(evaluate)
    from metaemb.commands.metrics import metrics

    app.command()(metrics)
    app.command()(distill)
    app.command()(embed)
    app.command("demo-data")(demo_data)
    from metaemb.commands.listing import list_components, plugins

    app.command()(plugins)
    app.command("list")(list_components)
    from metaemb.commands.trials import app as trials_app

    app.add_typer(trials_app, name="trials")
    from metaemb.commands.export import export as export_command

    app.command("export")(export_command)
    from metaemb.commands.gallery import enroll, identify, rename_identity, unenroll

    app.command()(enroll)
    app.command()(unenroll)
    app.command()(rename_identity)
    app.command()(identify)
    from metaemb.commands.doctor import doctor

    app.command()(doctor)
    from metaemb.commands.neighbours import neighbours

    app.command()(neighbours)
    from metaemb.commands.plot import plot

    app.command()(plot)
    from metaemb.commands.runs import runs as runs_command

    app.command("runs")(runs_command)
    from metaemb.commands.lr_find import lr_find

    app.command("lr-find")(lr_find)
    from metaemb.commands.plugin_commands import add_plugin_commands

    add_plugin_commands(app)  # a plugin's command never replaces a built-in one
    return app


# ---------------------------------------------------------------------------------------------
def _show_version(value: bool) -> None:
    if value:
        from metaemb import __version__

        typer.echo(f"metaemb {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """Train and evaluate embedding networks for biometric recognition (faces, voices, …)."""


# ---------------------------------------------------------------------------------------------
def _user_message(exc: BaseException) -> str:
    """A one-paragraph message; errors re-raised from DataLoader workers carry a traceback text."""
    text = str(exc)
    if "Traceback" in text:
        for line in reversed(text.strip().splitlines()):
            if "Error: " in line:
                return line.split("Error: ", 1)[1]
    return text


def main() -> None:
    from metaemb.core.errors import MetaembError

    if sys.argv[1:] == ["--version"]:  # answer before loading plugins (works even if one is broken)
        from metaemb import __version__

        with contextlib.suppress(BrokenPipeError):  # `metaemb --version | true`
            print(f"metaemb {__version__}", flush=True)
        return
    _tolerant_output()
    _plain_warnings()
    from metaemb.core.closed_output import GuardedStdout

    stdout, sys.stdout = sys.stdout, GuardedStdout(sys.stdout)  # type: ignore[assignment]
    try:
        app = create_app()
        # in a context of its own: a command's --folder, --folder-set and --frontend-set
        # (context variables) end with it, and never reach a later call in the same process
        contextvars.copy_context().run(app)
    except MetaembError as exc:
        _print_error(_user_message(exc))
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C while torch and the plugins import (seconds, at start):
        sys.exit(130)  # the status a shell gives it, without a traceback into torch's imports
    except OSError as exc:  # a write that failed past the up-front checks (e.g. the disk filled)
        from metaemb.core.paths import is_write_error, output_error

        if not is_write_error(exc):
            raise
        if exc.filename is None and not _writable(stdout):
            _print_error(str(output_error(exc, "<standard output>", "command's output")))
        else:
            _print_error(str(output_error(exc, exc.filename or "?", "output")))
        sys.exit(2)
    finally:
        sys.stdout = stdout


def _plain_warnings() -> None:
    """metaemb's warnings (UserWarning) print as one "warning: …" line for a user, not as a
    source path and line of code; other categories keep Python's format for developers."""
    import warnings

    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):  # type: ignore[no-untyped-def]
        if category is UserWarning:
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning


def _tolerant_output() -> None:
    """File names that are not valid UTF-8 reach Python as lone surrogates; print them as
    backslash escapes instead of failing with UnicodeEncodeError halfway through the output."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


def _writable(stream: Any) -> bool:
    """Whether `stream` still takes output (a write error without a file name is most often
    the standard output: a log file on a full disk, a closed pipe)."""
    try:
        stream.write("")
        stream.flush()
    except (OSError, ValueError):
        return False
    return True


def _print_error(text: str) -> None:
    message = escape(text)  # "metaemb[plots]" and paths like "data/mk[/y]z" are text, not markup
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
