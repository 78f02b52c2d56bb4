"""Face protocols: LFW `pairs.txt`, VGGFace2 split lists, AgeDB file naming, and an LFW-format mini
dataset for tests and demos.

A protocol reader is `reader(root, trials_path) -> list[Trial]` (what `metaemb evaluate --protocol`
calls); trial paths are relative to `root`. It returns a TrialList whose `folds` is the number of
contiguous folds (LFW: the pairs.txt header's), so evaluate reports k-fold accuracy. VGGFace2 and
AgeDB publish no text pair list, so theirs are generated: seeded, in 10 identity-disjoint folds of
equal size (like LFW), and the evaluation writes the list next to its scores.
"""

from __future__ import annotations

import csv
import os
import random
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from metaemb.core.errors import ConfigError, DataError, first_few
from metaemb.core.eval.trial_checks import safe_path, warn_duplicates
from metaemb.core.eval.trials import TrialList, read_lines, write_trials
from metaemb.core.plugin.interfaces import Sample, Trial
from metaemb.plugins.vision.folder import IMAGE_EXTENSIONS, ImageFolder
from metaemb.plugins.vision.lfw import lfw_path, read_lfw_pairs

# ---------------------------------------------------------------------------------------------
# LFW (the pairs.txt format itself is read and written by lfw.py)


def find_list(root: Path, name: str, given: Path | None) -> Path:
    """`given`, else `root/name`, else `root/../name` (lists usually sit beside the image folder)."""
    if given is not None:
        return Path(given)
    for cand in (root / name, root.parent / name):
        if cand.is_file():
            return cand
    raise DataError(
        f"cannot find '{name}' in '{root}' or its parent; pass its path with --trials FILE."
    )


def lfw(root: Path, trials: Path | None = None) -> TrialList:
    """LFW View 2: 6,000 pairs in 10 folds from `pairs.txt` (in the data folder or its parent);
    the folds are the file header's. Paths are checked against the data root."""
    root = Path(root)
    path = find_list(root, "pairs.txt", trials)
    pairs = read_lfw_pairs(path, root)
    pairs.path = str(path)  # named in the results: the list the protocol found
    warn_duplicates(pairs, str(path))  # as `--trials` does: duplicates count twice
    return pairs


# ---------------------------------------------------------------------------------------------
# Generated, identity-disjoint pairs (VGGFace2, AgeDB)


def make_fold_pairs(
    samples: Sequence[tuple[str, str]],
    folds: int = 10,
    per_fold: int = 300,
    seed: int = 0,
    positive: Callable[[str, str], bool] | None = None,
) -> TrialList:
    """Seeded pairs in `folds` identity-disjoint folds, each k matched then k mismatched pairs.

    k = min(per_fold, what the poorest fold allows), so folds are equal (k-fold accuracy needs it).
    `positive(path_a, path_b)` may restrict matched pairs (e.g. an age gap).
    """
    by_id: dict[str, list[str]] = {}
    for path, ident in samples:
        by_id.setdefault(ident, []).append(path)
    ids = sorted(by_id)
    if len(ids) < 2 * folds:
        raise DataError(f"{len(ids)} identities: too few for {folds} identity-disjoint folds.")
    rng = random.Random(seed)
    rng.shuffle(ids)
    groups = [sorted(ids[f::folds]) for f in range(folds)]
    cands = []
    for group in groups:
        pos = [
            (a, b)
            for i in group
            for x, a in enumerate(sorted(by_id[i]))
            for b in sorted(by_id[i])[x + 1 :]
            if positive is None or positive(a, b)
        ]
        neg = [
            (a, b)
            for x, i in enumerate(group)
            for j in group[x + 1 :]
            for a in by_id[i]
            for b in by_id[j]
        ]
        cands.append((pos, neg))
    k = min(per_fold, *(min(len(p), len(n)) for p, n in cands))
    if k == 0:
        raise DataError("the data allow no matched pairs in some fold; add images or identities.")
    if k < per_fold:
        import warnings

        warnings.warn(
            f"the data allow {k} matched and {k} mismatched pairs in their poorest fold, fewer "
            f"than the {per_fold} of each pairs_per_fold asks for: every fold holds {2 * k} "
            "pairs (folds must be equal). Such a list compares only with runs scored on the "
            "same list, not with published figures of the fixed benchmark lists.",
            stacklevel=2,
        )
    out = []
    for pos, neg in cands:
        out += [Trial((a,), b, 1) for a, b in rng.sample(pos, k)]
        out += [Trial((a,), b, 0) for a, b in rng.sample(neg, k)]
    return TrialList(out, folds=folds)


def _no_trials_file(name: str, trials: Path | None) -> None:
    if trials is not None:
        raise ConfigError(
            f"protocol '{name}' generates its pairs; to score a saved list use --trials FILE "
            "without --protocol."
        )


# ---------------------------------------------------------------------------------------------
# VGGFace2


def read_split_list(path: Path) -> list[str]:
    """VGGFace2 `train_list.txt` / `test_list.txt`: one `n000002/0001_01.jpg` per line (paths
    checked to stay inside the data root)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"VGGFace2 list '{path}' does not exist.")
    out = []
    for lineno, f in read_lines(path):
        where = f"{path}:{lineno}"
        rel = safe_path(f[0], None, where) if len(f) == 1 else ""
        if "/" not in rel:
            raise DataError(f"{where}: expected 'identity/image', got {' '.join(f)!r}.")
        out.append(rel)
    return out


def read_vggface2_list(path: str | Path) -> list[Sample]:
    """A VGGFace2 list as samples: identity = first path component, labels by sorted identity."""
    rel = read_split_list(Path(path))
    index = {name: i for i, name in enumerate(sorted({p.split("/", 1)[0] for p in rel}))}
    return [Sample(p, p.split("/", 1)[0], index[p.split("/", 1)[0]]) for p in rel]


class VGGFace2Folder(ImageFolder):
    """The images of one VGGFace2 split, as listed in `<split>_list.txt` (in the root or its parent).

    The root holds the identity folders (e.g. `vggface2/test`); a root that holds `<split>/` is
    also accepted. Loose landmarks: frontend.landmarks_file = "../bb_landmark/loose_landmark_*.csv".
    """

    def __init__(self, root: str | Path, split: str = "test") -> None:
        if split not in ("train", "test"):
            raise ConfigError(f"VGGFace2 split must be 'train' or 'test', got '{split}'.")
        root = Path(root)
        self.split = split
        listed = read_split_list(find_list(root, f"{split}_list.txt", None))
        if (root / split).is_dir():
            root = root / split
        missing = [p for p in listed if not (root / p).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) of '{split}_list.txt' are missing under '{root}', "
                f"e.g. {first_few(missing, 3)}."
            )
        super().__init__(root, [Sample(p, p.split("/", 1)[0], -1) for p in listed])


def _check_folds(name: str, folds: int, pairs_per_fold: int, pair_seed: int) -> None:
    if folds < 2 or pairs_per_fold < 1 or pair_seed < 0:
        raise ConfigError(
            f"protocol '{name}' needs folds ≥ 2, pairs_per_fold ≥ 1 and pair_seed ≥ 0 (got "
            f"{folds}, {pairs_per_fold}, {pair_seed})."
        )


def vggface2(
    root: Path,
    trials: Path | None = None,
    folds: int = 10,
    pairs_per_fold: int = 300,
    pair_seed: int = 0,
) -> TrialList:
    """Seeded identity-disjoint pairs (10 folds of up to 300 + 300) over the VGGFace2 test list;
    `pair_seed` draws another set of pairs."""
    _no_trials_file("vggface2", trials)
    _check_folds("vggface2", folds, pairs_per_fold, pair_seed)
    folder = VGGFace2Folder(root, "test")
    return make_fold_pairs([(s.path, s.identity) for s in folder.samples], folds, pairs_per_fold,
                           pair_seed)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# AgeDB

AGEDB_NAME = re.compile(r"^(\d+)_(.+)_(\d+)_([mfMF])$")


@dataclass(frozen=True)
class AgeDBName:
    index: int
    name: str
    age: int
    gender: str


def parse_agedb_name(filename: str) -> AgeDBName:
    """`<index>_<Name>_<age>_<gender>.jpg` → its fields (the identity is `name`); DataError on
    other names."""
    m = AGEDB_NAME.match(PurePosixPath(filename.replace("\\", "/")).stem)
    if not m or not (m.group(1).isascii() and m.group(3).isascii()):
        raise DataError(
            f"AgeDB file name '{filename}' does not follow '<index>_<Name>_<age>_<gender>.jpg'."
        )
    return AgeDBName(int(m.group(1)), m.group(2), int(m.group(3)), m.group(4).lower())


class AgeDBFolder(ImageFolder):
    """AgeDB images, flat as AgeDB ships them or sorted into `<identity>/<image>` folders (as
    for training); the identity is the name field of `<index>_<Name>_<age>_<gender>.jpg`."""

    def _scan(self) -> list[Sample]:
        root = self.root
        if not root.is_dir():
            raise DataError(f"AgeDB folder '{root}' does not exist.")
        files = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel = Path(folder).relative_to(root)
            files += [
                (rel / n).as_posix()
                for n in names
                if Path(n).suffix.lower() in IMAGE_EXTENSIONS and not n.startswith(".")
            ]
        if not files:
            raise DataError(f"AgeDB folder '{root}' holds no images.")
        return [Sample(f, parse_agedb_name(f).name, -1) for f in sorted(files)]


def agedb(
    root: Path,
    trials: Path | None = None,
    min_age_gap: int = 30,
    folds: int = 10,
    pairs_per_fold: int = 300,
    pair_seed: int = 0,
) -> TrialList:
    """AgeDB-30 style: identity-disjoint folds, matched pairs at least `min_age_gap` years apart
    (a lower bound, on matched pairs only: non-matched pairs are drawn with no age condition);
    `pair_seed` draws another set of pairs."""
    _no_trials_file("agedb", trials)
    _check_folds("agedb", folds, pairs_per_fold, pair_seed)
    if min_age_gap < 0:
        raise ConfigError(f"protocol 'agedb': min_age_gap = {min_age_gap}; give years, ≥ 0.")
    folder = AgeDBFolder(root)

    def gap(a: str, b: str) -> bool:
        return abs(parse_agedb_name(a).age - parse_agedb_name(b).age) >= min_age_gap

    samples = [(s.path, s.identity) for s in folder.samples]
    return make_fold_pairs(samples, folds, pairs_per_fold, pair_seed, positive=gap)


# ---------------------------------------------------------------------------------------------
# An LFW-format mini dataset


def make_lfw_mini(
    out: Path,
    identities: int = 20,
    images_per_identity: int = 4,
    pairs_per_fold: int = 6,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write synthetic faces as an LFW-format dataset: `out/<name>/<name>_%04d.jpg`,
    `out/pairs.txt` (10 identity-disjoint folds) and `out/landmarks.csv` (for frontend "align")."""
    from metaemb.plugins.vision.synthetic import LANDMARKS_FILE, generate_faces

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"'{out}' is not empty; choose a new folder for the LFW mini dataset.")
    with tempfile.TemporaryDirectory() as tmp:
        src = generate_faces(Path(tmp) / "faces", identities, images_per_identity, image_size, seed)
        with open(src / LANDMARKS_FILE, newline="") as fh:
            rows = list(csv.reader(fh))
        header, rows = rows[0], rows[1:]
        renamed = []
        samples = []
        for row in rows:
            ident, fname = row[0].split("/")
            name = f"Person_{int(ident[2:]):04d}"
            rel = lfw_path(name, int(Path(fname).stem) + 1)
            (out / name).mkdir(parents=True, exist_ok=True)
            with Image.open(src / row[0]) as im:
                im.convert("RGB").save(out / rel, quality=95)
            renamed.append([rel, *row[1:]])
            samples.append((rel, name))
    with open(out / "landmarks.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *renamed])
    trials = make_fold_pairs(samples, folds=10, per_fold=pairs_per_fold, seed=seed)
    write_trials(out / "pairs.txt", trials, format="lfw", folds=10)
    return out
