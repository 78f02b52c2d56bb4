"""Every command's --help shows what its options' help says.

The help is rendered by rich, which reads `[default: 17]` as a style tag and drops it: six
options' defaults vanished from --help that way. Brackets meant as text are written `\\[`.
"""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

from metaemb.cli import create_app


def commands(group, path: tuple[str, ...] = ()):
    """(argv path, command) for every command of the tree, groups included."""
    yield path, group
    if hasattr(group, "commands"):
        for name, sub in sorted(group.commands.items()):
            yield from commands(sub, (*path, name))


def test_bracketed_help_text_reaches_the_rendered_help():
    app = create_app()
    root = typer.main.get_command(app)
    runner = CliRunner()
    missing = []
    for path, command in commands(root):
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "2000"}, terminal_width=2000)
        assert shown.exit_code == 0, (path, shown.output)
        text = " ".join(shown.output.split())
        for param in command.params:
            for bracketed in re.findall(r"\\?\[[^\]]*\]", getattr(param, "help", None) or ""):
                literal = bracketed.lstrip("\\")
                if " ".join(literal.split()) not in text:
                    missing.append(f"metaemb {' '.join(path)} {param.name}: {literal}")
    assert not missing, "help text rich swallowed as markup (write \\[):\n" + "\n".join(missing)


def test_every_device_and_workers_option_says_the_same():
    """--device was declared nine times with three helps (none listing cuda:N on most), and
    --workers with three (Q1 F27)."""
    root = typer.main.get_command(create_app())
    helps: dict[str, set[str]] = {"device": set(), "workers": set()}
    for _, command in commands(root):
        runs_a_network = any(p.name == "device" for p in command.params)  # not `landmarks`
        for param in command.params:
            train_default = param.name == "workers" and param.default is None  # data.workers
            if param.name in helps and runs_a_network and not train_default:
                helps[param.name].add(param.help or "")
    assert helps["device"] == {"auto, cpu, cuda, cuda:N or mps"}
    assert helps["workers"] == {"DataLoader worker processes (0: read in this process)"}
