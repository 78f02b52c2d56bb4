"""The import rules of the layout (docs/architecture.md): the core never imports a plugin or the
command line, a built-in plugin never imports another plugin, and the plugin framework
(core/plugin) never imports the configuration built on it (core/config).

Checked on the source (AST walk over every import statement, including those inside functions,
relative imports resolved), so a lazy import that breaks the rule is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import metaemb

PACKAGE = Path(metaemb.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[str]:
    """Every module an import statement of `source` names (relative imports made absolute)."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return out


def violations(module: str, imports: list[str]) -> list[str]:
    """The imports of `module` that break a layout rule."""
    bad = []
    for name in imports:
        if module.startswith("metaemb.core"):
            if name.startswith(("metaemb.plugins", "metaemb.commands", "metaemb.cli")):
                bad.append(f"{module} imports {name} (the core never imports a plugin or the CLI)")
            if module.startswith("metaemb.core.plugin") and name.startswith("metaemb.core.config"):
                bad.append(
                    f"{module} imports {name} (the plugin framework is the layer below the "
                    "configuration)"
                )
        elif module.startswith("metaemb.plugins."):
            own = ".".join(module.split(".")[:3])
            if name.startswith("metaemb.plugins.") and not (
                name == own or name.startswith(own + ".")
            ):
                bad.append(f"{module} imports {name} (a plugin never imports another plugin)")
            if name.startswith(("metaemb.commands", "metaemb.cli")):
                bad.append(
                    f"{module} imports {name} (plugins add commands by a hook, not an import)"
                )
    return bad


def test_the_core_and_the_plugins_keep_the_import_rules():
    problems = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert any("plugins" in f.parts for f in files) and any("core" in f.parts for f in files)
    for path in files:
        module = module_name(path)
        source = path.read_text(encoding="utf-8")
        problems += violations(module, imported_modules(source, module, path.name == "__init__.py"))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "breaks"),
    [
        (
            "metaemb.core.eval.report",
            "def f():\n    from metaemb.plugins.vision import align\n",
            True,
        ),
        ("metaemb.core.eval.report", "from ...plugins.audio.io import read_audio\n", True),
        ("metaemb.core.data.pipeline", "import metaemb.cli\n", True),
        (
            "metaemb.plugins.vision.frontend",
            "from metaemb.plugins.audio.io import read_audio\n",
            True,
        ),
        ("metaemb.plugins.vision.frontend", "from ..audio import io\n", True),
        (
            "metaemb.plugins.vision.frontend",
            "from metaemb.plugins.vision.landmarks import X\n",
            False,
        ),
        ("metaemb.plugins.vision.frontend", "from .align import align_faces\n", False),
        ("metaemb.plugins.audio", "from metaemb.core.plugin.hookspecs import Register\n", False),
        (
            "metaemb.core.plugin.contract",
            "if TYPE_CHECKING:\n    from metaemb.core.config import Config\n",
            True,
        ),
        ("metaemb.core.config.chain", "from metaemb.core.plugin.contract import Kind\n", False),
    ],
)
def test_the_rule_check_would_catch_a_violation(module, source, breaks):
    is_package = module == "metaemb.plugins.audio"
    assert bool(violations(module, imported_modules(source, module, is_package))) == breaks
