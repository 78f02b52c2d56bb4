"""Indexes of WebDataset-style tar shards: which samples a shard holds and where their bytes are.

A shard is a plain (uncompressed) tar file. A sample is a run of consecutive members sharing a
key: the member name up to the first dot of its last path component (`a/xyz.jpg` and `a/xyz.cls`
are the sample `a/xyz`, extensions `jpg` and `cls`), the rule of WebDataset. Each sample has one
data member (an extension the folder reads) and one label member naming its identity:

- `.cls`: an integer class, written as a 7-digit identity (`3` → `0000003`, as RecordIO folders
  name them, so a corpus converted between the two formats keeps its identity names);
- `.txt` (or any other text extension): the identity as one line of text;
- `.json`: an object whose `json_key` entry is the identity (an integer is padded as `.cls`).

Indexing reads every tar header (seeking over the data) and the small label members once. The
result — per sample: data offset, size, extension, identity, key — is cached as one text file
per shard in `<cache>/tar-index/`, named by the shard's real path and the label settings, and
stamped with the shard's size and mtime: a shard that changes is indexed again, the others are
reused. A tar that ends without its end-of-archive blocks, or whose headers break off, is refused
(Python's tarfile would silently stop there and lose the rest of the shard).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaemb.core.errors import DataError, first_few

FORMAT = 2  # bump when the index rules change: old index files are then rebuilt (2: classes ≥ 0, one data member per sample)
BLOCK = 512
COMPRESSED = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
_SPECIAL = re.compile(r"[{}*?\[]")


# -- listing shards -----------------------------------------------------------------------------
def expand_braces(pattern: str) -> list[str]:
    """Bash/WebDataset brace expansion: `a-{000..002}.tar` → a-000.tar, a-001.tar, a-002.tar;
    `{train,val}.tar` → train.tar, val.tar. Ranges are zero-padded when a bound is; several and
    nested braces expand in order; duplicates are dropped."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    r = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        pad = any(len(g.lstrip("-")) > 1 and g.lstrip("-")[0] == "0" for g in r.groups())
        width = max(len(r.group(1)), len(r.group(2))) if pad else 0
        step = 1 if hi >= lo else -1
        choices = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:
        choices = ["\0" + body + "\1"]  # not a brace expression: kept literally
    out: list[str] = []
    for c in choices:
        for p in expand_braces(head + c + tail):
            p = p.replace("\0", "{").replace("\1", "}")
            if p not in out:
                out.append(p)
    return out


def list_shards(root: Path, pattern: str = "*.tar") -> tuple[Path, list[Path]]:
    """(base folder, shard paths) selected by `root`: a folder (its shards matching `pattern`,
    sorted), one `.tar` file, or a brace/glob pattern (in the pattern's order)."""
    text = str(root)
    if root.is_dir():
        base, full = root, str(root / pattern)
    elif _SPECIAL.search(text) or text.endswith(".tar") or root.is_file():
        parts = Path(text).parts
        n = next((i for i, p in enumerate(parts) if _SPECIAL.search(p)), len(parts) - 1)
        base, full = Path(*parts[:n]) if n else Path("."), text
    else:
        raise DataError(
            f"data path '{root}' does not exist: give a folder of .tar shards, one .tar file, or "
            "a pattern such as 'shards/train-{000000..000099}.tar'."
        )
    shards: list[Path] = []
    missing: list[str] = []
    for p in expand_braces(full):
        if re.search(r"[*?\[]", p):
            shards.extend(Path(g) for g in sorted(glob.glob(p)) if os.path.isfile(g))
        elif os.path.isfile(p):
            shards.append(Path(p))
        else:
            missing.append(p)
    if missing:
        shown = first_few(missing)
        raise DataError(f"{len(missing)} shard(s) of '{root}' do not exist: {shown}.")
    if not shards:
        near = sorted(glob.glob(str(base / "*.tar.*")) + glob.glob(str(base / "*.tgz")))
        hint = (
            f" '{near[0]}' looks compressed: random access needs plain tar, so decompress the "
            "shards (e.g. `gunzip *.tar.gz`)."
            if near
            else " Make shards with `tar` (see docs/distributed.md)."
        )
        raise DataError(f"no tar shards match '{full}'.{hint}")
    return base, list(dict.fromkeys(shards))


# -- one shard's index --------------------------------------------------------------------------
@dataclass
class ShardIndex:
    """The samples of one shard, in member order."""

    keys: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    exts: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class LabelRules:
    """Which members are data and which name the identity (the folder's options)."""

    data: tuple[str, ...]  # extensions of data members, preferred first (lower case, no dot)
    label: tuple[str, ...]  # extensions of label members, tried in order
    json_key: str = "identity"

    def digest(self) -> str:
        return json.dumps([FORMAT, self.data, self.label, self.json_key])


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name by WebDataset's rule, or None without an extension.
    The key is normalised (`./a//b` → `a/b`, as `tar -C dir .` writes names); `..` stays."""
    m = re.match(r"^((?:.*/|)[^./][^./]*)\.([^/]*)$", name)
    if m is None:
        return None
    key = "/".join(p for p in m.group(1).split("/") if p not in ("", "."))
    return key, m.group(2).lower()


def check_identity(identity: str, where: str) -> str:
    identity = identity.strip()
    if not identity or "/" in identity or identity in (".", "..") or re.search(r"[\t\n\r]", identity):  # fmt: skip
        raise DataError(
            f"{where} names the identity {identity!r}, which cannot be an identity name (empty, "
            "or holding '/', a tab or a line break); write a plain name or an integer class."
        )
    return identity


def parse_label(ext: str, data: bytes, json_key: str, where: str) -> str:
    """The identity a label member names (rules in the module docstring)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"label member {where} is not UTF-8 text.") from None
    if ext == "json":
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise DataError(f"label member {where} is not valid JSON ({exc}).") from None
        if not isinstance(obj, dict) or json_key not in obj:
            keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise DataError(
                f"label member {where} has no key '{json_key}' (it holds: {keys}); set the "
                "folder's json_key option to the key that names the identity."
            )
        value = obj[json_key]
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, int) and value < 0):  # fmt: skip
            raise DataError(f"label member {where}: '{json_key}' is {value!r}, not a name or integer ≥ 0.")  # fmt: skip
        return f"{value:07d}" if isinstance(value, int) else check_identity(value, where)
    if ext == "cls":
        try:
            number = int(text.strip())
        except ValueError:
            raise DataError(f"label member {where} holds {text.strip()[:40]!r}, not an integer class.") from None  # fmt: skip
        if number < 0:  # many tools write -1 for "unlabelled"
            raise DataError(f"label member {where} holds {number}, not a class number (≥ 0); an unlabelled sample cannot train.")  # fmt: skip
        return f"{number:07d}"
    return check_identity(text, where)


def _check_plain_tar(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, name in COMPRESSED.items():
        if head.startswith(magic):
            raise DataError(
                f"shard '{path}' is {name}-compressed; random access needs a plain tar. "
                f"Decompress it (e.g. `gunzip`/`unzstd`) and keep the .tar."
            )


def _check_end(path: Path, stop: int, last: str) -> None:
    """tarfile stops quietly at a broken or missing header: the end-of-archive block must be
    where it stopped, or the shard is truncated or corrupt."""
    with open(path, "rb") as f:
        f.seek(stop)
        end = f.read(BLOCK)
    if len(end) < BLOCK or any(end):
        what = "ends" if len(end) < BLOCK else "has an unreadable header"
        raise DataError(
            f"shard '{path}' {what} at byte {stop}, {last}, without tar's end-of-archive "
            "blocks: it is truncated or corrupt (an interrupted copy or write?). Re-copy or "
            "rebuild it."
        )


def index_shard(path: Path, rules: LabelRules) -> ShardIndex:
    """Read the headers (and label members) of one shard; DataError for a truncated or corrupt
    tar, a sample without a data or label member, or a key used twice."""
    _check_plain_tar(path)
    out = ShardIndex()
    seen: set[str] = set()
    group: list[tarfile.TarInfo] = []
    key = None
    size = os.path.getsize(path)

    def close(members: list[tarfile.TarInfo], k: str, tf: tarfile.TarFile) -> None:
        exts = [split_name(m.name)[1] for m in members]  # type: ignore[index]
        data = next((e for e in rules.data if e in exts), None)
        label = next((e for e in rules.label if e in exts), None)
        found = ", ".join("." + e for e in exts)
        datas = [e for e in exts if e in rules.data]
        if len(datas) > 1:  # one would be used and the other dropped without a word
            raise DataError(
                f"shard '{path}': sample '{k}' has {len(datas)} data members ({found}); a "
                "sample is one file and its label. Give the others keys of their own."
            )
        if data is None:
            raise DataError(
                f"shard '{path}': sample '{k}' has no data member ({found} found; this folder reads "
                f"{', '.join('.' + e for e in rules.data)})."
            )
        if label is None:
            raise DataError(
                f"shard '{path}': sample '{k}' is missing its label ({found} found; expected one "
                f"of {', '.join('.' + e for e in rules.label)} naming its identity)."
            )
        if k in seen:
            raise DataError(f"shard '{path}': sample key '{k}' appears twice (not consecutively).")
        if re.search(r"[\t\n\r]", k):
            raise DataError(f"shard '{path}': sample key {k!r} holds a tab or a line break.")
        seen.add(k)
        lm, dm = members[exts.index(label)], members[exts.index(data)]
        raw = tf.extractfile(lm).read()  # type: ignore[union-attr]
        out.identities.append(parse_label(label, raw, rules.json_key, f"'{path}#{lm.name}'"))
        out.keys.append(k)
        out.exts.append(data)
        out.offsets.append(dm.offset_data)
        out.sizes.append(dm.size)

    last = "at its first member"
    try:
        with tarfile.open(path, mode="r:") as tf:
            while True:
                m = tf.next()
                if m is None:
                    break
                last = f"after member '{m.name}'"
                if not m.isfile():
                    continue
                parts = split_name(m.name)
                if parts is None:
                    continue  # no extension: not part of any sample (WebDataset skips these too)
                if ".." in parts[0].split("/"):
                    raise DataError(f"shard '{path}': member name '{m.name}' holds '..'.")
                if m.offset_data + m.size > size:
                    raise tarfile.ReadError("unexpected end of data")
                if parts[0] != key and group:
                    close(group, key, tf)  # type: ignore[arg-type]
                    group = []
                key = parts[0]
                group.append(m)
            _check_end(path, tf.offset, last)  # before the last group: where the reading stopped
            if group:
                close(group, key, tf)  # type: ignore[arg-type]
    except tarfile.ReadError as exc:
        raise DataError(
            f"shard '{path}' is truncated or corrupt {last} ({exc}); re-copy or rebuild it "
            "(a shard must be a plain, complete tar file)."
        ) from None
    if not out.keys:
        raise DataError(f"shard '{path}' holds no samples.")
    return out


# -- the cache ----------------------------------------------------------------------------------
def _stamp(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def index_file(cache: Path, shard: Path, rules: LabelRules) -> Path:
    key = json.dumps([os.path.realpath(shard), rules.digest()])
    return cache / "tar-index" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".tsv")


def _read_cached(target: Path, shard: Path, stamp: list[int], rules: LabelRules) -> ShardIndex | None:  # fmt: skip
    try:
        with open(target, encoding="utf-8") as f:
            header: dict[str, Any] = json.loads(f.readline())
            if header.get("stamp") != stamp or header.get("rules") != rules.digest():
                return None
            if header.get("shard") != os.path.realpath(shard):
                return None
            rows = f.read().split("\n")
    except (OSError, ValueError):
        return None
    if rows and rows[-1] == "":
        rows.pop()
    if len(rows) != header.get("count"):
        return None
    out = ShardIndex()
    try:
        for row in rows:
            offset, size, ext, identity, key = row.split("\t")
            out.offsets.append(int(offset))
            out.sizes.append(int(size))
            out.exts.append(ext)
            out.identities.append(identity)
            out.keys.append(key)
    except ValueError:
        return None
    return out


def _write(target: Path, shard: Path, stamp: list[int], rules: LabelRules, idx: ShardIndex) -> None:  # fmt: skip
    header = {"format": FORMAT, "shard": os.path.realpath(shard), "stamp": stamp,
              "rules": rules.digest(), "count": len(idx.keys)}  # fmt: skip
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
            for row in zip(idx.offsets, idx.sizes, idx.exts, idx.identities, idx.keys, strict=True):
                f.write("\t".join(map(str, row)) + "\n")
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)  # a cache that cannot be written is rebuilt next time


def cached_index(shard: Path, rules: LabelRules, cache: Path | None) -> ShardIndex | None:
    """The shard's cached index when its size and mtime are those it was indexed at."""
    if cache is None:
        return None
    return _read_cached(index_file(cache, shard, rules), shard, _stamp(shard), rules)


def build_index(shard: Path, rules: LabelRules, cache: Path | None) -> ShardIndex:
    """Index the shard and cache the result (best effort, written atomically)."""
    stamp = _stamp(shard)
    idx = index_shard(shard, rules)
    if cache is not None and _stamp(shard) == stamp:  # not rewritten while we read it
        _write(index_file(cache, shard, rules), shard, stamp, rules, idx)
    return idx


def index_workers(missing: int) -> int:
    """Processes that index shards in parallel: $METAEMB_INDEX_WORKERS, else one per CPU core
    (shared by the ranks torchrun started on this machine), at most 8, and only for 8 or more
    shards to index (a process pool costs more than it saves on a few)."""
    env = os.environ.get("METAEMB_INDEX_WORKERS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            from metaemb.core.errors import ConfigError

            raise ConfigError(f"METAEMB_INDEX_WORKERS must be a whole number ≥ 1, got '{env}'.")
        return max(1, min(int(env), missing))
    if missing < 8:
        return 1
    cores = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(8, cores, missing))


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def load_all(shards: list[Path], rules: LabelRules, cache: Path | None) -> tuple[list[ShardIndex], int]:  # fmt: skip
    """(every shard's index, how many came from the cache); the others are indexed in parallel
    processes when there are many (`index_workers`), each caching its result."""
    found = [cached_index(p, rules, cache) for p in shards]
    missing = [i for i, f in enumerate(found) if f is None]
    workers = index_workers(len(missing)) if _can_fork() else 1
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork: spawn and forkserver re-import the caller's main module, which a script
        # without a `__main__` guard cannot survive; the children run only tarfile code.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            jobs = [pool.submit(build_index, shards[i], rules, cache) for i in missing]
            for i, job in zip(missing, jobs, strict=True):
                found[i] = job.result()
    else:
        for i in missing:
            found[i] = build_index(shards[i], rules, cache)
    return found, len(shards) - len(missing)  # type: ignore[return-value]
