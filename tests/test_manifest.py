"""The cached scan manifest: a tree is listed once, reused while unchanged, rescanned when not."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import pytest

from metaemb.core.data import manifest
from metaemb.core.plugin.interfaces import SampleFolder
from metaemb.plugins.vision.folder import ImageFolder


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("METAEMB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("METAEMB_MANIFEST_MIN_FILES", "0")
    monkeypatch.delenv("METAEMB_MANIFEST", raising=False)
    return tmp_path / "cache"


def age(root: Path, seconds: float = 60) -> None:
    """Date every folder back, as for a tree that was not just written."""
    past = time.time() - seconds
    for dirpath, _, _ in os.walk(root):
        os.utime(dirpath, (past, past))


def make_tree(root: Path) -> Path:
    for ident, names in {
        "a": ["1.jpg", "2.jpg"],
        "b": ["x/3.jpg", "4.png"],
        "c": ["5.jpg"],
    }.items():
        for name in names:
            p = root / ident / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"")
    (root / "a" / "notes.txt").write_bytes(b"")
    age(root)
    return root


def paths(folder: SampleFolder) -> list[tuple[str, str]]:
    return [(s.path, s.identity) for s in folder.samples]


@pytest.fixture
def walks(monkeypatch) -> list[Path]:
    """Counts full scans."""
    calls: list[Path] = []
    real = SampleFolder._walk

    def counting(self, root, exts):
        calls.append(root)
        return real(self, root, exts)

    monkeypatch.setattr(SampleFolder, "_walk", counting)
    return calls


EXPECTED = [
    ("a/1.jpg", "a"),
    ("a/2.jpg", "a"),
    ("b/4.png", "b"),
    ("b/x/3.jpg", "b"),
    ("c/5.jpg", "c"),
]


def test_second_scan_reads_the_manifest_and_gives_the_same_samples(tmp_path, cache, walks):
    root = make_tree(tmp_path / "data")
    first = ImageFolder(root)
    assert paths(first) == EXPECTED and len(walks) == 1
    assert len(list((cache / "manifests").glob("*.manifest"))) == 1
    second = ImageFolder(root)
    assert len(walks) == 1  # not scanned again
    assert paths(second) == EXPECTED
    assert second.identities == first.identities and second.labels == first.labels


@pytest.mark.parametrize(
    "change",
    [
        lambda r: (r / "a" / "9.jpg").write_bytes(b""),  # a file added
        lambda r: (r / "a" / "1.jpg").unlink(),  # removed
        lambda r: (r / "a" / "2.jpg").rename(r / "a" / "0.jpg"),  # renamed
        lambda r: (r / "b" / "x" / "7.jpg").write_bytes(b""),  # added in a nested folder
        lambda r: (r / "d").mkdir() or (r / "d" / "8.jpg").write_bytes(b""),  # a new identity
        lambda r: [p.unlink() for p in (r / "c").iterdir()] and (r / "c").rmdir(),  # one removed
    ],
)
def test_any_change_to_the_listing_rescans(tmp_path, cache, walks, change):
    root = make_tree(tmp_path / "data")
    ImageFolder(root)
    change(root)
    fresh = [(s.path, s.identity) for s in _uncached(root)]
    assert paths(ImageFolder(root)) == fresh != EXPECTED
    assert len(walks) == 3  # first scan, the rescan, and _uncached


def _uncached(root: Path) -> list:
    os.environ["METAEMB_MANIFEST"] = "0"
    try:
        return ImageFolder(root).samples
    finally:
        del os.environ["METAEMB_MANIFEST"]


def test_a_tree_changed_just_before_the_scan_is_not_cached(tmp_path, cache, walks):
    root = make_tree(tmp_path / "data")
    (root / "a" / "9.jpg").write_bytes(b"")  # the folder's mtime is now: racy
    ImageFolder(root)
    ImageFolder(root)
    assert len(walks) == 2 and not (cache / "manifests").exists()


def test_small_trees_and_disabled_cache_write_nothing(tmp_path, cache, monkeypatch, walks):
    root = make_tree(tmp_path / "data")
    monkeypatch.setenv("METAEMB_MANIFEST_MIN_FILES", "6")  # the tree has 5 samples
    ImageFolder(root)
    monkeypatch.setenv("METAEMB_MANIFEST_MIN_FILES", "0")
    monkeypatch.setenv("METAEMB_MANIFEST", "0")
    ImageFolder(root)
    assert not (cache / "manifests").exists() and len(walks) == 2


def test_other_extensions_or_folder_class_do_not_share_a_manifest(tmp_path, cache, walks):
    root = make_tree(tmp_path / "data")

    class JpegOnly(ImageFolder):
        extensions = (".jpg",)

    ImageFolder(root)
    assert [s.path for s in JpegOnly(root).samples] == [
        "a/1.jpg",
        "a/2.jpg",
        "b/x/3.jpg",
        "c/5.jpg",
    ]
    assert len(walks) == 2


def test_a_corrupt_or_truncated_manifest_is_ignored(tmp_path, cache, walks):
    root = make_tree(tmp_path / "data")
    ImageFolder(root)
    (file,) = (cache / "manifests").glob("*.manifest")
    lines = file.read_text().splitlines()
    file.write_text("\n".join(lines[:-2]) + "\n")  # two paths lost
    assert paths(ImageFolder(root)) == EXPECTED and len(walks) == 2
    file.write_text("not json\n")
    assert paths(ImageFolder(root)) == EXPECTED and len(walks) == 3


def test_scan_warnings_are_given_again_from_the_manifest(tmp_path, cache, walks):
    root = make_tree(tmp_path / "data")
    os.symlink(root / "a" / "1.jpg", root / "c" / "link.jpg")  # the same file twice
    age(root)
    for _ in range(2):
        with pytest.warns(UserWarning, match="links to images already found"):
            folder = ImageFolder(root)
        assert "c/link.jpg" not in [s.path for s in folder.samples]
    assert len(walks) == 1


def test_empty_identity_error_is_not_cached(tmp_path, cache):
    root = make_tree(tmp_path / "data")
    (root / "empty").mkdir()
    age(root)
    from metaemb.core.errors import DataError

    for _ in range(2):
        with pytest.raises(DataError, match="contain no image files"):
            ImageFolder(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert manifest.load(root, "x", {".jpg"}) is None


def test_hard_links_are_one_file_and_an_identity_of_links_only_says_why_it_is_empty(tmp_path):
    """A hard link (cp -l, rsync --link-dest trees) enrolled one photo under two names; an
    identity whose only file linked to another's was called "contain no image files" with
    no reason (H15 F10, F11)."""
    from metaemb.core.errors import DataError

    root = make_tree(tmp_path / "data")
    os.link(root / "a" / "1.jpg", root / "c" / "hard.jpg")  # c keeps its own 5.jpg
    with pytest.warns(UserWarning, match=r"c/hard.jpg = a/1.jpg"):
        folder = ImageFolder(root)
    assert "c/hard.jpg" not in [s.path for s in folder.samples]
    (root / "d").mkdir()
    os.link(root / "a" / "2.jpg", root / "d" / "2.jpg")  # d holds nothing of its own
    with pytest.raises(DataError, match=r"data/d'\. Their images are links to files of other "
                       r"identities \('d/2.jpg' = 'a/2.jpg'\)"), warnings.catch_warnings():  # fmt: skip
        warnings.simplefilter("ignore")
        ImageFolder(root)


@pytest.mark.parametrize("value", ["abc", "-5"])
def test_a_bad_manifest_threshold_is_named(monkeypatch, value):
    """'-5' was accepted (caching everything); 'abc' got a hint about --modality (H15 F13)."""
    from metaemb.core.errors import ConfigError

    monkeypatch.setenv("METAEMB_MANIFEST_MIN_FILES", value)
    with pytest.raises(ConfigError, match=rf"whole number of files \(0 or more\), got '{value}'"):
        manifest.min_files()
