"""Enrollment store for open-set identification (re-identification, watch lists).

A Gallery maps identity names to the samples enrolled for them (point embeddings or Gaussian
meta-embeddings) and pools each identity into one model: the mean of L2-normalised embeddings, or
the sum of GME natural parameters. The samples themselves are kept, so enrollment can be extended
or shrunk later and any scorer can pool them its own way. A gallery belongs to the model that
embedded it (a digest of its weights), and refuses probes from any other model. Searching it is
gallery_search.py.

Files are plain `torch.save` dicts of tensors, strings and numbers (no pickled classes), written
atomically and read with `torch.load(weights_only=True)`. Semantics: docs/gallery.md.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

import metaemb
from metaemb.core.deploy.identity_names import NEW, check_new_name, nfc
from metaemb.core.deploy.stamp import (
    ModelStamp,
    embedding_kind,
    refuse_other_model,
    stored_parts,
)
from metaemb.core.errors import GalleryError, first_few, suggest
from metaemb.core.gme.algebra import GME, pool_by_index

if TYPE_CHECKING:
    from metaemb.core.deploy.gallery_search import SearchResult

FORMAT = "metaemb-gallery"
VERSION = 1


def _first_repeat(items: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


class Gallery:
    """Enrolled identities of one model: per-sample embeddings, owners, sources, pooled models."""

    def __init__(self, stamp: ModelStamp) -> None:
        self.stamp = stamp
        self.identities: list[str] = []
        self.sources: list[str] = []  # where each sample came from ("" when unknown)
        self._index: tuple[dict[str, int], dict[str, str]] | None = None
        # rows added since the last read, joined once when `data` or `owner` is next read:
        # one copy per enrollment, not one per identity (quadratic at 100 k identities)
        self._pending: list[tuple[dict[str, Tensor], Tensor]] = []
        self._owner = torch.zeros(0, dtype=torch.long)  # identity index of each sample
        # every file it was loaded from or saved to, as it was then (file signature, content
        # digest): a save over one refuses to drop what another writer (`metaemb enroll`)
        # wrote there meanwhile, and is not taken for a save over another gallery. The digest
        # is None while the contents are still those of the file (computed before a change,
        # or at a save: a reader never pays for it)
        self._known: dict[str, tuple[tuple[int, int, int] | None, str | None]] = {}
        # what searches reuse until the next change: pooled models (per scorer state), a
        # faiss index; a service then pays per probe, not per gallery (gallery_search.py)
        self.search_cache: dict[Any, Any] = {}
        shape = (0, stamp.dim, stamp.dim) if stamp.full else (0, stamp.dim)
        keys = ("a", "b") if stamp.kind == "gme" else ("embeddings",)
        self._data = {k: torch.zeros(shape if k == "b" else (0, stamp.dim)) for k in keys}

    @property
    def data(self) -> dict[str, Tensor]:
        """The stored sample tensors by name ("embeddings", or a GME's "a" and "b"). Replace
        them through this setter (or add/remove): a tensor edited in place is not seen by the
        pooled models searches keep."""
        self._join_pending()
        return self._data

    @data.setter
    def data(self, value: dict[str, Tensor]) -> None:
        """Replace the stored tensors (pending rows are joined first, then dropped with them)."""
        self._before_change()
        self._join_pending()
        self._data = value

    @property
    def owner(self) -> Tensor:
        """The identity index of each sample [num_samples]."""
        self._join_pending()
        return self._owner

    @owner.setter
    def owner(self, value: Tensor) -> None:
        """Replace the owners (pending rows are joined first)."""
        self._before_change()
        self._join_pending()
        self._owner = value

    def _join_pending(self) -> None:
        if self._pending:
            parts, owners = zip(*self._pending, strict=True)
            self._pending = []
            self._data = {k: torch.cat([v, *(p[k] for p in parts)]) for k, v in self._data.items()}
            self._owner = torch.cat([self._owner, *owners])

    # -- structure ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.identities)

    def __contains__(self, identity: object) -> bool:
        return identity in self.identities

    @property
    def num_samples(self) -> int:
        return int(self.owner.numel())

    def counts(self) -> Tensor:
        return torch.bincount(self.owner, minlength=len(self.identities))

    @property
    def samples(self) -> Tensor | GME:
        if self.stamp.kind == "gme":
            return GME(self.data["a"], self.data["b"])
        return self.data["embeddings"]

    def groups(self) -> list[list[int]]:
        """Sample indices of each identity, in identity order."""
        out: list[list[int]] = [[] for _ in self.identities]
        for i, o in enumerate(self.owner.tolist()):
            out[o].append(i)
        return out

    def pooled(self) -> tuple[Tensor | GME, Tensor]:
        """(one model per identity, samples per identity): the mean of L2-normalised embeddings
        (not renormalised), or the GME with summed natural parameters."""
        counts = self.counts()
        m = len(self.identities)
        if self.stamp.kind == "gme":
            return pool_by_index(self.samples, self.owner, m), counts
        x = torch.nn.functional.normalize(self.data["embeddings"], dim=1)
        sums = x.new_zeros(m, x.shape[1]).index_add_(0, self.owner, x)
        return sums / counts.clamp_min(1)[:, None].to(x.dtype), counts

    # -- enrollment --------------------------------------------------------------------
    def check(self, digest: str, where: str = "this checkpoint") -> None:
        """Refuse a model other than the one that enrolled the gallery."""
        refuse_other_model(
            digest,
            self.stamp.digest,
            given=where,
            verb="enrolled",
            what="the gallery",
            stamp=self.stamp.describe(),
            remedy="identify with the gallery's model, or enroll into a new gallery file with "
            "this one",
            error=GalleryError,
        )

    def check_embeddings(self, x: Any, what: str = "probes") -> None:
        kind, dim, _ = embedding_kind(x)
        if (kind, dim) != (self.stamp.kind, self.stamp.dim):
            raise GalleryError(
                f"this gallery belongs to another model: {what} are {kind} embeddings of "
                f"dimension {dim}, but the gallery holds {self.stamp.kind} embeddings of dimension "
                f"{self.stamp.dim} ({self.stamp.describe()}). Identify with the gallery's model, or "
                "enroll into a new gallery file with this one."
            )

    def add(self, identity: str, embeddings: Any, sources: Sequence[str] | None = None) -> int:
        """Enroll samples for `identity` (new or existing; a name differing from an enrolled
        one only in Unicode form is that one) → how many were added. Samples whose source is
        already enrolled for it are skipped, so re-enrolling a folder is idempotent."""
        self._before_change()
        check_new_name(identity)
        identity = self.named_as(identity)  # 'Zoë' typed in NFD is the enrolled NFC 'Zoë'
        self.check_embeddings(embeddings, f"embeddings for '{identity}'")
        n = len(embeddings)
        srcs = [str(s) for s in sources] if sources is not None else [""] * n
        if len(srcs) != n:
            raise GalleryError(f"got {n} embeddings but {len(srcs)} sources for '{identity}'")
        if not all(bool(torch.isfinite(v).all()) for v in stored_parts(embeddings).values()):
            raise GalleryError(f"embeddings for '{identity}' contain NaN or infinite values.")
        pos, known = self._lookup()
        keep: list[int] = []
        seen: set[str] = set()
        for i, s in enumerate(srcs):
            owner = known.get(s) if s else None
            if owner is not None and owner != identity:
                raise GalleryError(
                    f"'{s}' is already enrolled as '{owner}', not '{identity}'; remove "
                    f"'{owner}' first if it was enrolled under the wrong name."
                )
            if owner is None and s not in seen:
                keep.append(i)
                if s:
                    seen.add(s)
        if not keep:
            return 0
        if identity not in pos:
            pos[identity] = len(self.identities)
            self.identities.append(identity)
        known.update(dict.fromkeys(seen, identity))
        idx = torch.tensor(keep, dtype=torch.long)
        rows = {k: v[idx] for k, v in stored_parts(embeddings).items()}
        self._pending.append((rows, torch.full((len(keep),), pos[identity], dtype=torch.long)))
        self.sources += [srcs[i] for i in keep]
        return len(keep)

    def remove(self, identity: str) -> int:
        """Forget an identity and its samples → how many samples were removed."""
        self._before_change()
        if identity not in self.identities:
            hint = (
                suggest(identity, self.identities)
                or f" enrolled: {first_few(self.identities, 10)}."
            )
            raise GalleryError(f"identity '{identity}' is not enrolled;{hint}")
        j = self.identities.index(identity)
        keep = self.owner != j
        for k in self.data:
            self.data[k] = self.data[k][keep]
        self.sources = [s for s, kp in zip(self.sources, keep.tolist(), strict=True) if kp]
        owner = self.owner[keep]
        self.owner = owner - (owner > j).long()
        del self.identities[j]
        self._index = None
        return int((~keep).sum())

    def rename(self, old: str, new: str, merge: bool = False) -> int:
        """Give identity `old` the name `new`, keeping its samples (no file is read again: a
        service may have deleted them) → how many samples it has. With `merge`, `new` may be
        enrolled already: the two pool their samples, as one identity enrolled twice would."""
        self._before_change()
        if old not in self.identities:
            hint = suggest(old, self.identities) or f" enrolled: {first_few(self.identities, 10)}."
            raise GalleryError(f"identity '{old}' is not enrolled;{hint}")
        check_new_name(new, renaming=True)
        j = self.identities.index(old)
        if new == old:
            return int(self.counts()[j])
        alike = [i for i in self.identities if i != old and nfc(i) == nfc(new)]
        if (
            alike and new not in self.identities
        ):  # typed on another system: prints as the enrolled name, and is another
            raise GalleryError(
                f"{new!r} differs from the enrolled {alike[0]!r} only in Unicode form (NFC and "
                "NFD) and prints alike, so it would be a second identity that looks the same: "
                f"give the enrolled name exactly ({alike[0]!a}), with --merge (merge=True from Python) to pool."
            )
        if new in self.identities:
            k = self.identities.index(new)
            if not merge:
                raise GalleryError(
                    f"'{new}' is already enrolled ({int(self.counts()[k])} samples): pass "
                    f"--merge (merge=True from Python) to pool '{old}' into it, or choose another "
                    "name."
                )
            owner = torch.where(self.owner == j, k, self.owner)
            self.owner = owner - (owner > j).long()
            del self.identities[j]
            self._index = None
            return int(self.counts()[self.identities.index(new)])
        self.identities[j] = new
        self._index = None
        return int(self.counts()[j])

    def named_as(self, identity: str) -> str:
        """The enrolled name of `identity`: itself, or an enrolled name of the same Unicode
        form (NFC) when the folder's spelling differs (copied through macOS, NFD): one person,
        not a second identity that prints the same."""
        pos = self._lookup()[0]
        if identity in pos or identity.isascii():  # NFC leaves ASCII as it is
            return identity
        cached = getattr(self, "_forms", None)
        if cached is None or cached[0] is not pos or cached[1] != len(pos):
            forms = {nfc(n): n for n in reversed(self.identities)}  # the first enrolled wins
            self._forms = cached = (pos, len(pos), forms)
        return cached[2].get(nfc(identity), identity)

    def rename_sources(self, renamed: dict[str, str]) -> int:
        """Give samples recorded under an old source name (keys) their new one (values), as
        when what a sample is known by changes; returns how many changed."""
        self._before_change()
        new = [renamed.get(s, s) if s else s for s in self.sources]
        changed = sum(a != b for a, b in zip(new, self.sources, strict=True))
        if changed:
            self.sources, self._index = new, None
        return changed

    def enrolled_as(self, source: str) -> str | None:
        """The identity a sample file (its resolved path) is enrolled under, if any."""
        return self._lookup()[1].get(source)

    def _lookup(self) -> tuple[dict[str, int], dict[str, str]]:
        """(identity → index, source → identity), kept up to date by add and rebuilt after remove."""
        if self._index is None:
            pos = {name: i for i, name in enumerate(self.identities)}
            owners = self.owner.tolist()
            known = {s: self.identities[o] for s, o in zip(self.sources, owners, strict=True) if s}
            self._index = (pos, known)
        return self._index

    # -- files -------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> None:
        """Write atomically (temp file + rename); readers never see half a gallery. Saving over
        the file it was loaded from is refused when another writer changed that file since,
        and over another gallery unless `overwrite` (its identities would be gone)."""
        from metaemb.core.files import atomic_write_bytes

        real = os.path.realpath(path)
        _refuse_replacing_another_file(Path(path), real in self._known, overwrite)
        self._settle_known()  # unchanged since: the digest of the contents as they are
        pooled, counts = self.pooled()
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "metaemb_version": metaemb.__version__,
            "model": asdict(self.stamp),
            "identities": list(self.identities),
            "sources": list(self.sources),
            "owner": self.owner,
            "samples": dict(self.data),
            "pooled": {**stored_parts(pooled), "counts": counts},
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
        # checked last, after the seconds a large gallery takes to serialise: a writer that
        # finished meanwhile is seen (hold the lock from load to save to shut others out)
        read = self._known.get(real)
        if read is not None and _changed_since(real, read):
            raise GalleryError(
                f"gallery '{path}' was changed on disk since it was loaded (another enroll, "
                "unenroll or rename wrote it): saving over it would drop what that added. "
                "Load it again and repeat your changes, or save to another file; to keep other "
                "writers out meanwhile, hold its lock from load to save (docs/gallery.md, From "
                "Python)."
            )
        atomic_write_bytes(Path(path), data)
        self._known[real] = (_file_signature(real), None)

    def _before_change(self) -> None:
        """Every change goes through here: the known files' digest of the contents as they
        still are, and the search cache (pooled models per scorer) dropped."""
        self._settle_known()
        self.search_cache.clear()

    def _settle_known(self) -> None:
        """Before a change: the digest of the contents as the known files hold them."""
        pending = [path for path, (_, digest) in self._known.items() if digest is None]
        if pending:
            digest = self._fingerprint()
            for path in pending:
                self._known[path] = (self._known[path][0], digest)

    def _fingerprint(self) -> str:
        """A digest of everything another writer could change: the model stamp, identities,
        sources, owners and the sample tensors themselves (a re-enrollment keeps the names and
        counts but not the embeddings); hashed in place, without a copy."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        h.update(repr(sorted(asdict(self.stamp).items())).encode())
        for text in (self.identities, self.sources):
            h.update("\n".join(text).encode("utf-8", "surrogateescape") + b"\0")
        for name, t in [("owner", self.owner), *sorted(self.data.items())]:
            h.update(name.encode() + str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().numpy())  # the buffer itself: no copy
        return h.hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> Gallery:
        p = Path(path)
        if p.is_dir():
            raise GalleryError(
                f"'{p}' is a folder, not a gallery file; give the file name (e.g. "
                f"'{p / 'gallery.pt'}')."
            )
        if not p.is_file():
            from metaemb.core.files import not_a_file
            from metaemb.core.paths import refuse_looping_link

            refuse_looping_link(p, "gallery")

            if not_a_file(p):
                raise GalleryError(f"gallery '{p}' is {not_a_file(p)}, not a gallery file.")
            raise GalleryError(
                f"gallery '{p}' does not exist; create it with "
                f"`metaemb enroll CHECKPOINT --gallery {p} --data DIR`."
            )
        from metaemb.core.checkpoints import export_format, load_error_reason

        export = export_format(p)
        if export:  # best.torchscript.pt and staff.pt are both .pt
            raise GalleryError(
                f"'{p}' is a {export} export (from `metaemb export`), not a gallery: give the "
                "gallery file `metaemb enroll` wrote."
            )
        signature = _file_signature(p)  # before reading: a change while it is read shows too
        try:
            d = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise GalleryError(
                f"gallery '{p}' cannot be read ({load_error_reason(exc)}). Restore it from a "
                "copy, or enroll into a new gallery file."
            ) from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise GalleryError(f"'{p}' is not a metaemb gallery file.")
        if d.get("version") != VERSION:
            raise GalleryError(
                f"gallery '{p}' has format version {d.get('version')}; this metaemb reads "
                f"version {VERSION}. Enroll again with this metaemb."
            )
        try:
            g = cls(ModelStamp(**d["model"]))
            g.identities, g.sources = list(d["identities"]), list(d["sources"])
            g.owner = d["owner"].long()
            g.data = {k: d["samples"][k].float() for k in g.data}
            g._validate()
        except KeyError as exc:
            raise GalleryError(f"gallery '{p}' is damaged: it has no {exc} entry") from None
        except (TypeError, AttributeError, GalleryError) as exc:
            raise GalleryError(f"gallery '{p}' is damaged: {exc}") from None
        g._known = {os.path.realpath(p): (signature, None)}
        return g

    def _validate(self) -> None:
        names = self.identities
        odd = [x for x in names if not isinstance(x, str) or not x.strip() or x == NEW]
        if odd:
            raise GalleryError(f"identity names must be text other than '{NEW}', got {odd[0]!r}")
        twice = _first_repeat(names)
        if twice is not None:
            raise GalleryError(f"identity '{twice}' is listed twice (a hand edit?)")
        twice = _first_repeat(x for x in self.sources if x)
        if twice is not None:
            raise GalleryError(f"sample source '{twice}' is enrolled twice")
        n = self.num_samples
        sizes = {k: len(v) for k, v in self.data.items()}
        if any(s != n for s in sizes.values()) or len(self.sources) != n:
            raise GalleryError(f"{n} owners, {len(self.sources)} sources, samples {sizes}")
        if n and (int(self.owner.min()) < 0 or int(self.owner.max()) >= len(self.identities)):
            raise GalleryError("sample owners out of range")
        bad = [k for k, v in self.data.items() if not bool(torch.isfinite(v).all())]
        if bad:
            raise GalleryError(f"its stored embeddings ({', '.join(bad)}) hold NaN or inf")
        if bool((self.counts() == 0).any()):
            raise GalleryError("an identity has no samples")
        d = self.stamp.dim
        for k, v in self.data.items():
            want = (d, d) if k == "b" and self.stamp.full else (d,)
            if tuple(v.shape[1:]) != want:
                raise GalleryError(
                    f"its '{k}' samples have shape {tuple(v.shape[1:])} but its model stamp says "
                    f"{self.stamp.kind} embeddings of dimension {d}; the gallery belongs to another "
                    "model or was edited: enroll again"
                )

    # -- search (gallery_search.py) ----------------------------------------------------
    def score_matrix(self, probes: Any, scorer: Any = None) -> Tensor:
        """Scores [P, identities] of every probe against every pooled identity (float64)."""
        from metaemb.core.deploy.gallery_search import score_matrix

        return score_matrix(self, probes, scorer)

    def search(
        self,
        probes: Any,
        k: int = 5,
        scorer: Any = None,
        threshold: float | None = None,
        p_new: float | None = None,
        backend: str = "torch",
    ) -> SearchResult:
        """Top-k identities per probe (`gallery_search.search`: streamed over blocks, open-set
        posteriors for GME galleries, `backend="faiss"` for cosine galleries)."""
        from metaemb.core.deploy.gallery_search import search

        return search(self, probes, k, scorer, threshold, p_new, backend)


def open_gallery(path: str | Path, digest: str, where: str = "this checkpoint") -> Gallery | None:
    """The gallery at `path` checked against model `digest`, or None when there is none yet."""
    if not Path(path).exists():
        return None
    g = Gallery.load(path)
    g.check(digest, where)
    return g


def _changed_since(path: str, read: tuple[Any, str]) -> bool:
    """Whether the gallery at `path` holds other contents than when it was read or written
    (`read`: its file signature and content digest then): its (inode, size, time) first, then,
    when those differ (a `touch`, the same file copied back, a file system whose inode numbers
    change), what it holds; a file gone lost nothing."""
    now = _file_signature(path)
    if now is None or now == read[0]:
        return False
    try:
        return Gallery.load(path)._fingerprint() != read[1]
    except GalleryError:
        return True


def _file_signature(path: str | Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of a file, None when there is none: an atomic replace gives
    a new inode, an edit in place a new size or time."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _refuse_replacing_another_file(path: Path, known: bool, overwrite: bool = False) -> None:
    """What `metaemb enroll` refuses, refused from Python too: a run's checkpoint, a data
    sample, a file other than a gallery (an export), a folder; a new file named other than
    .pt or .pth (a torch file named g.npz misleads whoever opens it). `known`: a file this
    gallery was loaded from or saved to, which it may write again."""
    from metaemb.core.paths import ensure_writable

    ensure_writable(path, "gallery file")
    if not path.is_file() or path.stat().st_size == 0:  # an empty file holds nothing to lose
        if path.suffix.lower() not in (".pt", ".pth"):
            raise GalleryError(f"'{path}': a gallery is a torch file; name it with .pt (or .pth).")
        return
    if known:
        return  # the gallery it was loaded from or saved to
    try:
        other = Gallery.load(path)
    except GalleryError:
        raise GalleryError(
            f"'{path}' exists and is not a metaemb gallery (a model, an export or another "
            "file), which saving would replace: move it, or choose another file name."
        ) from None
    if not overwrite:
        raise GalleryError(
            f"'{path}' is another gallery ({len(other.identities)} identities, "
            f"{first_few(other.identities, 3)}), which saving this one would replace: choose "
            "another file name, or save(path, overwrite=True) to replace it."
        )
