"""`metaemb doctor`: the environment in one screen (or `--json`), for bug reports.

Versions, CUDA devices, which optional extras import, the cache folder and its size, and the
plugins that loaded or failed. It never fails: anything it cannot find is reported as such.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer

CORE_PACKAGES = ("torch", "torchvision", "torchaudio", "numpy", "scipy", "pluggy", "typer")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _loadable(dist: str) -> str | None:
    """The installed version, marked when the package is there but does not import (a
    torchaudio built for another torch fails to load its compiled library)."""
    version = _version(dist)
    if version is None:
        return None
    try:
        importlib.import_module(dist if dist != "torchaudio" else "torchaudio.functional")
    except Exception as exc:
        return f"{version} (installed, but it does not load: {type(exc).__name__})"
    return version


def _folder_size(root: Path) -> tuple[int, int]:
    """(bytes, files) under root; unreadable entries are skipped (this is a report, not a check)."""
    total = files = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
                files += 1
            except OSError:
                pass
    return total, files


def _cuda() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "available": torch.cuda.is_available(),
        "version": torch.version.cuda,
        "devices": [],
    }
    if info["available"]:
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    info["mps"] = bool(mps is not None and mps.is_available())
    return info


def _plugins() -> dict[str, Any]:
    from metaemb.core.plugin.manager import disabled_plugins, state

    try:
        st = state()
        loaded = [{"name": p.name, "version": p.version, "module": p.module} for p in st.plugins()]
        failed = [{"name": f.name, "error": f.error, "skipped": f.skipped,
                   "summary": f.summary()} for f in st.failed]  # fmt: skip
    except Exception as exc:  # METAEMB_STRICT_PLUGINS=1 with a broken plugin, or worse
        error = f"{type(exc).__name__}: {exc}"
        loaded = []
        failed = [{"name": "?", "error": error, "skipped": "", "summary": f"plugins failed to load: {error}"}]  # fmt: skip
    return {"loaded": loaded, "failed": failed, "disabled": sorted(disabled_plugins())}


def _cache() -> dict[str, Any]:
    try:
        from metaemb.core.paths import default_cache_dir

        cache = default_cache_dir()
    except Exception as exc:  # report a broken install instead of failing the report
        return {"path": None, "exists": False, "bytes": 0, "files": 0, "error": repr(exc)}
    size, files = _folder_size(cache) if cache.is_dir() else (0, 0)
    found = {"path": str(cache), "exists": cache.is_dir(), "bytes": size, "files": files}
    if cache.exists() and not cache.is_dir():
        found["error"] = f"'{cache}' is a file, not a folder; point METAEMB_CACHE at a folder"
    elif not cache.exists():  # would it be created? /dev/null/x would not
        above = next(p for p in cache.parents if p.exists())
        if not above.is_dir():
            found["error"] = (f"'{cache}' cannot be created: '{above}' is not a folder; point "
                              "METAEMB_CACHE at a folder")  # fmt: skip
    return found


def environment() -> dict[str, Any]:
    """Everything `metaemb doctor` reports, as plain data."""
    import metaemb
    from metaemb.core.optional import OPTIONAL, available

    extras: dict[str, dict[str, str | None]] = {}
    for module, (extra, _dist) in OPTIONAL.items():
        extras.setdefault(extra, {})[module] = available(module)
    return {
        "metaemb": metaemb.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: _loadable(p) for p in CORE_PACKAGES},
        "cuda": _cuda(),
        "extras": extras,
        "cache": _cache(),
        "plugins": _plugins(),
    }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show versions, CUDA devices, installed extras, the cache folder and plugins (for bug reports)."""
    env = environment()
    if as_json:
        typer.echo(json.dumps(env, indent=2))
        return
    lines = [f"metaemb {env['metaemb']}", f"python {env['python']} ({env['platform']})"]
    lines += [f"{p} {v or 'not installed'}" for p, v in env["packages"].items()]
    cuda = env["cuda"]
    if cuda["available"]:
        lines.append(f"CUDA {cuda['version']}: {', '.join(cuda['devices'])}")
    else:
        lines.append(f"CUDA not available (torch built for CUDA {cuda['version']})")
    lines.append(f"MPS {'available' if cuda['mps'] else 'not available'}")
    for extra, mods in env["extras"].items():
        parts = [f"{m} {v}" if v else f"{m} missing" for m, v in mods.items()]
        ok = all(mods.values())
        hint = "" if ok else f"  (pip install 'metaemb[{extra}]')"
        lines.append(f"extra [{extra}]: {', '.join(parts)}{hint}")
    c = env["cache"]
    if c.get("error"):
        lines.append(f"cache folder problem: {c['error']}")
    else:
        size = f"{_human(c['bytes'])} in {c['files']} files" if c["exists"] else "not created yet"
        lines.append(f"cache {c['path']}: {size}")
    pl = env["plugins"]
    lines.append("plugins: " + ", ".join(f"{p['name']} {p['version']}" for p in pl["loaded"]))
    lines += [f["summary"] for f in pl["failed"]]
    if pl["disabled"]:
        lines.append("plugins disabled (METAEMB_DISABLE_PLUGINS): " + ", ".join(pl["disabled"]))
    for line in lines:
        typer.echo(line)
