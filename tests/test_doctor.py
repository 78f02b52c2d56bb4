"""`metaemb --version` and `metaemb doctor`: what users paste into bug reports."""

from __future__ import annotations

import json
import sys

from helpers import run_cli

import metaemb
from metaemb.core.optional import OPTIONAL
from metaemb.core.plugin import manager
from metaemb.core.plugin.manager import FailedPlugin


def test_version_fast_path_and_through_typer(capsys):
    for args in (["--version"], ["--version", "doctor"]):
        code, out, err = run_cli(args, capsys)
        assert (code, out) == (0, f"metaemb {metaemb.__version__}\n"), err


def test_doctor_reports_versions_cache_extras_and_failed_plugins(tmp_path, capsys, monkeypatch):
    import numpy
    import torch

    cache = tmp_path / "cache"
    (cache / "demo").mkdir(parents=True)
    (cache / "demo" / "a.bin").write_bytes(b"x" * 1000)
    (cache / "b.bin").write_bytes(b"y" * 24)
    monkeypatch.setenv("METAEMB_CACHE", str(cache))
    st = manager.state()
    monkeypatch.setattr(st, "failed", [FailedPlugin("broken", "ImportError: no module x"),
                                       FailedPlugin("half", "its register_samplers hook raised "
                                                    "ValueError: x", skipped="samplers")])  # fmt: skip
    monkeypatch.setitem(sys.modules, "faiss", None)  # the 'search' extra is "not installed"

    code, out, err = run_cli(["doctor", "--json"], capsys)
    assert code == 0, err
    env = json.loads(out)
    assert env["metaemb"] == metaemb.__version__
    assert env["packages"]["torch"] == torch.__version__.split("+")[0]
    assert env["packages"]["numpy"] == numpy.__version__
    assert env["cuda"]["available"] == torch.cuda.is_available()
    assert env["cache"] == {"path": str(cache), "exists": True, "bytes": 1024, "files": 2}
    assert env["extras"]["search"] == {"faiss": None}
    assert set(env["extras"]) == {extra for extra, _ in OPTIONAL.values()} >= {"plots", "face"}
    names = {p["name"] for p in env["plugins"]["loaded"]}
    assert {"core", "vision", "audio"} <= names
    assert [(f["name"], f["skipped"]) for f in env["plugins"]["failed"]] == [
        ("broken", ""), ("half", "samplers")]  # fmt: skip

    code, out, err = run_cli(["doctor"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"metaemb {metaemb.__version__}"
    assert f"cache {cache}: 1.0 KiB in 2 files" in lines
    assert "extra [search]: faiss missing  (pip install 'metaemb[search]')" in lines
    assert "plugin failed to load: broken: ImportError: no module x" in lines
    # a plugin whose one hook failed did load: its other components are there (P20 F9)
    assert ("plugin half: its samplers were skipped: its register_samplers hook raised "
            "ValueError: x") in lines  # fmt: skip
    assert any(line.startswith("plugins: core ") and "vision" in line for line in lines)


def test_doctor_with_no_cache_yet(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("METAEMB_CACHE", str(tmp_path / "none"))
    code, out, err = run_cli(["doctor"], capsys)
    assert code == 0, err
    assert f"cache {tmp_path / 'none'}: not created yet" in out.splitlines()


def test_doctor_says_a_cache_folder_that_cannot_be_created(monkeypatch, capsys):
    """METAEMB_CACHE=/dev/null/x was reported as "not created yet" (H19 F10)."""
    monkeypatch.setenv("METAEMB_CACHE", "/dev/null/x")
    code, out, err = run_cli(["doctor"], capsys)
    assert code == 0, err
    said = " ".join(out.split())
    assert (
        "cache folder problem: '/dev/null/x' cannot be created: '/dev/null' is not a folder" in said
    )


def test_doctor_reports_a_strict_plugin_failure_instead_of_crashing(capsys, monkeypatch):
    """METAEMB_STRICT_PLUGINS=1 turns a broken plugin into an error of state() itself: doctor,
    the command for bug reports, says it in one line (it raised KeyError 'summary')."""
    from metaemb.core.errors import PluginError

    def broken():
        raise PluginError("plugin 'brokenplug' failed: its register_scorers hook raised boom")

    monkeypatch.setattr(manager, "state", broken)
    for args in (["doctor"], ["doctor", "--json"]):
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        assert "plugins failed to load: PluginError: plugin 'brokenplug' failed" in out
