"""A SampleFolder over WebDataset-style tar shards, read by random access (no webdataset package).

Corpora too large for one file per sample ship as `shard-000000.tar`, `shard-000001.tar`, …;
each sample is a run of consecutive members sharing a key (`xyz.jpg` + `xyz.cls`), see
tar_index.py for the rules and the cached index. A modality plugin subclasses `TarShardFolder`
with the extensions of its data members and `decode` (bytes → the raw sample it yields).

Selection (`--data`): a folder of shards (option `shards`, default `*.tar`), one `.tar` file,
or a pattern: `shards/train-{000000..000099}.tar`. Samples get virtual paths
`<identity>/<shard>/<key>` (shard relative to the shard folder), so splits by identity, trial
lists and skipped-sample lists work as for folders of files.

Reading is map-style: `load` looks the path up in the index and reads the data member's bytes
with one positioned read (`os.pread`). Each process keeps its own open shard handles (at most
MAX_OPEN, least recently used closed first) and drops those it inherited across a fork, so
DataLoader workers open each shard once. The engine's batch samplers hand DDP rank r of w a
disjoint share of the batches of the whole index, so each rank reads only its samples' byte
ranges, from whichever shards hold them: no shard-to-rank assignment is needed, and every
sampler (P×K, pairs, …) works unchanged. Sequential streaming (WebDataset's IterableDataset)
is not what this does: random access suits local disks and the page cache; on a network file
system with slow seeks, copy the shards to local disk first.
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from metaemb.core.data.tar_index import LabelRules, list_shards, load_all
from metaemb.core.errors import ConfigError, DataError
from metaemb.core.paths import default_cache_dir
from metaemb.core.plugin.interfaces import Sample, SampleFolder

MAX_OPEN = 64  # open shard handles per process


class ShardHandles:
    """Open shard files of this process, by shard number (reopened after a fork)."""

    def __init__(self, paths: Sequence[Path], stamps: Sequence[tuple[int, int]]) -> None:
        self.paths = list(paths)
        self.stamps = list(stamps)
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths, "stamps": self.stamps, "_fds": OrderedDict(), "_pid": -1}

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker: its copies of the parent's handles go
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds, self._pid = OrderedDict(), os.getpid()
        fd = self._fds.get(shard)
        if fd is not None:
            self._fds.move_to_end(shard)
            return fd
        path = self.paths[shard]
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise DataError(f"cannot open shard '{path}': {exc}.") from None
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != self.stamps[shard]:
            os.close(fd)
            raise DataError(
                f"shard '{path}' changed after it was indexed (size or mtime differ); restart "
                "so it is indexed again."
            )
        self._fds[shard] = fd
        while len(self._fds) > MAX_OPEN:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def read(self, shard: int, offset: int, size: int, where: str) -> bytes:
        data = os.pread(self._fd(shard), size, offset)
        if len(data) < size:
            raise DataError(
                f"'{where}': the shard ends before this member's {size} bytes at byte {offset} "
                "(truncated after indexing?); re-copy the shard."
            )
        return data


class TarShardFolder(SampleFolder):
    """Samples stored as members of tar shards; subclasses set `extensions` (data members,
    preferred first) and implement `decode`."""

    internal: ClassVar[frozenset[str]] = frozenset({"samples"})

    def __init__(
        self,
        root: str | Path,
        shards: str = "*.tar",
        label: str = "cls,txt,json",
        json_key: str = "identity",
        cache_dir: Path | None = None,
        samples: Sequence[Sample] | None = None,
    ) -> None:
        labels = tuple(e.strip().lower().lstrip(".") for e in str(label).split(",") if e.strip())
        if not labels:
            raise ConfigError("folder.label: name at least one label extension, e.g. 'cls,txt,json'.")  # fmt: skip
        data = tuple(e.lower().lstrip(".") for e in self.extensions)
        if set(labels) & set(data):
            raise ConfigError(f"folder.label: {', '.join(labels)} includes a data extension ({', '.join(data)}).")  # fmt: skip
        self.shard_pattern = shards
        self.rules = LabelRules(data, labels, json_key)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._rows: dict[str, int] | None = None
        self.index_hits = 0  # shards whose index came from the cache (for tests and logs)
        super().__init__(root, samples)

    # -- the index ------------------------------------------------------------------------
    def _scan(self) -> list[Sample]:
        base, paths = list_shards(self.root, self.shard_pattern)
        names, stamps, shard_of, offsets, sizes, exts = [], [], [], [], [], []
        samples: list[Sample] = []
        rows: dict[str, int] = {}
        indexes, self.index_hits = load_all(paths, self.rules, self.cache_dir)
        for i, (path, idx) in enumerate(zip(paths, indexes, strict=True)):
            st = os.stat(path)
            stamps.append((st.st_size, st.st_mtime_ns))
            name = os.path.relpath(path, base).replace(os.sep, "/")
            names.append(name)
            for key, identity in zip(idx.keys, idx.identities, strict=True):
                rel = f"{identity}/{name}/{key}"
                rows[rel] = len(samples)
                samples.append(Sample(rel, identity, -1))
            shard_of.extend([i] * len(idx.keys))
            offsets.extend(idx.offsets)
            sizes.extend(idx.sizes)
            exts.extend(idx.exts)
        self.shard_names = names
        self.handles = ShardHandles(paths, stamps)
        self._shard = np.asarray(shard_of, dtype=np.int32)
        self._offset = np.asarray(offsets, dtype=np.int64)
        self._size = np.asarray(sizes, dtype=np.int64)
        self._ext_names = sorted(set(exts))
        codes = {e: i for i, e in enumerate(self._ext_names)}
        self._ext = np.asarray([codes[e] for e in exts], dtype=np.uint8)
        self._rows = rows
        return samples

    def source_of(self, sample: Sample) -> str:
        """`<shard file>#<key>`, resolved: a sample is no file of its own, so a gallery knows
        it by its shard and key (the shard's existence says whether it is still there)."""
        if self._rows is None:
            self._scan()
        row = self._rows.get(sample.path) if self._rows is not None else None
        if row is None:
            return super().source_of(sample)
        index = int(self._shard[row])
        shard = Path(self.handles.paths[index]).resolve()
        return f"{shard}#{self._key_of(sample, index)}"

    def _key_of(self, sample: Sample, shard: int) -> str:
        """The member key of a sample path `<identity>/<shard name>/<key>` (a key may hold '/':
        `alice/0001` in a tar of an identity folder)."""
        prefix = f"{sample.identity}/{self.shard_names[shard]}/"
        return sample.path[len(prefix) :] if sample.path.startswith(prefix) else sample.path

    def session_of(self, sample: Sample) -> str:
        """The folders of a sample's key (`id10001/1zcIwhmdeo4/00001` → `id10001/1zcIwhmdeo4`
        minus its identity when the key starts with it): the shard itself is no session."""
        if self._rows is None:
            self._scan()
        row = self._rows.get(sample.path) if self._rows is not None else None
        key = self._key_of(sample, int(self._shard[row])) if row is not None else sample.path
        folders = key.split("/")[:-1]
        if folders and folders[0] == sample.identity:
            folders = folders[1:]
        return "/".join(folders)

    def locate(self, path: str | Path) -> tuple[int, str] | None:
        """(row in the index, member name as `<shard>#<key>.<ext>`) of a sample path, or None."""
        if self._rows is None:
            self._scan()
        text, root = os.fspath(path), os.fspath(self.root)
        if root == ".":
            rel = text
        elif text.startswith(
            root + os.sep
        ):  # string ops: a Path round trip costs more than the read
            rel = text[len(root) + 1 :]
        else:
            try:
                rel = Path(path).relative_to(self.root).as_posix()
            except ValueError:
                rel = text
        if os.sep != "/":
            rel = rel.replace(os.sep, "/")
        row = self._rows.get(rel)  # type: ignore[union-attr]
        if row is None:
            return None
        shard = int(self._shard[row])
        key = rel.split("/", 1)[1][len(self.shard_names[shard]) + 1 :]
        ext = self._ext_names[int(self._ext[row])]
        return row, f"{self.handles.paths[shard]}#{key}.{ext}"

    def read_bytes(self, path: str | Path) -> tuple[bytes, str, str]:
        """(the data member's bytes, its extension, a name for messages) of a sample path."""
        return self._read(self.locate(path), path)

    def _read(self, found: tuple[int, str] | None, path: str | Path) -> tuple[bytes, str, str]:
        if found is None:
            raise DataError(f"no sample '{path}' in the shards of '{self.root}' (see its index).")
        row, where = found
        shard = int(self._shard[row])
        data = self.handles.read(shard, int(self._offset[row]), int(self._size[row]), where)
        return data, self._ext_names[int(self._ext[row])], where

    # -- loading --------------------------------------------------------------------------
    def load(self, path: Path) -> Any:
        found = self.locate(path) if self._rows is not None else None
        if found is None and Path(path).is_file():
            # Loose files (`metaemb embed` of files with a run trained on shards) decode directly.
            return self.decode_file(Path(path))
        data, ext, where = self._read(found or self.locate(path), path)
        return self.decode(data, ext, where)

    @abc.abstractmethod
    def decode(self, data: bytes, ext: str, where: str) -> Any:
        """The raw sample from a data member's bytes; DataError naming `where` if unreadable."""

    def decode_file(self, path: Path) -> Any:
        """The raw sample of a loose file (default: its bytes through `decode`)."""
        return self.decode(path.read_bytes(), path.suffix.lower().lstrip("."), str(path))
