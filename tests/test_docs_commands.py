"""Every command line the documentation shows names a real command, real options and real
config keys.

A user copies `metaemb evaluate RUN --calibrate cal.txt` or `--set train.init_parts=backbone`
from the docs; a renamed option or key would otherwise leave the docs wrong without a failing
test. This reads README.md and docs/**/*.md: fenced code blocks (backslash continuations joined)
and inline code spans, finds each `metaemb COMMAND [SUBCOMMAND] …` and checks every `--flag`
against the command's options and every core `--set section.key` against the config schema.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import typer

from metaemb.cli import create_app
from metaemb.core.config import COMPONENT_SECTIONS, CORE_SECTIONS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
COMMAND = re.compile(r"(?<![\w.])metaemb\s+(?!import\b)([a-z][a-z-]*)((?:[ \t]+[^\s;&|`]+)*)")
SECTIONS = {*CORE_SECTIONS, *COMPONENT_SECTIONS, "augment"}


def code_spans(text: str) -> list[str]:
    """The lines of fenced code blocks (continuations joined, comments cut) and inline spans."""
    out = []
    for block in re.findall(r"```[\w-]*\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            out.append(re.split(r"\s#\s", line, maxsplit=1)[0])
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    out += re.findall(r"`([^`\n]+)`", prose)
    return out


def problems_in(text: str, where: str, cli: object) -> list[str]:
    problems = []
    for span in code_spans(text):
        for name, rest in COMMAND.findall(span):
            cmd = cli.commands.get(name)  # type: ignore[attr-defined]
            if cmd is None:
                problems.append(f"{where}: `metaemb {name}` is not a command ({span.strip()!r})")
                continue
            args = rest.split()
            if hasattr(cmd, "commands") and args and args[0] in cmd.commands:
                cmd, args = cmd.commands[args[0]], args[1:]
            options = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
            for i, arg in enumerate(args):
                flag = arg.split("=", 1)[0].strip("[]…,.()")
                if flag.startswith("--") and flag not in options:
                    problems.append(f"{where}: `metaemb {cmd.name}` has no option {flag}")
                if flag == "--set" and i + 1 < len(args):
                    problems += bad_set_key(args[i + 1].strip("[]…,()"), where)
    return problems


def bad_set_key(item: str, where: str) -> list[str]:
    """A `--set` item whose section is unknown, or whose core key does not exist."""
    key = item.split("=", 1)[0]
    section, _, field = key.partition(".")
    if not field or section == "demo" or "<" in key or key.isupper():
        return []  # a placeholder (KEY=VALUE) or a demo dataset's own option
    if section not in SECTIONS:
        return [f"{where}: --set {key}: no config section [{section}]"]
    if section in CORE_SECTIONS:
        fields = {f.name for f in dataclasses.fields(CORE_SECTIONS[section])}
        if field not in fields:
            return [f"{where}: --set {key}: [{section}] has no key '{field}'"]
    return []


def test_every_documented_command_line_uses_real_options():
    cli = typer.main.get_command(create_app())
    problems, lines = [], 0
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        problems += problems_in(text, str(doc.relative_to(ROOT)), cli)
        lines += sum(len(COMMAND.findall(span)) for span in code_spans(text))
    assert lines > 60, f"only {lines} command lines found: has the docs' format changed?"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("`metaemb evaluate RUN --calibrate cal.txt`", 0),
        ("`metaemb evaluate RUN --calibrated cal.txt`", 1),
        ("```bash\nmetaemb train --modality face \\\n    --sett x\n```", 1),
        ("`metaemb trials make DATA --out t.txt`", 0),
        ("`metaemb trials make DATA --outfile t.txt`", 1),
        ("`metaemb frobnicate`", 1),
        ("`metaemb train --set train.lr=0.1`", 0),
        ("`metaemb train --set train.learning_rate=0.1`", 1),
        ("`metaemb train --set trian.lr=0.1`", 1),
        ("`metaemb train --set KEY=VALUE`", 0),
        ("from metaemb import hookimpl", 0),  # prose, not a code span
    ],
)
def test_the_checker_finds_wrong_command_lines(text, found):
    cli = typer.main.get_command(create_app())
    assert len(problems_in(text, "a page", cli)) == found
