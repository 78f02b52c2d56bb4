"""Optional packages stay off the main path: a base install (no extras) runs every CLI command.

Two proofs without a second virtual environment:
- static: no metaemb module imports an optional package at module level (AST walk);
- dynamic: the CLI's main paths run in a subprocess whose `sys.meta_path` refuses every optional
  package, and end cleanly or with the one-line "pip install 'metaemb[extra]'" message.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import metaemb
from metaemb.core.optional import NOT_ON_MAIN_PATH, OPTIONAL, MissingExtra, require

PACKAGE = Path(metaemb.__file__).parent

BLOCKER = '''
import importlib.abc
import importlib.machinery
import io
import json
import sys

BLOCKED = set(sys.argv[1].split(","))


class Missing(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked)", name=spec.name)

    def exec_module(self, module):
        pass


class Refuse(importlib.abc.MetaPathFinder):
    """Every blocked package fails to import, as if it were not installed (a spec, not an
    exception, because torch probes optional packages with importlib.util.find_spec)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, Missing())
        return None


sys.meta_path.insert(0, Refuse())
from metaemb.cli import main

results, real = [], (sys.stdout, sys.stderr)
for args in json.loads(sys.argv[2]):  # several commands per process: torch loads once
    sys.argv = ["metaemb", *args]
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 99
    results.append({"args": args, "code": code, "out": sys.stdout.getvalue(),
                    "err": sys.stderr.getvalue()})
sys.stdout, sys.stderr = real
print(json.dumps(results))
'''


# -- static ----------------------------------------------------------------------------------
def module_level_imports(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every import that runs when the module is imported.

    Function bodies are skipped (they run later, on the path that needs them); class bodies,
    `if`/`try` blocks at module level are not. `if TYPE_CHECKING:` blocks never run.
    """
    found: list[tuple[int, str]] = []

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.Import):
                found.extend((node.lineno, a.name.split(".")[0]) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.lineno, node.module.split(".")[0]))
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(source).body)
    return found


def test_the_checker_sees_module_level_imports_and_skips_function_bodies():
    source = (
        "import os\nimport matplotlib.pyplot as plt\n"
        "try:\n    import faiss\nexcept ImportError:\n    faiss = None\n"
        "class A:\n    from sklearn import svm\n"
        "if TYPE_CHECKING:\n    import onnx\n"
        "def f():\n    import dlib\n"
    )
    assert module_level_imports(source) == [
        (1, "os"),
        (2, "matplotlib"),
        (4, "faiss"),
        (8, "sklearn"),
    ]


def test_no_module_imports_an_optional_package_at_module_level():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, name in module_level_imports(path.read_text(encoding="utf-8"))
        if name in NOT_ON_MAIN_PATH
    ]
    assert not offenders, "import these inside the function that needs them:\n" + "\n".join(
        offenders
    )


def test_require_names_the_extra_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` → ImportError
    with pytest.raises(MissingExtra) as info:
        require("faiss", "searching a gallery")
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "searching a gallery needs faiss, from the optional 'search' extra: "
        "pip install 'metaemb[search]' (or pip install faiss-cpu)."
    )
    for module, (extra, _) in OPTIONAL.items():
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(MissingExtra, match=rf"pip install 'metaemb\[{extra}\]'"):
            require(module, "x")


def test_every_extra_of_pyproject_is_known_to_the_helper():
    """doctor reports each extra, and require() can name it: OPTIONAL covers pyproject's extras."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    extras = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(extras) - {"test"} == {extra for extra, _ in OPTIONAL.values()}


# -- dynamic ---------------------------------------------------------------------------------
def cli(tmp: Path, *commands: list[str], blocked=NOT_ON_MAIN_PATH) -> list[dict]:
    """Run metaemb commands in one subprocess that cannot import `blocked` → per-command results."""
    script = tmp / "blocked_cli.py"
    script.write_text(BLOCKER)
    env = {**os.environ, "METAEMB_CACHE": str(tmp / "cache"), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, str(script), ",".join(blocked), json.dumps([list(c) for c in commands])],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def clean(result: dict) -> str:
    """stdout of a command that must end cleanly (exit 0, no traceback)."""
    text = result["out"] + result["err"]
    assert "Traceback" not in text, (result["args"], text)
    assert result["code"] == 0, (result["args"], text)
    return result["out"]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("blocked")


MAIN_PATHS = [
    ["--version"],
    ["--help"],
    ["train", "--help"],
    ["doctor"],
    ["plugins"],
    ["plugins", "--json"],
    *(["list", kind] for kind in ("backbones", "objectives", "frontends", "scorers", "modalities")),
]


def test_main_paths_run_without_any_extra(tmp):
    doctor_json, *results = cli(tmp, ["doctor", "--json"], *MAIN_PATHS)
    env = json.loads(clean(doctor_json))
    # the blocker works: every extra is reported missing although the test venv has them
    assert all(v is None for mods in env["extras"].values() for v in mods.values()), env
    for result in results:
        assert clean(result).strip(), result["args"]
    assert results[0]["out"] == f"metaemb {metaemb.__version__}\n"


FACE = [
    "demo.identities=8",
    "demo.images_per_identity=5",
    "demo.image_size=32",
    "train.epochs=1",
    "train.batch_size=16",
    "model.dim=16",
    "eval.max_targets=100",
    "eval.nontargets=100",
]

SPEAKER = [
    "demo.speakers=8",
    "demo.utterances_per_speaker=4",
    "demo.seconds=[1.0, 1.5]",
    "train.epochs=1",
    "train.batch_size=16",
    "model.dim=16",
    "eval.max_targets=100",
    "eval.nontargets=100",
]


def sets(options: list[str]) -> list[str]:
    return [a for s in options for a in ("--set", s)]


@pytest.mark.slow  # two trainings in a subprocess: about 30 s of CPU (.ci/run covers the full size)
def test_train_evaluate_export_on_demo_data_without_any_extra(tmp):
    """The README's main command, shrunk, for both modalities; then evaluate and export."""
    face, speaker = cli(
        tmp,
        ["train", "--modality", "face", "--workers", "0", *sets(FACE)],
        ["train", "--modality", "speaker", "--workers", "0", *sets(SPEAKER)],
    )
    for result, modality in ((face, "face"), (speaker, "speaker")):
        assert "EER" in clean(result)
        (run,) = (tmp / "runs" / modality).iterdir()
        assert (run / "best.pt").is_file() and (run / "metrics.jsonl").read_text().strip()
    (run,) = (tmp / "runs" / "face").iterdir()
    evaluation, export = cli(
        tmp,
        ["evaluate", str(run), "--workers", "0", "--out", str(tmp / "ev")],
        ["export", str(run), "--format", "onnx", "--out", str(tmp / "m.onnx")],
    )
    hints = [line for line in clean(evaluation).splitlines() if "metaemb[plots]" in line]
    assert hints == ["no plots: drawing PNG plots needs matplotlib, from the "
                     "optional 'plots' extra: pip install 'metaemb[plots]' (or pip install "
                     "matplotlib)."]  # fmt: skip
    assert (tmp / "ev" / "metrics.json").is_file() and not list((tmp / "ev").glob("*.png"))
    assert export["code"] == 2 and "Traceback" not in export["err"]
    assert export["err"].strip().startswith("error: ONNX export needs onnx")
    assert "pip install 'metaemb[export]'" in " ".join(export["err"].split())
