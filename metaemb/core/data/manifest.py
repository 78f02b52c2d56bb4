"""A cached scan of a SampleFolder tree: a folder of a million files is listed once, then reused.

The manifest records the sample paths a scan found, the warnings it gave, and the mtime of
every directory it walked (the data root included). Adding, removing or renaming an entry in a
directory changes that directory's mtime, so checking the directories — thousands of `stat`
calls for a million files in a few thousand identity folders — proves the listing still holds;
any difference, a missing directory, another metaemb scan version, other file extensions or
another SampleFolder class means a full rescan. Changing a file's contents does not change the
listing (and is what the frontend caches key on). A directory changed within two seconds
before the scan is not trusted (coarse file-system timestamps), so no manifest is written then.

Manifests live in `<cache>/manifests/` (cache: $METAEMB_CACHE or ~/.cache/metaemb), one per
(real data root, folder class, extensions), written atomically. Trees smaller than
`METAEMB_MANIFEST_MIN_FILES` (default 5000) are scanned every time: that is already fast, and
it keeps caches of tests and toy folders out of the cache folder. `METAEMB_MANIFEST=0` turns
the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from metaemb.core.errors import ConfigError

FORMAT = 2  # bump when the scan's rules change: old manifests are then ignored (2: hard links)
DEFAULT_MIN_FILES = 5000
RACY_NS = 2_000_000_000  # directories changed within 2 s of a scan are rescanned next time


def _cache_root() -> Path:
    from metaemb.core.paths import default_cache_dir

    return default_cache_dir() / "manifests"


def enabled() -> bool:
    from metaemb.core.env import env_flag

    return env_flag("METAEMB_MANIFEST", default=True)


def min_files() -> int:
    value = os.environ.get("METAEMB_MANIFEST_MIN_FILES", "").strip()
    if not value:
        return DEFAULT_MIN_FILES
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ConfigError(
            f"METAEMB_MANIFEST_MIN_FILES must be a whole number of files (0 or more), got '{value}'."
        )
    return number


def manifest_path(root: Path, kind: str, exts: set[str]) -> Path:
    """Where the manifest of `root` scanned by folder class `kind` for `exts` lives."""
    key = json.dumps([FORMAT, os.path.realpath(root), kind, sorted(exts)])
    return _cache_root() / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".manifest")


def _mtimes(dirs: list[str]) -> list[int] | None:
    out = []
    for d in dirs:
        try:
            out.append(os.stat(d).st_mtime_ns)
        except OSError:
            return None
    return out


def load(root: Path, kind: str, exts: set[str]) -> list[str] | None:
    """The cached relative sample paths, if the tree is unchanged since they were scanned;
    the scan's warnings are given again. None when there is no valid manifest."""
    if not enabled():
        return None
    path = manifest_path(root, kind, exts)
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            header = json.loads(f.readline())
            if header.get("format") != FORMAT or header.get("root") != os.path.realpath(root):
                return None
            if _mtimes(header["dirs"]) != header["mtimes"]:
                return None
            paths = f.read().split("\n")
    except (OSError, ValueError, KeyError):
        return None
    if paths and paths[-1] == "":
        paths.pop()
    if len(paths) != header.get("count"):
        return None  # a truncated file (it is written atomically, but be safe)
    for message in header.get("warnings", []):
        warnings.warn(message, stacklevel=4)
    return paths


def save(
    root: Path,
    kind: str,
    exts: set[str],
    paths: list[str],
    dirs: list[str],
    notes: list[str],
    started_ns: int,
) -> None:
    """Write the manifest atomically (best effort: a cache that cannot be written is skipped).

    A directory modified less than RACY_NS before the scan started is not trusted (file systems
    with coarse timestamps could hide a later change in the same tick): no manifest then."""
    if not enabled() or len(paths) < min_files():
        return
    if any("\n" in p for p in paths):
        return  # a name with a newline cannot be a line; such a tree is rescanned each time
    target = manifest_path(root, kind, exts)
    mtimes = _mtimes(dirs)
    if mtimes is None or max(mtimes) > started_ns - RACY_NS:
        return
    header = {
        "format": FORMAT,
        "root": os.path.realpath(root),
        "kind": kind,
        "extensions": sorted(exts),
        "count": len(paths),
        "dirs": dirs,
        "mtimes": mtimes,
        "warnings": notes,
    }
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(json.dumps(header) + "\n")
            f.write("\n".join(paths) + "\n")
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)


def cached_scan(
    root: Path, kind: str, exts: set[str], scan: Callable[[], tuple[list[str], list[str]]]
) -> list[str]:
    """Relative sample paths of `root`: from the manifest when the tree is unchanged, else from
    `scan()` → (paths, real paths of every directory it listed), whose warnings are recorded."""
    cached = load(root, kind, exts)
    if cached is not None:
        return cached
    started = time.time_ns()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths, dirs = scan()
    notes = [str(w.message) for w in caught]
    for w in caught:  # give the warnings as the scan would have
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    save(root, kind, exts, paths, [os.path.realpath(root), *dirs], notes, started)
    return paths
