"""Every document the repository cites is in the repository.

Docstrings, comments and docs once cited `specs/gme.md` or `shared/specs/…`, files a user never
had. This test reads every tracked text file and checks (1) relative markdown links and (2) any
path-like reference to a `.md` file (`docs/reference/gme.md`, `specs/x.md`, a bare `gme.md`) in
code, configs and docs: each must name a file that exists, relative to the repository root or to
the citing file.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".yml", ".yaml", ""}
SKIP_DIRS = {
    ".git",
    ".venv",
    "runs",
    "build",
    "dist",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
}

# [text](target) — target without a scheme (http:, mailto:) or a pure #anchor
MD_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# a path-like token ending in .md: letters, digits, _ . - and /, not part of a URL
MD_REF = re.compile(r"(?<![\w/.:-])((?:[\w.-]+/)*[\w.-]+\.md)\b")


def repo_files() -> list[Path]:
    """The files of the repository: git's view (tracked + untracked, not ignored) when available."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        files = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [
                d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
            ]
            files += [Path(dirpath, f) for f in filenames]
    return [f for f in files if f.suffix in TEXT_SUFFIXES and f.is_file()]


def resolves(target: str, source: Path) -> bool:
    target = target.split("#", 1)[0].split("?", 1)[0]
    if not target:
        return True  # a pure anchor
    return (source.parent / target).exists() or (ROOT / target).exists()


def broken_references(path: Path, text: str) -> list[str]:
    """`line: reference` for each citation in `text` that names no file of the repository."""
    bad = []
    for lineno, line in enumerate(text.splitlines(), 1):
        targets = []
        if path.suffix == ".md":
            for m in MD_LINK.finditer(line):
                t = m.group(1)
                if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#"):
                    targets.append(t)
        for m in MD_REF.finditer(line):
            start = m.start(1)
            if re.search(r"https?://\S*$", line[:start]):
                continue  # part of a URL
            targets.append(m.group(1))
        bad += [f"{lineno}: {t}" for t in dict.fromkeys(targets) if not resolves(t, path)]
    return bad


def test_every_cited_document_exists():
    problems = []
    for path in repo_files():
        if path == Path(__file__).resolve():
            continue  # its own examples of broken citations
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for b in broken_references(path, text):
            problems.append(f"{path.relative_to(ROOT)}:{b}")
    assert not problems, "citations of documents that are not in the repository:\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize(
    ("suffix", "text", "n_broken"),
    [
        (".py", '"""Math as in specs/gme.md §3."""', 1),
        (".py", "# see shared/specs/metrics.md", 1),
        # a bare name that is in neither docs/ nor the root (docs/speaker.md exists now)
        (".py", "# the alignment template of face-template.md", 1),
        (".py", "# see docs/reference/gme.md and README.md", 0),
        (".md", "See [the reference](reference/gme.md#tv1) and [x](https://a.b/c.md).", 0),
        (".md", "See [the plugin](../examples/plugin) and [gone](nowhere/page.md).", 1),
        (".md", "[broken dir](../no-such-folder)", 1),
    ],
)
def test_checker_finds_broken_citations(suffix, text, n_broken):
    source = ROOT / "docs" / f"probe{suffix}"
    assert len(broken_references(source, text)) == n_broken


# a path-like token ending in .py with at least one folder: core/train/heads.py, plugins/x.py
PY_REF = re.compile(r"(?<![\w/.:-])((?:[\w.-]+/)+[\w.-]+\.py)\b")


def broken_module_references(path: Path, text: str) -> list[str]:
    """`line: reference` for each module path in `text` that names no file: relative to the
    repository, to the package (`core/heads.py`), to an example plugin's folder, or to the
    citing file's folders."""
    bases = [ROOT, ROOT / "metaemb", *sorted(ROOT.glob("examples/*")), *path.parents]
    bad = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in PY_REF.finditer(line):
            if re.search(r"https?://\S*$", line[: m.start(1)]):
                continue  # part of a URL
            if not any((base / m.group(1)).is_file() for base in bases):
                bad.append(f"{lineno}: {m.group(1)}")
    return bad


def test_every_cited_module_exists():
    """Docstrings and comments named `core/heads.py` and `core/plda.py` after those files
    moved into sub-packages: a maintainer following them found nothing."""
    problems = []
    for path in repo_files():
        if path == Path(__file__).resolve() or path.suffix not in (".py", ".md"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        problems += [f"{path.relative_to(ROOT)}:{b}" for b in broken_module_references(path, text)]
    assert not problems, "module paths that name no file:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("text", "n_broken"),
    [
        ("# heads: core/heads.py", 1),
        ("# heads: core/train/heads.py; the CLI in commands/train.py", 0),
        ("# see https://github.com/a/b/blob/main/x/y.py", 0),
    ],
)
def test_module_checker_finds_moved_files(text, n_broken):
    assert len(broken_module_references(ROOT / "metaemb" / "probe.py", text)) == n_broken
